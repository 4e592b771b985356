"""The imperative shell: one asyncio loop around the pure machine.

Sources (prober, link watcher, timers, control socket) produce events. ``handle()`` appends the
event record, steps the machine, makes the transition durable, then carries out its actions in
order; each kernel action's outcome comes back as an event, handled next. This is the only place
that reads the clock.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import logging
import os
import signal
import time
from typing import Any, Callable

from . import config as config_mod
from . import machine as M
from .control import CommandError
from . import model as m
from . import seqfloor
from .eventlog import reader as log_reader
from .eventlog.writer import Writer

log = logging.getLogger("hanet")

RECENT_TRANSITIONS = 20
#: Fault injection for crash-consistency tests: HANET_CRASH_AFTER=<action type> makes the daemon
#: exit at once, without cleanup, right after carrying out the first action of that type in a move.
CRASH_ENV = "HANET_CRASH_AFTER"
CRASH_EXIT = 137
STATS_PERIOD_S = 1.0


def fields_text(item: m.Event | m.Action) -> str:
    """``type k=v k=v`` for logs, without the time field."""
    data = m.to_dict(item)
    data.pop("t_ns", None)
    kind = data.pop("type")
    return kind + "".join(f" {k}={v}" for k, v in data.items())


def restore_machine(cfg: config_mod.Config) -> tuple[M.Machine, int]:
    """Fold this node's current log file (it starts with config + snapshot after a rotation).

    Returns the machine and the number of records folded. Damage is logged, never fatal: every
    intact record still counts.
    """
    params = M.Params.from_config(cfg)
    mach: M.Machine | None = None
    folded = 0
    if not os.path.exists(cfg.eventlog.path):
        return M.Machine(params), 0

    def on_damage(damage) -> None:
        log.warning("eventlog damage %s", damage)

    for entry in log_reader.read_file(cfg.eventlog.path, on_damage):
        rec = entry.record
        kind = rec.get("k")
        if kind == "config":
            if mach is None:
                mach = M.Machine.from_params(rec["cfg"])
        elif kind == "snapshot" and mach is not None and folded == 0:
            mach.restore(rec["s"])
        elif kind == "event" and mach is not None:
            try:
                mach.step(m.event_from_dict(rec["e"]))
            except (ValueError, TypeError) as exc:
                log.warning("eventlog record n=%s not replayable: %s", rec.get("n"), exc)
            folded += 1
    if mach is None:
        return M.Machine(params), 0
    mach.reconfigure(params)
    return mach, folded


class Timers:
    """Named one-shot timers on the loop; firing feeds a TimerFired event."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[str], None]):
        self.loop, self.fire = loop, fire
        self.handles: dict[str, asyncio.TimerHandle] = {}

    def start(self, name: str, deadline_ns: int) -> None:
        self.cancel(name)
        delay = max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
        self.handles[name] = self.loop.call_later(delay, self._fired, name)

    def cancel(self, name: str) -> None:
        handle = self.handles.pop(name, None)
        if handle is not None:
            handle.cancel()

    def _fired(self, name: str) -> None:
        self.handles.pop(name, None)
        self.fire(name)

    def cancel_all(self) -> None:
        for name in list(self.handles):
            self.cancel(name)


