"""Operators' view and commands: control-socket commands become events; refusals are structured.

A refused command is a table row that refuses (``Step.refused``), answered to the operator as an
error with the row's reason; a command never waits on a move, since every move has a deadline.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from . import machine as M
from . import model as m
from .config import Config


class Refused(Exception):
    """The command was understood and turned down; ``str()`` says why."""


class Operator:
    def __init__(self, cfg: Config, submit: Callable[[m.Event], M.Step | None],
                 machine: Callable[[], M.Machine]):
        self.cfg, self.submit, self.machine = cfg, submit, machine

    def path_index(self, iface: str) -> int:
        for i, pc in enumerate(self.cfg.paths):
            if iface in (pc.interface, pc.name):
                return i
        raise Refused(f"no path with interface or name {iface!r}")

    def event_for(self, cmd: str, args: dict[str, Any], who: str, now: int) -> m.Event:
        force = bool(args.get("force", False))
        if cmd == "failover":
            target = args.get("to")
            return m.OperatorFailover(t_ns=now, path=self.path_index(target) if target else None, who=who, force=force)
        if cmd == "failback":
            return m.OperatorFailback(t_ns=now, who=who, force=force)
        if cmd == "offline":
            return m.OperatorOffline(t_ns=now, path=self.path_index(_required(args, "interface")), who=who, force=force)
        if cmd == "online":
            return m.OperatorOnline(t_ns=now, path=self.path_index(_required(args, "interface")), who=who)
        raise Refused(f"unknown command {cmd!r}")

    def command(self, cmd: str, args: dict[str, Any], who: str) -> dict[str, Any]:
        step = self.submit(self.event_for(cmd, args, who, time.monotonic_ns()))
        mach = self.machine()
        if step is not None and step.refused:
            raise Refused(step.reason)
        return {"state": mach.state, "active": mach.active, "reason": step.reason if step else "queued"}


def _required(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise Refused(f"missing argument {key!r}")
    return value


def path_status(cfg: Config, mach: M.Machine, probe_stats: list[dict[str, Any]], now: int) -> list[dict[str, Any]]:
    """Every path as of ``now``: the machine's facts (penalty decayed to now), the prober's counters."""
    view = mach.view(now)
    out = []
    for i, pc in enumerate(cfg.paths):
        f = mach.facts[i]
        entry = {"index": i, "name": pc.name, "interface": pc.interface, "health": f.health,
                 "carrier": f.carrier, "link_ok": f.link_ok, "present": f.present,
                 "offline": f.offline, "damped": view.damped(i), "lossy": f.lossy,
                 "penalty": round(view.penalty(i), 1), "usable": view.usable(i)}
        if i < len(probe_stats):
            s = probe_stats[i]
            entry.update({k: v for k, v in s.items() if k not in entry or k == "carrier"})
            for key in ("rtt_p50_ns", "rtt_p99_ns", "rtt_max_ns"):
                if key in s and s[key] is not None:
                    entry[key.replace("_ns", "_us")] = round(s[key] / 1000, 1)
        out.append(entry)
    return out
