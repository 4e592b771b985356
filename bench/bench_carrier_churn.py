"""Carrier watch benchmark: the lock-free counters against the ETHTOOL_GLINK ioctl, at rest and
while another namespace changes links as fast as it can.

    python bench/bench_carrier_churn.py [--trials N] [--rest-seconds S] [--rt-priority N] [--json FILE]

Two namespaces joined by two veth pairs (hanet.labnet.TwoNodeLab), a Prober (hanet.probe) in
each at 10 ms x 3 with the carrier polled every 1 ms, in this process. Each carrier source
("counters": sysfs carrier_up_count/carrier_down_count read with pread; "ioctl": ETHTOOL_GLINK,
which takes the kernel's global RTNL lock) is measured in two conditions:

* quiet: nothing else changes links;
* churn: a third namespace runs ``ip -batch`` setting a veth pair down and up in a loop, so the
  RTNL lock is taken back to back.

Per source and condition:
* at rest: carrier reads and SIOCETHTOOL ioctls per second made by the probe loop (its own
  counters), and the process's CPU (% of one core) over ``--rest-seconds``;
* carrier detection: b.nic2 is set down; a watcher in namespace a (``ip netns exec``, so it sees
  that namespace's sysfs) spins on a.nic1's carrier_down_count and stamps CLOCK_MONOTONIC when it
  moves (SCHED_FIFO 20, reading every ~0.1 ms, so it neither waits for a CPU nor takes one from
  the prober): that is the fault time, to about 0.1 ms; detection = the prober's LinkDown stamp - the fault time (p50/p99/max
  over ``--trials``);
* heartbeat send lateness (p50/p99/max) over the rest window, both paths.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "tests" / "lab"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from hanet import labnet, model  # noqa: E402
from hanet.probe import Prober, percentile  # noqa: E402
from nsrun import in_netns  # noqa: E402
from test_probe import node_config  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
WATCHER_PRIORITY = 20  # SCHED_FIFO above any probe loop: the fault time must not wait for a CPU
WATCHER = r"""
import os, sys, time
fd = os.open("/sys/class/net/%s/carrier_down_count", os.O_RDONLY)
base = os.pread(fd, 32, 0)
print("armed", flush=True)
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    if os.pread(fd, 32, 0) != base:
        print(time.monotonic_ns(), flush=True)
        break
    time.sleep(0.00005)
else:
    print(0, flush=True)