class NetlinkThread:
    """Runs pyroute2 calls on one thread of their own.

    pyroute2's synchronous API drives a private asyncio loop, which cannot run inside the daemon's
    running loop; so NetOps and LinkWatch are built and called on this thread, and the loop waits
    for each call (a hop costs ~0.1 ms; a failover's kernel steps go in one hop).
    """

    def __init__(self):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    def call(self, fn: Callable, *args):
        return self._pool.submit(fn, *args).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Engine:
    def __init__(self, cfg: config_mod.Config, *, dry_run: bool = False, prober=None, notifier=None):
        from .netops import NetOps
        from .notify import Notifier
        from .probe import Prober
        from .linkwatch import LinkWatch

        self.cfg = cfg
        self.dry_run = dry_run
        self.crash_after = os.environ.get(CRASH_ENV, "")
        self.netlink = NetlinkThread()
        if prober is None:
            # Dry runs write nothing, this file included; their frames start at the wall clock.
            seq_start = 0 if dry_run else seqfloor.reserve(seqfloor.path_for(cfg.eventlog.path), time.time_ns())
            prober = Prober(cfg, seq_start=seq_start)
        self.prober = prober
        self.netops = self.netlink.call(NetOps, cfg)
        self.linkwatch = self.netlink.call(LinkWatch, cfg) if cfg.link.netlink else None
        self.notifier = notifier or Notifier()
        self.machine, folded = restore_machine(cfg) if not dry_run else (M.Machine(M.Params.from_config(cfg)), 0)
        self.restored_from = folded
        self.writer: Writer | None = None
        self.queue: collections.deque[m.Event] = collections.deque()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_TRANSITIONS)
        self.started_mono = time.monotonic_ns()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timers: Timers | None = None
        self.control = None
        self.metrics = None
        self.pinger = None
        self._stop: asyncio.Event | None = None
        self._flags: set[str] = set()
        self._readers: list[int] = []
        self._handling = False

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.timers = Timers(self.loop, lambda name: self.submit(m.TimerFired(t_ns=time.monotonic_ns(), name=name)))
        for sig, flag in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGHUP, "reload")):
            self.loop.add_signal_handler(sig, self._flag, flag)
        try:
            self._open_log()
            reconciled = self.netlink.call(self.netops.reconcile)
            log.info("reconciled holder=%s carrier=%s found=%s restored_records=%d state=%s",
                     reconciled.holder, list(reconciled.carrier), reconciled.found,
                     self.restored_from, self.machine.state)
            self.prober.start()
            self.loop.add_reader(self.prober.fileno(), self._drain_prober)
            self._readers.append(self.prober.fileno())
            if self.linkwatch is not None:
                self.netlink.call(self.linkwatch.start)
                # pyroute2 keeps its socket per thread: ask for the fd on the thread that reads it.
                fd = self.netlink.call(self.linkwatch.fileno)
                self.loop.add_reader(fd, self._drain_linkwatch)
                self._readers.append(fd)
            self.submit(m.DaemonStarted(t_ns=time.monotonic_ns(), holder=reconciled.holder,
                                        carrier=tuple(reconciled.carrier), macs=tuple(reconciled.macs)))
            await self._start_services()
            # Start-up built pyroute2 and config objects that live as long as the daemon: move them
            # out of the collector's reach, so a collection during a failover scans only new ones.
            gc.freeze()
            self.notifier.ready(self.status_line())
            log.info("ready state=%s active=%s", self.machine.state, self.machine.active)
            stats_task = asyncio.ensure_future(self._periodic_stats())
            await self._stop.wait()
            stats_task.cancel()
            return 0
        finally:
            await self._shutdown()

    def _flag(self, flag: str) -> None:
        # Signal handlers only set flags; the loop does the work.
        self._flags.add(flag)
        self.loop.call_soon(self._service_flags)

    def _service_flags(self) -> None:
        if "reload" in self._flags:
            self._flags.discard("reload")
            self.reload()
        if "stop" in self._flags:
            self._stop.set()

    def _open_log(self) -> None:
        if self.dry_run:
            return
        self.writer = Writer.from_config(self.cfg.eventlog, self.cfg.node_id,
                                         params=lambda: self.machine.params.to_dict(),
                                         snapshot=self.machine.snapshot)

    async def _start_services(self) -> None:
        from .control import ControlServer
        from .notify import WatchdogPinger

        if not self.dry_run:
            self.control = ControlServer(self.cfg.control.socket, self.cfg.control.mode, self.control_command)
            await self.control.start()
        if self.cfg.metrics.listen:
            from .metrics import Metrics
            self.metrics = Metrics(self.cfg.node_id, [p.name for p in self.cfg.paths])
            self.metrics.start_http(self.cfg.metrics.listen)
        interval = self.notifier.watchdog_interval()
        if interval:
            self.pinger = WatchdogPinger(self.notifier, interval)
            self.pinger.start()

    async def _shutdown(self) -> None:
        """Stop sources and services; the kernel's addresses stay where they are."""
        self.notifier.stopping()
        if self.pinger is not None:
            await self.pinger.stop()
        if self.control is not None:
            await self.control.close()
        if self.loop is not None:
            for reader in self._readers:
                self.loop.remove_reader(reader)
        self.prober.stop()
        if self.linkwatch is not None:
            self.netlink.call(self.linkwatch.close)
        if self.timers is not None:
            self.timers.cancel_all()
        self.netlink.call(self.netops.close)
        self.netlink.close()
        if self.writer is not None:
            self.writer.close()
        log.info("stopped state=%s active=%s", self.machine.state, self.machine.active)

    def reload(self) -> None:
        """SIGHUP: apply what can change at run time; name what needs a restart."""
        try:
            new = config_mod.load(self.cfg.file)
        except config_mod.ConfigError as exc:
            log.error("reload rejected: %s", exc)
            return
        needs_restart = [name for name in ("node_id", "peer_id", "paths", "identity", "heartbeat",
                                           "eventlog", "control", "metrics")
                         if getattr(new, name) != getattr(self.cfg, name)]
        if new.link.poll_interval_ms != self.cfg.link.poll_interval_ms or new.link.netlink != self.cfg.link.netlink:
            needs_restart.append("link")
        params = M.Params.from_config(new)
        if params != self.machine.params:
            self.machine.reconfigure(params)
            if self.writer is not None:
                self.writer.config(params.to_dict(), durable=True)
        self.cfg = new if not needs_restart else self.cfg
        log.info("reloaded machine parameters%s",
                 f"; restart needed for: {', '.join(needs_restart)}" if needs_restart else "")

    # ------------------------------------------------------------------ events
    def _drain_prober(self) -> None:
        for ev in self.prober.drain():
            self.submit(ev)

    def _drain_linkwatch(self) -> None:
        # A link notification means some link changed: read the carrier bits at once (a few us)
        # rather than parse the notification first (about 1 ms in pyroute2) or wait for the next
        # poll, so a carrier loss starts the failover from the fastest source.
        self.prober.poll_carrier_now()
        self._drain_prober()
        for ev in self.netlink.call(self.linkwatch.drain):
            self.submit(ev)

    def submit(self, ev: m.Event) -> M.Step | None:
        """Queue an event; handle it and every outcome it leads to, in order.

        Returns the event's own step, or None if a handler further up the stack will get to it.
        """
        self.queue.append(ev)
        if self._handling:
            return None
        self._handling = True
        first = None
        try:
            while self.queue:
                step = self.handle(self.queue.popleft())
                first = first or step
        finally:
            self._handling = False
        return first

    def handle(self, ev: m.Event) -> M.Step:
        cause = self.writer.event(ev) if self.writer else 0
        lag_us = (time.monotonic_ns() - ev.t_ns) / 1000
        step = self.machine.step(ev)
        if step.changed and self.writer is not None:
            self.writer.transition(step, cause)  # durable before any action runs
        if step.changed or not isinstance(ev, (m.ActionDone,)):
            log.info("event %s lag_us=%.0f", fields_text(ev), lag_us)
        if self.linkwatch is not None:
            self.linkwatch.set_holder(step.active)  # whose addresses vanishing is news
        if step.src != step.dst:
            self._on_transition(step, ev)
        self._carry_out(step.actions)
        return step

    def _on_transition(self, step: M.Step, ev: m.Event) -> None:
        log.warning("transition %s -> %s trigger=%s active=%s reason=%r",
                    step.src, step.dst, step.trigger, step.active, step.reason)
        self.recent.append({"wall": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()), "src": step.src,
                            "dst": step.dst, "trigger": step.trigger, "reason": step.reason,
                            "active": step.active})
        self.notifier.status(self.status_line())
        if self.metrics is not None:
            detection = None
            if isinstance(ev, m.HeartbeatLost) and ev.first_miss_ns:
                detection = (ev.t_ns - ev.first_miss_ns) / 1e9
            self.metrics.observe_transition(step.src, step.dst, detection)

    def _carry_out(self, actions: tuple[m.Action, ...]) -> None:
        batch: list[m.Action] = []
        for act in (*actions, None):
            if isinstance(act, m.KERNEL_ACTIONS):
                batch.append(act)
                continue
            if batch:
                outcomes = self._execute(batch)
                self.queue.extend(outcomes)
                batch = []
                if isinstance(outcomes[-1], m.ActionFailed):
                    return  # later steps depend on this one; the machine decides what next
            if act is None:
                break
            if isinstance(act, m.PauseMonitoring):
                self.prober.pause(act.path)
            elif isinstance(act, m.ResumeMonitoring):
                self.prober.resume(act.path)
            elif isinstance(act, m.RebindProbe):
                self._rebind(act.path)
            elif isinstance(act, m.StartTimer):
                self.timers.start(act.name, act.deadline_ns)
            elif isinstance(act, m.CancelTimer):
                self.timers.cancel(act.name)
            elif isinstance(act, m.SendNotice):
                self.prober.send_notice(act.path, act.active)

    def _rebind(self, path: int) -> None:
        try:
            self.prober.rebind(path)
        except OSError as exc:  # gone again already: the next link.returned retries
            log.error("probe rebind failed path=%d error=%r", path, exc.strerror)

    def _execute(self, batch: list[m.Action]) -> list[m.Event]:
        """Kernel steps in order, in one hop to the netlink thread, up to the first failure."""
        if self.dry_run:
            out = []
            for act in batch:
                print(f"would {self.netops.describe(act)}", flush=True)
                out.append(m.ActionDone(t_ns=time.monotonic_ns(), action_id=act.id, kind=act.type, detail="dry-run"))
            return out

        def run() -> list[m.Event]:
            outcomes = []
            for act in batch:
                outcomes.append(self.netops.execute(act))
                if act.type == self.crash_after and self.machine.state in M.MOVING:
                    os._exit(CRASH_EXIT)  # fault injection: die like kill -9, right after this step
                if isinstance(outcomes[-1], m.ActionFailed):
                    break
            return outcomes

        outcomes = self.netlink.call(run)
        for act, outcome in zip(batch, outcomes):
            if isinstance(outcome, m.ActionFailed):
                log.error("action failed %s error=%r", fields_text(act), outcome.error)
        return outcomes

    async def _periodic_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_PERIOD_S)
            if self.metrics is not None:
                self.metrics.update_paths(self.path_status())
            if self.writer is not None:
                self.writer.flush()

    # ------------------------------------------------------------------ operators
    def status_line(self) -> str:
        active = self.machine.active
        name = self.cfg.paths[active].name if active is not None else "none"
        return f"{self.machine.state} active={name}"

    def path_status(self) -> list[dict[str, Any]]:
        stats = self.prober.stats()
        out = []
        for i, pc in enumerate(self.cfg.paths):
            f = self.machine.facts[i]
            entry = {"index": i, "name": pc.name, "interface": pc.interface, "health": f.health,
                     "carrier": f.carrier, "link_ok": f.link_ok, "present": f.present,
                     "offline": f.offline, "damped": f.damped, "lossy": f.lossy,
                     "penalty": round(self.machine._decayed(i), 1), "usable": self.machine.usable(i)}
            if i < len(stats):
                s = stats[i]
                entry.update({k: v for k, v in s.items() if k not in entry or k == "carrier"})
                for key in ("rtt_p50_ns", "rtt_p99_ns", "rtt_max_ns"):
                    if key in s and s[key] is not None:
                        entry[key.replace("_ns", "_us")] = round(s[key] / 1000, 1)
            out.append(entry)
        return out

    def status(self) -> dict[str, Any]:
        active = self.machine.active
        return {
            "node": self.cfg.node_id, "peer": self.cfg.peer_id, "state": self.machine.state,
            "active": active, "active_name": self.cfg.paths[active].name if active is not None else None,
            "paths": self.path_status(), "transitions": list(self.recent),
            "uptime_s": round((time.monotonic_ns() - self.started_mono) / 1e9, 1),
            "eventlog": self.cfg.eventlog.path, "records": self.writer.n if self.writer else 0,
        }

    def _path_index(self, iface: str) -> int:
        for i, pc in enumerate(self.cfg.paths):
            if iface in (pc.interface, pc.name):
                return i
        raise ValueError(f"no path with interface or name {iface!r}")

    def control_command(self, cmd: str, args: dict[str, Any], who: str) -> dict[str, Any]:
        """Operator commands become events in the log, with who asked. Refusals raise CommandError."""
        try:
            return self._operator(cmd, args, who)
        except (KeyError, ValueError) as exc:
            raise CommandError(str(exc).strip("'\"")) from None

    def _operator(self, cmd: str, args: dict[str, Any], who: str) -> dict[str, Any]:
        now = time.monotonic_ns()
        force = bool(args.get("force", False))
        if cmd == "status":
            return self.status()
        if cmd == "failover":
            target = args.get("to")
            ev = m.OperatorFailover(t_ns=now, path=self._path_index(target) if target else None, who=who, force=force)
        elif cmd == "failback":
            ev = m.OperatorFailback(t_ns=now, who=who, force=force)
        elif cmd == "offline":
            ev = m.OperatorOffline(t_ns=now, path=self._path_index(args["interface"]), who=who, force=force)
        elif cmd == "online":
            ev = m.OperatorOnline(t_ns=now, path=self._path_index(args["interface"]), who=who)
        else:
            raise ValueError(f"unknown command {cmd!r}")
        step = self.submit(ev)
        reason = step.reason if step else "queued"
        if "refused" in reason:
            raise CommandError(reason)
        return {"state": self.machine.state, "active": self.machine.active, "reason": reason}
