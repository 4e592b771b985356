"""Heartbeat prober and responder for every path, around the nogil loop in hanet._fastprobe.

The loop runs in its own thread without the GIL; Python sees only threshold events (as
hanet.model events) through ``fileno()``/``drain()``, and counters on demand through ``stats()``.
There is no pure-Python fallback: if hanet._fastprobe cannot be imported, neither can this module.
"""
from __future__ import annotations

import logging
import os
import threading

from hanet import _fastprobe, model
from hanet.config import Config

log = logging.getLogger("hanet")


def percentile(samples: list[int], q: float) -> int:
    """Nearest-rank percentile (0 for no samples)."""
    if not samples:
        return 0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


class Prober:
    """Probes and answers on every path of ``cfg`` (path id = index in ``cfg.paths``).

    ``rt_priority`` > 0 (default: ``heartbeat.rt_priority``) runs the loop thread SCHED_FIFO at
    that priority, so a busy host does not delay heartbeats (and cause false losses); it needs
    CAP_SYS_NICE, and without it the loop runs at normal priority and ``realtime_error()`` tells
    why (logged once at start). ``seq_start`` > 0 is the first sequence number
    (hanet.seqfloor); 0 starts at the wall clock in ns.

    The carrier is read from the kernel's lock-free counters (sysfs carrier_up_count and
    carrier_down_count, pread on open files) where this namespace's sysfs shows them, checked
    once against ETHTOOL_GLINK; ``carrier="ioctl"`` forces the ETHTOOL_GLINK read, which takes the
    kernel's RTNL lock (the loop makes it outside its own lock), for comparison.
    """

    def __init__(self, cfg: Config, rt_priority: int | None = None, seq_start: int = 0,
                 carrier: str = "auto"):
        hb = cfg.heartbeat
        self._rt_priority = hb.rt_priority if rt_priority is None else rt_priority
        self._engine = _fastprobe.Engine(
            node_id=cfg.node_id, peer_id=cfg.peer_id, key=hb.key,
            paths=[(p.interface, p.peer_mac) for p in cfg.paths],
            interval_ms=hb.interval_ms, reply_timeout_ms=hb.reply_timeout_ms,
            multiplier=hb.multiplier, recover_count=hb.recover_count,
            ethertype=hb.ethertype, replay_window=hb.replay_window,
            poll_interval_ms=cfg.link.poll_interval_ms,
            quality_window_ms=cfg.quality.window_ms if cfg.quality.enabled else 0.0,
            rt_priority=self._rt_priority, seq_start=seq_start,
            rcvbuf_bytes=int(hb.rcvbuf_kb) * 1024, carrier=carrier, confirm_ms=hb.confirm_ms,
        )
        self._names = [p.name for p in cfg.paths]
        self._interfaces = [p.interface for p in cfg.paths]
        self._peer = cfg.peer_id
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Open the sockets (OSError names the path on failure) and start the loop thread."""
        if self._thread is not None:
            return
        self._engine.open()
        self._thread = threading.Thread(target=self._engine.run, name="hanet-probe", daemon=True)
        self._thread.start()
        if self._rt_priority:
            threading.Timer(0.1, self._report_realtime).start()

    def _report_realtime(self) -> None:
        err = self._engine.realtime_error()
        if err:
            log.warning("probe thread runs at normal priority: SCHED_FIFO %d refused errno=%d (%s)",
                        self._rt_priority, err, os.strerror(err))

    def stop(self) -> None:
        if self._thread is None:
            return
        self._engine.stop()
        self._thread.join()
        self._thread = None
        self._engine.close()

    def __enter__(self) -> "Prober":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def fileno(self) -> int:
        return self._engine.event_fileno()

    def drain(self) -> list[model.Event]:
        events = self._engine.drain()
        for ev in events:
            self._explain(ev)
        return events

    def _explain(self, ev: model.Event) -> None:
        """The one log line an operator needs for the prober's own alarms."""
        if isinstance(ev, model.PathCrossed):
            log.warning("%s hears %s's path %d (%s): cables crossed? path=%d peer_path=%d",
                        self._interfaces[ev.path], self._peer, ev.peer_path,
                        self._names[ev.peer_path] if ev.peer_path < len(self._names) else "unknown",
                        ev.path, ev.peer_path)
        elif isinstance(ev, model.SequenceLow):
            log.error("heartbeat sequence numbers nearly used up remaining=%d%s", ev.remaining,
                      ": nothing is sent any more" if ev.remaining == 0 else "")

    def pause(self, path: int) -> None:
        self._engine.pause(path)

    def resume(self, path: int) -> None:
        self._engine.resume(path)

    def send_notice(self, path: int, active: int, seen: int = 0) -> None:
        self._engine.send_notice(path, active, seen)

    def rebind(self, path: int) -> int:
        """Reopen ``path``'s socket by interface name; returns the new ifindex."""
        return self._engine.rebind(path)

    def carrier(self, path: int) -> bool:
        return self._engine.carrier(path)

    def poll_carrier_now(self) -> None:
        """Read the carrier bits at once (a few us); changes come out of ``drain()``."""
        self._engine.poll_carrier_now()

    def realtime_error(self) -> int:
        """errno of switching the loop to SCHED_FIFO; 0 when done or not asked for."""
        return self._engine.realtime_error()

    def events_overflowed(self) -> int:
        """Events lost because nobody drained a full queue (should stay 0)."""
        return self._engine.overflow()

    def samples(self, path: int) -> dict[str, list[int]]:
        """The latest RTT and send-lateness samples (ns) of ``path``, oldest first."""
        snap = self._engine.snapshot(path)
        return {"rtt_ns": snap["rtt_samples"], "send_lag_ns": snap["lag_samples"]}

    def stats(self) -> list[dict]:
        out = []
        for i, name in enumerate(self._names):
            snap = {"name": name, **self._engine.snapshot(i)}
            rtt, lag = snap.pop("rtt_samples"), snap.pop("lag_samples")
            snap.update(rtt_p50_ns=percentile(rtt, 0.5), rtt_p99_ns=percentile(rtt, 0.99),
                        send_lag_p50_ns=percentile(lag, 0.5), send_lag_p99_ns=percentile(lag, 0.99))
            out.append(snap)
        return out
