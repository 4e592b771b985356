"""The golden event log: a scripted failover and failback of one node, written by the real writer
through the real machine with fixed clocks, so the same script always gives the same bytes.

    python tests/golden/golden_log.py     rewrites failover.hlog and failover.timeline.txt here

tests/golden/test_golden.py checks that the checked-in log still reads, replays and verifies as
recorded, and that the current writer and machine still produce it byte for byte: a change of
the record format or of the machine's decisions shows up there first.
"""
from __future__ import annotations

import io
import itertools
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from hanet import machine as M, model as m, replay  # noqa: E402
from hanet.eventlog import open_logs  # noqa: E402
from hanet.eventlog.writer import Writer  # noqa: E402

LOG = os.path.join(HERE, "failover.hlog")
TIMELINE = os.path.join(HERE, "failover.timeline.txt")
MS = 1_000_000
MACS = ("02:00:00:00:0a:01", "02:00:00:00:0a:02")


def script() -> list[m.Event]:
    """Start, hear the peer, lose the primary's carrier, fail over, heal, fail back."""
    t = 1_000 * MS
    events: list[m.Event] = [m.DaemonStarted(t_ns=t, holder=0, carrier=(True, True), macs=MACS,
                                             present=(True, True))]
    events += [m.HeartbeatRecovered(t_ns=t + 30 * MS, path=p, replies=3, rtt_ns=60_000) for p in (0, 1)]
    events.append(m.LinkDown(t_ns=t + 500 * MS, path=0, source="poll"))
    return events


def write(path: str) -> None:
    """Play the shell against the script, feeding each action's outcome back as it would."""
    if os.path.exists(path):
        os.unlink(path)
    params = M.Params(paths=("primary", "alternate"), failback_hold_ns=200 * MS)
    mach = M.Machine(params)
    mono = itertools.count(1_000 * MS, 1000)
    with Writer(path, "alpha", params=params.to_dict, snapshot=mach.snapshot, mono_ns=lambda: next(mono),
                wall_ns=lambda: 1_800_000_000 * 10**9 + next(mono)) as w:
        queue = list(script())
        timers: dict[str, int] = {}
        t = 0
        heal_at = 2_000 * MS
        healed = False
        for _ in range(200):  # bounded: the script settles well before
            if not queue:
                due = sorted((d, n) for n, d in timers.items())
                if not healed and (not due or due[0][0] > heal_at):
                    queue.append(m.LinkUp(t_ns=heal_at, path=0, source="poll"))
                    healed = True
                elif due:
                    deadline, name = due[0]
                    del timers[name]
                    queue.append(m.TimerFired(t_ns=deadline, name=name))
                else:
                    break
            ev = queue.pop(0)
            t = max(t, ev.t_ns)
            cause = w.event(ev)
            step = mach.step(ev)
            if step.changed:
                w.transition(step, cause)
            for act in step.actions:
                if isinstance(act, m.StartTimer):
                    timers[act.name] = act.deadline_ns
                elif isinstance(act, m.CancelTimer):
                    timers.pop(act.name, None)
                elif isinstance(act, m.KERNEL_ACTIONS):
                    queue.append(m.ActionDone(t_ns=t + MS, action_id=act.id, kind=act.type, detail="golden"))


def timeline(path: str) -> str:
    out = io.StringIO()
    replay.timeline(open_logs([path], lambda d: None), out)
    return out.getvalue()


if __name__ == "__main__":
    write(LOG)
    with open(TIMELINE, "w") as fh:
        fh.write(timeline(LOG))
    print(f"wrote {LOG} and {TIMELINE}")
