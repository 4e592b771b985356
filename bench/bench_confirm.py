"""Confirmation probing (heartbeat.confirm_ms) against the plain schedule: detection time, false
"lost" under stress, CPU at rest.

    python bench/bench_confirm.py [--trials N] [--stress-seconds S] [--rest-seconds R]
                                  [--confirm-ms 0,3,5] [--slow-trials M] [--json FILE]

Two namespaces joined by two veth pairs; node a's Prober (hanet.probe) runs in this process,
node b's in a child process (so it can be paused with SIGSTOP and its CPU time read alone).
10 ms x 3 unless said otherwise. For each confirm_ms (0 = off):

* CPU at rest: node b's process CPU time over R seconds, nothing wrong (ms of CPU per second);
* blackhole: N faults of the primary at a random phase of the interval, frames dropped both
  ways (one nftables table dropping at ingress and egress of a.nic1); detection = node a's
  HeartbeatLost stamp - the moment nft returned (the rule is in force somewhat earlier: the nft
  run time is reported as nft_run_ms, an upper bound of that error) (p50/p99/max ms); then
  healed and recovery awaited;
* one-way: the same with only b's replies dropped (ingress of a.nic1);
* 100 ms x 3: M blackholes as above, p50/p99;
* three stress runs of S seconds each, "lost" (and suspect) events of both nodes counted, all
  false: 5 % random loss on every path's ingress on both nodes; both cores saturated by two busy
  processes (`python3 -c 'while True: pass'`, nice 0, under `timeout`, killed at the end); node
  b SIGSTOPped for confirm_ms - 1.5 ms (at least 1 ms; 3.5 ms when off; timed by spinning, as a
  sleep overshoots) every 150-300 ms, then SIGCONTed (the pauses actually taken are reported);
  sigstop_long: the same for 15 ms, three times the 5 ms floor and half of BFD's 30 ms (a peer
  silent on every path for longer than the window is no reason to leave a path).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
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

ALARMS = {model.HeartbeatLost: "lost", model.HeartbeatSuspect: "suspect",
          model.HeartbeatCleared: "cleared", model.HeartbeatRecovered: "recovered"}


LONG_STOP_S = 0.015  # sigstop_long: past the 5 ms floor, within BFD's 3 x 10 ms


def summary(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"n": len(values), "p50": round(pick(0.5), 2), "p99": round(pick(0.99), 2),
            "max": round(ordered[-1], 2)}


# ---------------------------------------------------------------------- node b, in a child process
def peer_main(ns: str, work: str, interval_ms: float, confirm_ms: float) -> int:
    """Run node b until stdin closes; print each alarm event as "KIND T_NS PATH"."""
    b = Prober(node_config(Path(work), "beta", "alpha", ("nic2", "nic4"), interval_ms=interval_ms,
                           confirm_ms=confirm_ms), rt_priority=0)
    with in_netns(ns):
        b.start()
    print("ready", flush=True)
    try:
        while True:
            ready, _, _ = select.select([b.fileno(), sys.stdin], [], [])
            for ev in b.drain():
                kind = ALARMS.get(type(ev))
                if kind:
                    print(kind, ev.t_ns, ev.path, flush=True)
            if sys.stdin in ready and not sys.stdin.readline():
                return 0
    finally:
        b.stop()


class Peer:
    def __init__(self, ns: str, work: Path, interval_ms: float, confirm_ms: float):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--peer", ns, str(work), str(interval_ms), str(confirm_ms)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("node b did not start")
        self.events: list[tuple[str, int, int]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind, t, path = line.split()
            self.events.append((kind, int(t), int(path)))

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(2)


# ---------------------------------------------------------------------- measurements
def wait_event(prober: Prober, events: list, kind: type, after_ns: int, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events += prober.drain()
        found = next((e for e in events if isinstance(e, kind) and e.path == 0 and e.t_ns >= after_ns), None)
        if found:
            return found
        time.sleep(0.001)
    return None


def blackhole(ns: labnet.Netns, ifname: str) -> None:
    """Drop every frame in and out of ``ifname`` from one moment (one nftables transaction);
    labnet.clear_ingress removes it."""
    chains = "".join(f"""
  chain {hook} {{
    type filter hook {hook} device "{ifname}" priority -500; policy accept;
    drop
  }}""" for hook in ("ingress", "egress"))
    ns.nft(f"table netdev hanet_fault_{ifname} {{{chains}\n}}\n")


def detections(lab, a: Prober, ev_a: list, interval_ms: float, trials: int, both_ways: bool) -> dict:
    out, nft, overdue, sent = [], [], [], []
    for _ in range(trials):
        time.sleep(random.uniform(0, interval_ms / 1000))
        t_call = time.monotonic_ns()
        if both_ways:
            blackhole(lab.a, "nic1")
        else:
            labnet.drop_ingress(lab.a, "nic1")
        t_fault = time.monotonic_ns()  # the rule is in force by now (since at most nft's run)
        nft.append((t_fault - t_call) / 1e6)
        lost = wait_event(a, ev_a, model.HeartbeatLost, t_call, 5.0)
        labnet.clear_ingress(lab.a, "nic1")
        if lost is not None:
            out.append((lost.t_ns - t_fault) / 1e6)
            if lost.confirm_first_ns:
                overdue.append((lost.confirm_first_ns - t_fault) / 1e6)
                sent.append(lost.confirms_sent)
        wait_event(a, ev_a, model.HeartbeatRecovered, time.monotonic_ns(), 5.0)
        time.sleep(random.uniform(0.05, 0.1) + 3 * interval_ms / 1000)
    res = summary(out) or {}
    res["missed"] = trials - len(out)
    res["nft_run_ms"] = summary(nft)  # how much earlier the rule may have been in force
    res["first_overdue_ms"] = summary(overdue)  # from the fault to the first overdue reply
    res["confirms_sent"] = summary(sent)
    res["trials_ms"] = [round(x, 2) for x in out]
    res["first_overdue_trials_ms"] = [round(x, 2) for x in overdue]
    return res


def count_alarms(a: Prober, ev_a: list, peer: Peer, t0: int, t1: int) -> dict:
    ev_a += a.drain()
    counts = {}
    for kind in ("lost", "suspect"):
        mine = sum(ALARMS.get(type(e)) == kind and t0 <= e.t_ns <= t1 for e in ev_a)
        theirs = sum(k == kind and t0 <= t <= t1 for k, t, _ in peer.events)
        counts[kind] = {"a": mine, "b": theirs}
    return counts


def stress(lab, a: Prober, ev_a: list, peer: Peer, kind: str, seconds: float, confirm_ms: float) -> dict:
    extra: dict = {}
    busy: list[subprocess.Popen] = []
    if kind == "loss":
        for ns, nics in ((lab.a, ("nic1", "nic3")), (lab.b, ("nic2", "nic4"))):
            for nic in nics:
                labnet.drop_ingress(ns, nic, 5)
    elif kind == "cpu":
        busy = [subprocess.Popen(["timeout", str(int(seconds) + 10), sys.executable, "-c",
                                  "while True: pass"], start_new_session=True) for _ in range(2)]
    t0 = time.monotonic_ns()
    end = time.monotonic() + seconds
    pauses = []
    try:
        if kind in ("sigstop", "sigstop_long"):
            stop_s = (LONG_STOP_S if kind == "sigstop_long"
                      else max(confirm_ms - 1.5, 1.0) / 1000 if confirm_ms else 0.0035)
            while time.monotonic() < end:
                time.sleep(random.uniform(0.15, 0.3))
                t = time.monotonic()
                os.kill(peer.proc.pid, signal.SIGSTOP)
                resume = t + stop_s
                while time.monotonic() < resume:  # a sleep would overshoot by up to 1.5 ms here
                    pass
                os.kill(peer.proc.pid, signal.SIGCONT)
                pauses.append((time.monotonic() - t) * 1000)
                ev_a += a.drain()
            extra["pause_ms"] = summary(pauses)
            extra["pause_target_ms"] = stop_s * 1000
        else:
            while time.monotonic() < end:
                time.sleep(0.5)
                ev_a += a.drain()
    finally:
        for p in busy:  # timeout and its child: the process group each was started in
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if kind == "loss":
            for ns, nics in ((lab.a, ("nic1", "nic3")), (lab.b, ("nic2", "nic4"))):
                for nic in nics:
                    labnet.clear_ingress(ns, nic)
    t1 = time.monotonic_ns()
    time.sleep(0.3)
    return {"seconds": seconds, **count_alarms(a, ev_a, peer, t0, t1), **extra}


def run(lab, work: Path, confirm_ms: float, args) -> dict:
    kw = dict(interval_ms=10.0, confirm_ms=confirm_ms)
    a = Prober(node_config(work, "alpha", "beta", ("nic1", "nic3"), **kw), rt_priority=0)
    with in_netns(lab.a.name):
        a.start()
    peer = Peer(lab.b.name, work, 10.0, confirm_ms)
    ev_a: list = []
    res: dict = {"confirm_ms": confirm_ms}
    try:
        if not wait_event(a, ev_a, model.HeartbeatRecovered, 0, 5.0):
            raise SystemExit("path 0 never came up")
        time.sleep(0.5)
        c0, t0 = peer.cpu_s(), time.monotonic()
        time.sleep(args.rest_seconds)
        res["rest_cpu_ms_per_s"] = round(1000 * (peer.cpu_s() - c0) / (time.monotonic() - t0), 2)
        res["rest"] = count_alarms(a, ev_a, peer, time.monotonic_ns() - int(args.rest_seconds * 1e9),
                                   time.monotonic_ns())
        res["blackhole_10x3_ms"] = detections(lab, a, ev_a, 10.0, args.trials, True)
        res["one_way_10x3_ms"] = detections(lab, a, ev_a, 10.0, args.trials, False)
        print(f"confirm_ms {confirm_ms}: rest cpu {res['rest_cpu_ms_per_s']} ms/s, "
              f"blackhole {res['blackhole_10x3_ms']}, one-way {res['one_way_10x3_ms']}", flush=True)
        for kind in args.stress.split(","):
            if kind:
                res[f"stress_{kind}"] = stress(lab, a, ev_a, peer, kind, args.stress_seconds, confirm_ms)
                print(f"confirm_ms {confirm_ms}: stress {kind} {res[f'stress_{kind}']}", flush=True)
    finally:
        a.stop()
        peer.close()
    if args.slow_trials:
        kw = dict(interval_ms=100.0, confirm_ms=confirm_ms)
        a = Prober(node_config(work, "alpha", "beta", ("nic1", "nic3"), **kw), rt_priority=0)
        with in_netns(lab.a.name):
            a.start()
        peer = Peer(lab.b.name, work, 100.0, confirm_ms)
        ev_a = []
        try:
            if not wait_event(a, ev_a, model.HeartbeatRecovered, 0, 5.0):
                raise SystemExit("path 0 never came up at 100 ms")
            res["blackhole_100x3_ms"] = detections(lab, a, ev_a, 100.0, args.slow_trials, True)
            print(f"confirm_ms {confirm_ms}: 100x3 blackhole {res['blackhole_100x3_ms']}", flush=True)
        finally:
            a.stop()
            peer.close()
    return res


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--peer":
        ns, work, interval, confirm = sys.argv[2:6]
        return peer_main(ns, work, float(interval), float(confirm))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--slow-trials", type=int, default=15)
    ap.add_argument("--rest-seconds", type=float, default=20.0)
    ap.add_argument("--stress-seconds", type=float, default=60.0)
    ap.add_argument("--stress", default="loss,cpu,sigstop,sigstop_long")
    ap.add_argument("--confirm-ms", default="0,5")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    labnet.sweep_stale()
    result = {"setting": "10x3", "rt_priority": 0, "runs": [], "load_before": os.getloadavg(),
              "host": {"cpus": os.cpu_count(), "kernel": platform.release()}}
    with tempfile.TemporaryDirectory(prefix="hanet-confirm-") as work:
        lab = labnet.TwoNodeLab.create("cf")
        try:
            for confirm in [float(x) for x in args.confirm_ms.split(",")]:
                result["runs"].append(run(lab, Path(work), confirm, args))
        finally:
            lab.close()
    result["load_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
