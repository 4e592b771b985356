"""Confirmation probing (heartbeat.confirm_ms) against the plain schedule: blackhole detection and
false alarms at rest.

    python bench/bench_confirm.py [--trials N] [--rest-seconds S] [--setting 10x3]
                                  [--confirm-ms 0,1,5] [--rt-priority N] [--json FILE]

Two namespaces joined by two veth pairs, a Prober (hanet.probe) in each, in this process. For
each confirm_ms (0 = off):
* at rest for S seconds: heartbeat suspect and lost events on either node (all false: nothing is
  wrong with the paths);
* N blackholes of the primary (nftables ingress drop on a.nic1, at a random phase of the
  interval): detection = node a's HeartbeatLost stamp - the moment the drop rule was in force
  (p50/p99/max ms); then healed, and recovery awaited.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "tests" / "lab"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from hanet import labnet, model  # noqa: E402
from hanet.probe import Prober  # noqa: E402
from nsrun import in_netns  # noqa: E402
from test_probe import node_config  # noqa: E402


def summary(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"n": len(values), "p50": round(pick(0.5), 2), "p99": round(pick(0.99), 2),
            "max": round(ordered[-1], 2)}


def wait_event(prober: Prober, events: list, kind: type, after_ns: int, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events += prober.drain()
        found = next((e for e in events if isinstance(e, kind) and e.path == 0 and e.t_ns >= after_ns), None)
        if found:
            return found
        time.sleep(0.001)
    return None


def run(lab, tmp: Path, interval_ms: float, multiplier_unused: int, confirm_ms: float, trials: int,
        rest_s: float, rt: int) -> dict:
    kw = dict(interval_ms=interval_ms, confirm_ms=confirm_ms)
    a = Prober(node_config(tmp, "alpha", "beta", ("nic1", "nic3"), **kw), rt_priority=rt)
    b = Prober(node_config(tmp, "beta", "alpha", ("nic2", "nic4"), **kw), rt_priority=rt)
    with in_netns(lab.a.name):
        a.start()
    with in_netns(lab.b.name):
        b.start()
    ev_a: list = []
    ev_b: list = []
    try:
        if not wait_event(a, ev_a, model.HeartbeatRecovered, 0, 5.0):
            raise SystemExit("path 0 never came up")
        time.sleep(0.5)
        t0 = time.monotonic_ns()
        time.sleep(rest_s)
        ev_a += a.drain()
        ev_b += b.drain()
        alarms = sum(isinstance(e, (model.HeartbeatSuspect, model.HeartbeatLost)) and e.t_ns >= t0
                     for e in ev_a + ev_b)
        lost_at_rest = sum(isinstance(e, model.HeartbeatLost) and e.t_ns >= t0 for e in ev_a + ev_b)
        detections = []
        for _ in range(trials):
            time.sleep(random.uniform(0, interval_ms / 1000))
            labnet.drop_ingress(lab.a, "nic1")
            t_fault = time.monotonic_ns()
            lost = wait_event(a, ev_a, model.HeartbeatLost, t_fault, 5.0)
            labnet.clear_ingress(lab.a, "nic1")
            if lost is not None:
                detections.append((lost.t_ns - t_fault) / 1e6)
            wait_event(a, ev_a, model.HeartbeatRecovered, time.monotonic_ns(), 5.0)
            time.sleep(random.uniform(0.05, 0.1))
        return {"confirm_ms": confirm_ms, "rest_s": rest_s, "false_alarms_at_rest": alarms,
                "false_lost_at_rest": lost_at_rest, "detection_ms": summary(detections),
                "confirms_sent": a.stats()[0]["confirms"]}
    finally:
        a.stop()
        b.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rest-seconds", type=float, default=20.0)
    ap.add_argument("--setting", default="10x3")
    ap.add_argument("--confirm-ms", default="0,1,5")
    ap.add_argument("--rt-priority", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    interval, multiplier = args.setting.lower().split("x")
    if int(multiplier) != 3:
        ap.error("the lab configuration (tests/lab/test_probe.py) uses multiplier 3")
    labnet.sweep_stale()
    result = {"setting": args.setting, "rt_priority": args.rt_priority, "runs": [],
              "host": {"cpus": os.cpu_count(), "kernel": platform.release()}}
    with tempfile.TemporaryDirectory(prefix="hanet-confirm-") as work:
        lab = labnet.TwoNodeLab.create("cf")
        try:
            for confirm in [float(x) for x in args.confirm_ms.split(",")]:
                res = run(lab, Path(work), float(interval), 3, confirm, args.trials, args.rest_seconds,
                          args.rt_priority)
                result["runs"].append(res)
                d = res["detection_ms"] or {}
                print(f"confirm_ms {confirm:4.1f}  blackhole detect p50 {d.get('p50')} p99 {d.get('p99')} "
                      f"max {d.get('max')} ms  false alarms at rest {res['false_alarms_at_rest']} "
                      f"(lost {res['false_lost_at_rest']}) in {args.rest_seconds:.0f} s", flush=True)
        finally:
            lab.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