"""


def cpu_seconds() -> float:
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def summary(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"n": len(values), "p50": round(pick(0.5), 3), "p99": round(pick(0.99), 3),
            "max": round(ordered[-1], 3)}


class Churn:
    """A veth pair in its own namespace set down and up back to back by ``ip -batch``."""

    def __init__(self) -> None:
        self.ns = labnet.Netns.create("churn")
        labnet.veth(self.ns, "ch0", self.ns, "ch1")
        self.script = tempfile.NamedTemporaryFile("w", suffix=".ip", delete=False)
        self.script.write("link set ch0 down\nlink set ch0 up\n" * 2000)
        self.script.close()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        loop = f"while :; do ip -n {self.ns.name} -batch {self.script.name} >/dev/null 2>&1 || exit; done"
        self.proc = subprocess.Popen(["sh", "-c", loop], start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(5)
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.ns.delete()
        os.unlink(self.script.name)


def detect_once(lab: labnet.TwoNodeLab, a: Prober, events: list) -> float | None:
    """ms from a.nic1's carrier loss (the watcher's stamp) to the prober's LinkDown event."""
    watcher = subprocess.Popen(["chrt", "-f", str(WATCHER_PRIORITY), "ip", "netns", "exec", lab.a.name,
                                sys.executable, "-c", WATCHER % "nic1"],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout.readline().strip() == "armed"
        t_call = time.monotonic_ns()
        labnet.carrier_down(lab.b, "nic2")
        t_fault = int(watcher.stdout.readline().strip() or 0)
    finally:
        watcher.wait(10)
    detected = None
    deadline = time.monotonic() + 2.0
    while detected is None and time.monotonic() < deadline:
        events += a.drain()
        detected = next((e for e in events if isinstance(e, model.LinkDown) and e.path == 0
                         and e.t_ns >= t_call), None)
        time.sleep(0.001)
    labnet.carrier_up(lab.b, "nic2")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not a.carrier(0):
        time.sleep(0.001)
    events += a.drain()
    if detected is None or not t_fault:
        return None
    return (detected.t_ns - t_fault) / 1e6


def run_condition(lab: labnet.TwoNodeLab, tmp: Path, source: str, churn: Churn | None, trials: int,
                  rest_s: float, rt_priority: int) -> dict:
    cfg_a = node_config(tmp, "alpha", "beta", ("nic1", "nic3"), poll_ms=1.0)
    cfg_b = node_config(tmp, "beta", "alpha", ("nic2", "nic4"), poll_ms=1.0)
    mode = "ioctl" if source == "ioctl" else "auto"
    a = Prober(cfg_a, carrier=mode, rt_priority=rt_priority)
    b = Prober(cfg_b, carrier=mode, rt_priority=rt_priority)
    with in_netns(lab.a.name):
        a.start()
    with in_netns(lab.b.name):
        b.start()
    try:
        if churn is not None:
            churn.start()
        time.sleep(0.5)
        before = a.stats()
        c0, t0 = cpu_seconds(), time.monotonic()
        time.sleep(rest_s)
        c1, t1 = cpu_seconds(), time.monotonic()
        after = a.stats()
        lags = a.samples(0)["send_lag_ns"] + a.samples(1)["send_lag_ns"]
        secs = t1 - t0
        rest = {
            "carrier_source": after[0]["carrier_source"],
            "carrier_reads_per_s": round(sum(x["carrier_reads"] - y["carrier_reads"] for x, y in zip(after, before)) / secs),
            "ioctls_per_s": round(sum(x["carrier_ioctls"] - y["carrier_ioctls"] for x, y in zip(after, before)) / secs),
            "cpu_percent_both_nodes": round(100 * (c1 - c0) / secs, 1),
        }
        events: list = []
        detections = []
        for _ in range(trials):
            d = detect_once(lab, a, events)
            if d is not None:
                detections.append(d)
            time.sleep(random.uniform(0.05, 0.15))
        return {
            "source": source, "condition": "churn" if churn else "quiet", "rest": rest,
            "detection_ms": summary(detections), "missed": trials - len(detections),
            "send_lag_us": {"p50": round(percentile(lags, 0.5) / 1000, 1),
                            "p99": round(percentile(lags, 0.99) / 1000, 1),
                            "max": round(max(lags, default=0) / 1000, 1)},
        }
    finally:
        if churn is not None:
            churn.stop()
        a.stop()
        b.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--rest-seconds", type=float, default=3.0)
    ap.add_argument("--rt-priority", type=int, default=0, help="SCHED_FIFO priority of the probe loops")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    labnet.sweep_stale()
    result = {"trials": args.trials, "rt_priority": args.rt_priority, "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
              "runs": []}
    with tempfile.TemporaryDirectory(prefix="hanet-carrier-") as work:
        tmp = Path(work)
        lab = labnet.TwoNodeLab.create("cc")
        churn = None
        try:
            churn = Churn()
            for source in ("counters", "ioctl"):
                for busy in (False, True):
                    res = run_condition(lab, tmp, source, churn if busy else None, args.trials,
                                        args.rest_seconds, args.rt_priority)
                    result["runs"].append(res)
                    det = res["detection_ms"] or {}
                    print(f"{source:8s} {res['condition']:5s} reads/s {res['rest']['carrier_reads_per_s']:5d}  "
                          f"ioctls/s {res['rest']['ioctls_per_s']:5d}  cpu {res['rest']['cpu_percent_both_nodes']:5.1f} %  "
                          f"detect p50 {det.get('p50')} p99 {det.get('p99')} max {det.get('max')} ms "
                          f"(missed {res['missed']})  lag p99 {res['send_lag_us']['p99']} us "
                          f"max {res['send_lag_us']['max']} us", flush=True)
        finally:
            if churn is not None:
                churn.close()
            lab.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
