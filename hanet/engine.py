"""The event pump: one asyncio loop around the pure machine.

Sources (prober, link watcher, timers, control socket) produce events. ``handle()`` appends the
event record, steps the machine, makes the transition durable, then has the shell
(``hanet.shell``) carry out its actions; each kernel action's outcome comes back as an event,
handled next. A log that cannot be written never stops an action (``eventlog.on_failure``
"continue", the default): the daemon acts and reports its log degraded. This is the only place
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
from . import operator as op
from . import seqfloor
from .eventlog import reader as log_reader
from .eventlog.background import BackgroundWriter
from .eventlog.writer import Writer
from .fold import fold_records
from .shell import Shell

log = logging.getLogger("hanet")

RECENT_TRANSITIONS = 20
#: Fault injection for crash-consistency tests: HANET_CRASH_AFTER=<action type> makes the daemon
#: exit at once, without cleanup, right after carrying out the first action of that type in a move.
CRASH_ENV = "HANET_CRASH_AFTER"
#: HANET_FAIL_STEP=<action type> makes the first action of that type in a move fail (EIO) without
#: reaching the kernel, as a kernel step that fails would.
FAIL_ENV = "HANET_FAIL_STEP"
CRASH_EXIT = 137
STATS_PERIOD_S = 1.0


def fields_text(item: m.Event | m.Action) -> str:
    """``type k=v k=v`` for logs, without the time field."""
    data = m.to_dict(item)
    data.pop("t_ns", None)
    kind = data.pop("type")
    return kind + "".join(f" {k}={v}" for k, v in data.items())


def restore_machine(cfg: config_mod.Config) -> tuple[M.Machine, int, list[str], int | None]:
    """Fold this node's current log file (it starts with config + snapshot after a rotation) and
    adapt the result to ``cfg``, exactly as the config record written next will when replayed.

    Returns the machine, the number of events folded, what changed in the path list, and the
    wall time of the last record. Damage is logged, never fatal: every intact record still counts.
    """
    params = M.Params.from_config(cfg)
    if not os.path.exists(cfg.eventlog.path):
        return M.Machine(params), 0, [], None

    def on_damage(damage) -> None:
        log.warning("eventlog damage %s", damage)

    def on_error(rec, exc) -> None:
        log.warning("eventlog record n=%s not replayable: %s", rec.get("n"), exc)

    records = (entry.record for entry in log_reader.read_file(cfg.eventlog.path, on_damage))
    folded = fold_records(records, on_error=on_error)
    if folded.machine is None:
        return M.Machine(params), folded.events, [], folded.last_wall
    changes = folded.configure(params)
    return folded.machine, folded.events, changes, folded.last_wall


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
        self.fail_step = os.environ.get(FAIL_ENV, "")
        self.netlink = NetlinkThread()
        if prober is None:
            # Dry runs write nothing, this file included; their frames start at the wall clock.
            seq_start = 0 if dry_run else seqfloor.reserve(seqfloor.path_for(cfg.eventlog.path), time.time_ns())
            prober = Prober(cfg, seq_start=seq_start)
        self.prober = prober
        self.netops = self.netlink.call(NetOps, cfg)
        self.linkwatch = self.netlink.call(LinkWatch, cfg) if cfg.link.netlink else None
        self.notifier = notifier or Notifier()
        if dry_run:
            self.machine, self.restored_from, self.config_changes, self.last_wall = (
                M.Machine(M.Params.from_config(cfg)), 0, [], None)
        else:
            self.machine, self.restored_from, self.config_changes, self.last_wall = restore_machine(cfg)
        self.writer: BackgroundWriter | None = None
        self.log_error: str = ""          # why the event log cannot be written ("" = healthy)
        self.queue: collections.deque[m.Event] = collections.deque()
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_TRANSITIONS)
        self.started_mono = time.monotonic_ns()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timers: Timers | None = None
        self.shell: Shell | None = None
        self.operator = op.Operator(cfg, self.submit, lambda: self.machine)
        self.control = None
        self.metrics = None
        self.pinger = None
        self.exit_code = 0
        self._stop: asyncio.Event | None = None
        self._flags: set[str] = set()
        self._readers: list[int] = []
        self._handling = False
        self._changes_recorded = False

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.timers = Timers(self.loop, lambda name: self.submit(m.TimerFired(t_ns=time.monotonic_ns(), name=name)))
        self.shell = Shell(self._execute, self.prober, self.timers)
        for sig, flag in ((signal.SIGTERM, "stop"), (signal.SIGINT, "stop"), (signal.SIGHUP, "reload")):
            self.loop.add_signal_handler(sig, self._flag, flag)
        try:
            self._open_log()
            for change in self.config_changes:
                log.warning("configuration changed since the last run: %s", change)
            reconciled = self.netlink.call(self.netops.reconcile)
            log.info("reconciled holder=%s carrier=%s present=%s found=%s restored_records=%d state=%s",
                     reconciled.holder, list(reconciled.carrier), list(reconciled.present), reconciled.found,
                     self.restored_from, self.machine.state)
            for mac, paths in reconciled.shared_macs.items():
                log.warning("shared MAC found at start mac=%s paths=%s: the layout is repaired", mac, paths)
            for i, present in enumerate(reconciled.present):
                if not present:
                    log.warning("interface missing at start path=%s interface=%s: marked gone",
                                self.cfg.paths[i].name, self.cfg.paths[i].interface)
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
                                        carrier=tuple(reconciled.carrier), macs=tuple(reconciled.macs),
                                        hw_macs=tuple(reconciled.hw_macs), present=tuple(reconciled.present),
                                        down_ns=self._down_ns()))
            await self._start_services()
            # Start-up built pyroute2 and config objects that live as long as the daemon: move them
            # out of the collector's reach, so a collection during a failover scans only new ones.
            gc.freeze()
            self.notifier.ready(self.status_line())
            log.info("ready state=%s active=%s", self.machine.state, self.machine.active)
            stats_task = asyncio.ensure_future(self._periodic_stats())
            await self._stop.wait()
            stats_task.cancel()
            return self.exit_code
        finally:
            await self._shutdown()

    def _down_ns(self) -> int:
        """How long the daemon was not running, by the wall clock (0 if unknown or stepped back)."""
        if self.last_wall is None:
            return 0
        return max(0, time.time_ns() - self.last_wall)

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
        # The writer never raises on I/O: a log it cannot open starts degraded (_log_health); and
        # it runs on a thread of its own, so a disk that does not answer holds up no failover.
        el = self.cfg.eventlog
        self.writer = BackgroundWriter(
            lambda on_health: Writer.from_config(el, self.cfg.node_id, params=self._params_record,
                                                 snapshot=self.machine.snapshot, on_health=on_health),
            on_health=self._log_health, call_soon=self.loop.call_soon_threadsafe,
            wait_ns=int(el.wait_ms * 1e6), durable=el.durability != "none")

    def _params_record(self) -> dict[str, Any]:
        """The body of a config record; the first of a run says what changed in the path list."""
        body = self.machine.params.to_dict()
        if self.config_changes and not self._changes_recorded:
            body["changes"] = list(self.config_changes)
            self._changes_recorded = True
        return body

    async def _start_services(self) -> None:
        from .control import ControlServer
        from .notify import WatchdogPinger

        if not self.dry_run:
            self.control = ControlServer(self.cfg.control.socket, self.cfg.control.mode, self.control_command,
                                         self.cfg.control)
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
        except Exception as exc:  # noqa: BLE001 - a reload must never take the daemon down
            log.error("reload rejected: %s: %s", self.cfg.file, exc)
            return
        needs_restart = [name for name in ("node_id", "peer_id", "paths", "identity", "heartbeat",
                                           "eventlog", "control", "metrics")
                         if getattr(new, name) != getattr(self.cfg, name)]
        if new.link.poll_interval_ms != self.cfg.link.poll_interval_ms or new.link.netlink != self.cfg.link.netlink:
            needs_restart.append("link")
        params = M.Params.from_config(new)
        if "paths" not in needs_restart and params != self.machine.params:
            self.machine.reconfigure(params)
            if self.writer is not None:
                self.writer.config(params.to_dict(), durable=True)
        self.cfg = new if not needs_restart else self.cfg
        log.info("reloaded machine parameters%s",
                 f"; restart needed for: {', '.join(needs_restart)}" if needs_restart else "")

    # ------------------------------------------------------------------ the event log
    def _log_health(self, degraded: bool, detail) -> None:
        """The writer's one call when the log starts or stops refusing writes."""
        if degraded:
            self.log_error = detail.reason
            log.error("eventlog degraded path=%s error=%s: acting without a durable record",
                      self.cfg.eventlog.path, detail.reason)
            self._stop_if_log_required()
        else:
            self.log_error = ""
            log.warning("eventlog writable again path=%s lost=%s unsure=%s", self.cfg.eventlog.path,
                        detail.lost, detail.unsure)
        if self.loop is not None:
            self.notifier.status(self.status_line())
        if self.metrics is not None:
            self.metrics.set_eventlog_degraded(degraded)

    def _stop_if_log_required(self) -> None:
        if self.cfg.eventlog.on_failure == "stop":
            log.error("eventlog.on_failure=stop: stopping rather than acting without a record")
            self.exit_code = 1
            if self._stop is not None:
                self._stop.set()

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
        # The writer never raises: a log it cannot write is reported (degraded), never obeyed.
        cause = self.writer.event(ev) if self.writer is not None else 0
        lag_us = (time.monotonic_ns() - ev.t_ns) / 1000
        step = self.machine.step(ev)
        if step.changed and self.writer is not None:
            self.writer.transition(step, cause)  # durable before any of its actions runs
        if self.exit_code:
            return step  # eventlog.on_failure = "stop": the site chose no unlogged action
        if step.changed or not isinstance(ev, (m.ActionDone,)):
            log.info("event %s lag_us=%.0f", fields_text(ev), lag_us)
        if self.linkwatch is not None:
            self.linkwatch.set_holder(step.active)  # whose addresses vanishing is news
        if step.src != step.dst:
            self._on_transition(step, ev)
        if self.shell is not None:
            self.queue.extend(self.shell.carry_out(step.actions))
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
                if act.type == self.fail_step and self.machine.state in M.MOVING:
                    self.fail_step = ""  # fault injection: this step fails once
                    outcomes.append(m.ActionFailed(time.monotonic_ns(), action_id=act.id, kind=act.type,
                                                   error="EIO (injected)"))
                    break
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
                self.writer.flush()  # while degraded, this is also the retry

    # ------------------------------------------------------------------ operators
    def status_line(self) -> str:
        active = self.machine.active
        name = self.cfg.paths[active].name if active is not None else "none"
        degraded = f" eventlog=degraded({self.log_error})" if self.log_error else ""
        return f"{self.machine.state} active={name}{degraded}"

    def path_status(self) -> list[dict[str, Any]]:
        return op.path_status(self.cfg, self.machine, self.prober.stats(), time.monotonic_ns())

    def status(self) -> dict[str, Any]:
        active = self.machine.active
        return {
            "node": self.cfg.node_id, "peer": self.cfg.peer_id, "state": self.machine.state,
            "active": active, "active_name": self.cfg.paths[active].name if active is not None else None,
            "paths": self.path_status(), "transitions": list(self.recent),
            "uptime_s": round((time.monotonic_ns() - self.started_mono) / 1e9, 1),
            "eventlog": self.cfg.eventlog.path, "records": self.writer.n if self.writer else 0,
            "eventlog_degraded": self.log_error or None,
            "config_changes": list(self.config_changes),
        }

    def control_command(self, cmd: str, args: dict[str, Any], who: str) -> dict[str, Any]:
        """Operator commands become events in the log, with who asked. Refusals raise CommandError."""
        if cmd == "status":
            return self.status()
        try:
            return self.operator.command(cmd, args, who)
        except op.Refused as exc:
            raise CommandError(str(exc)) from None
