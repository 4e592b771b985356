"""Prober benchmark: the nogil Cython loop (hanet.probe) beside a pure-Python loop, in one run.

Three columns: the pure-Python loop, the Cython loop at normal priority, and the Cython loop with
its thread SCHED_FIFO (``Prober(cfg, rt_priority=10)``), which shows what a busy host costs.

Two namespaces joined by two veth pairs (hanet.labnet.TwoNodeLab). Each node runs in its own
process (``ip netns exec``), both nodes with the same implementation, and node a reports:

* send lateness (time a request left after its absolute deadline) p50/p99/max at 1 ms and 10 ms,
  and the request/reply round-trip time there;
* CPU % of one core at rest, two paths at 10 ms (getrusage of the node process over a window),
  with the carrier polled every 10 ms and every 1 ms;
* request/reply rate: a sweep of shrinking intervals on one path; the maximum is the highest
  reply rate with at least 99 % of requests answered;
* the host's timer floor: a bare sleep loop on absolute deadlines, no I/O (Python's time.sleep;
  clock_nanosleep from C, bench/sleep_floor.c compiled at run time, at normal priority and
  SCHED_FIFO), so the loops' own cost shows.

The pure-Python loop speaks the same frames (hanet.frame) over the same AF_PACKET sockets and
polls the carrier with the same ETHTOOL_GLINK ioctl; it waits in poll(2) with absolute deadlines,
which Python rounds up to whole milliseconds — the interpreter's own limit, shown here.

    python bench/bench_prober.py [--json FILE] [--seconds S]
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import math
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hanet import frame, labnet  # noqa: E402
from hanet.config import Config, HeartbeatConfig, IdentityConfig, LinkConfig, PathConfig  # noqa: E402

ETHERTYPE = 0x88B5
SIOCETHTOOL = 0x8946
ETHTOOL_GLINK = 0x0000000A
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_MULTICAST = 0
NICS = {"a": ("nic1", "nic3"), "b": ("nic2", "nic4")}
IDS = {"a": ("alpha", "beta"), "b": ("beta", "alpha")}
SWEEP_US = (1000, 500, 200, 100, 50, 20, 10)
IMPLS = ("python", "cython", "cython-fifo")
RT_PRIORITY = 10


def summary(samples: list[int]) -> dict:
    if not samples:
        return {"n": 0, "p50_us": None, "p99_us": None, "max_us": None}
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] / 1000  # noqa: E731
    return {"n": len(s), "p50_us": round(pick(0.5), 1), "p99_us": round(pick(0.99), 1),
            "max_us": round(s[-1] / 1000, 1)}


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def wakeups() -> int:
    """Voluntary context switches of every thread of this process: how often it slept and woke.
    CPU % over wake-ups gives the cost of one wake-up, to set beside the host's timer floor."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/status") as fh:
            total += next(int(line.split()[1]) for line in fh if line.startswith("voluntary_ctxt_switches"))
    return total


# --------------------------------------------------------------------------- pure-Python loop
class PythonLoop:
    """Prober + responder + carrier poll in plain Python, one thread, same frames as hanet."""

    def __init__(self, key: bytes, node: str, peer: str, nics: tuple[str, ...], interval_ns: int,
                 poll_ns: int):
        self.key, self.nics = key, nics
        self.node, self.peer = frame.node_id_field(node), frame.node_id_field(peer)
        self.interval_ns, self.poll_ns = interval_ns, poll_ns
        self.seq = time.clock_gettime_ns(time.CLOCK_REALTIME)
        self.socks = []
        for nic in nics:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETHERTYPE))
            sock.bind((nic, ETHERTYPE))
            ifindex = socket.if_nametoindex(nic)
            mreq = struct.pack("iHH8s", ifindex, PACKET_MR_MULTICAST, 6, frame.GROUP_MAC)
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            sock.setblocking(False)
            self.socks.append(sock)
        self.ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.ethtool = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_GLINK, 0))
        self.sent = [0] * len(nics)
        self.received = [0] * len(nics)
        self.lag: list[list[int]] = [[] for _ in nics]
        self.outstanding = [0] * len(nics)
        self.sent_ns = [0] * len(nics)
        self.rtt: list[int] = []
        self.carrier = [True] * len(nics)
        self.top = [0] * len(nics)

    def carrier_bit(self, nic: str) -> bool:
        ifreq = struct.pack("16sP", nic.encode(), ctypes.addressof(self.ethtool))
        fcntl.ioctl(self.ctl, SIOCETHTOOL, ifreq)
        return struct.unpack_from("II", self.ethtool)[1] != 0

    def send(self, i: int, kind: int, echo_seq: int = 0, echo_ns: int = 0) -> int:
        self.seq += 1
        payload = frame.encode(self.key, frame.Frame(kind=kind, path=i, node_id=self.node, seq=self.seq,
                                                     send_ns=time.monotonic_ns(), echo_seq=echo_seq,
                                                     echo_ns=echo_ns))
        self.socks[i].sendto(payload, (self.nics[i], ETHERTYPE, 0, 0, frame.GROUP_MAC))
        return self.seq

    def receive(self, i: int) -> None:
        sock = self.socks[i]
        for _ in range(64):
            try:
                data = sock.recv(256)
            except BlockingIOError:
                return
            _, f = frame.decode(self.key, data)
            if f is None or f.node_id != self.peer or f.path != i or f.seq <= self.top[i]:
                continue
            self.top[i] = f.seq
            if f.kind == frame.KIND_REQUEST:
                self.send(i, frame.KIND_REPLY, f.seq, f.send_ns)
            elif f.kind == frame.KIND_REPLY and f.echo_seq == self.outstanding[i]:
                self.outstanding[i] = 0
                self.received[i] += 1
                self.rtt.append(time.monotonic_ns() - self.sent_ns[i])

    def run(self, seconds: float, active: tuple[int, ...]) -> None:
        poller = select.poll()
        by_fd = {}
        for i, sock in enumerate(self.socks):
            poller.register(sock, select.POLLIN)
            by_fd[sock.fileno()] = i
        now = time.monotonic_ns()
        end = now + int(seconds * 1e9)
        next_send = {i: now for i in active}
        next_poll = now
        while now < end:
            if now >= next_poll:
                self.carrier = [self.carrier_bit(nic) for nic in self.nics]
                next_poll += self.poll_ns * max(1, math.ceil((now - next_poll + 1) / self.poll_ns))
            for i in active:
                if now >= next_send[i]:
                    self.lag[i].append(time.monotonic_ns() - next_send[i])
                    self.sent_ns[i] = time.monotonic_ns()
                    self.outstanding[i] = self.send(i, frame.KIND_REQUEST)
                    self.sent[i] += 1
                    next_send[i] += self.interval_ns * max(1, math.ceil((now - next_send[i] + 1) / self.interval_ns))
            deadline = min([next_poll, *next_send.values()])
            for fd, _ in poller.poll(max(0.0, (deadline - time.monotonic_ns()) / 1e6)):
                self.receive(by_fd[fd])
            now = time.monotonic_ns()


# --------------------------------------------------------------------------- one node
def node_config(role: str, key: bytes, interval_ms: float, poll_ms: float) -> Config:
    node, peer = IDS[role]
    return Config(
        file="<bench>", node_id=node, peer_id=peer,
        paths=tuple(PathConfig(f"path{i}", nic) for i, nic in enumerate(NICS[role])),
        identity=IdentityConfig(address="192.0.2.1/24"),
        heartbeat=HeartbeatConfig(interval_ms=interval_ms, multiplier=3, key=key),
        link=LinkConfig(poll_interval_ms=poll_ms),
    )


def run_node(args) -> dict:
    """One node for ``args.seconds``; measures over the time after ``args.warmup``."""
    key = open(args.key_file, "rb").read()
    active = tuple(range(args.paths))
    if args.impl.startswith("cython"):
        from hanet.probe import Prober
        prober = Prober(node_config(args.role, key, args.interval_ms, args.poll_ms),
                        rt_priority=RT_PRIORITY if args.impl == "cython-fifo" else 0)
        prober.start()
        time.sleep(args.warmup)
        before, cpu0, t0, w0 = prober.stats(), cpu_seconds(), time.monotonic(), wakeups()
        time.sleep(args.seconds)
        after, cpu1, t1, w1 = prober.stats(), cpu_seconds(), time.monotonic(), wakeups()
        lags, rtts = [], []
        for i in active:
            samples = prober.samples(i)
            fresh = after[i]["sent"] - before[i]["sent"]
            lags += samples["send_lag_ns"][-fresh:] if fresh else []
            fresh = after[i]["received"] - before[i]["received"]
            rtts += samples["rtt_ns"][-fresh:] if fresh else []
        prober.stop()
        sent = sum(after[i]["sent"] - before[i]["sent"] for i in active)
        received = sum(after[i]["received"] - before[i]["received"] for i in active)
    else:
        node, peer = IDS[args.role]
        loop = PythonLoop(key, node, peer, NICS[args.role], int(args.interval_ms * 1e6),
                          int(args.poll_ms * 1e6))
        loop.run(args.warmup, active)
        sent0, recv0 = sum(loop.sent), sum(loop.received)
        marks = [len(lag) for lag in loop.lag]
        rtt_mark = len(loop.rtt)
        cpu0, t0, w0 = cpu_seconds(), time.monotonic(), wakeups()
        loop.run(args.seconds, active)
        cpu1, t1, w1 = cpu_seconds(), time.monotonic(), wakeups()
        sent, received = sum(loop.sent) - sent0, sum(loop.received) - recv0
        lags = [x for i in active for x in loop.lag[i][marks[i]:]]
        rtts = loop.rtt[rtt_mark:]
    return {"sent_per_s": round(sent / (t1 - t0)), "replies_per_s": round(received / (t1 - t0)),
            "reply_ratio": round(received / sent, 4) if sent else 0.0,
            "send_lateness": summary(lags), "rtt": summary(rtts), "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
            "wakeups_per_s": round((w1 - w0) / (t1 - t0)),
            "cpu_us_per_wakeup": round(1e6 * (cpu1 - cpu0) / (w1 - w0), 1) if w1 > w0 else None}


def sleep_floor_program() -> str:
    """bench/sleep_floor.c, compiled once per run into a temporary directory."""
    global _SLEEP_FLOOR
    if _SLEEP_FLOOR is None:
        out = os.path.join(tempfile.mkdtemp(prefix="hanet-bench-"), "sleep_floor")
        subprocess.run(["cc", "-O2", "-o", out, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                              "sleep_floor.c")], check=True)
        _SLEEP_FLOOR = out
    return _SLEEP_FLOOR


_SLEEP_FLOOR: str | None = None


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timer_floor(impl: str, period_ms: float, seconds: float) -> dict:
    count = int(seconds * 1000 / period_ms)
    if impl == "python":
        cpu0, t0 = cpu_seconds(), time.monotonic()
        lags, deadline = [], time.monotonic_ns()
        for _ in range(count):
            deadline += int(period_ms * 1e6)
            time.sleep(max(0, deadline - time.monotonic_ns()) / 1e9)
            lags.append(time.monotonic_ns() - deadline)
        cpu_s, wall_s = cpu_seconds() - cpu0, time.monotonic() - t0
    else:
        program = sleep_floor_program()
        cpu0, t0 = children_cpu_seconds(), time.monotonic()
        out = subprocess.run([program, str(period_ms), str(count),
                              str(RT_PRIORITY if impl == "cython-fifo" else 0)],
                             check=True, capture_output=True, text=True).stdout
        cpu_s, wall_s = children_cpu_seconds() - cpu0, time.monotonic() - t0
        lags = [int(line) for line in out.split()]
    return {**summary(lags), "cpu_percent": round(100 * cpu_s / wall_s, 2),
            "cpu_us_per_wakeup": round(1e6 * cpu_s / count, 1)}


# --------------------------------------------------------------------------- orchestration
def scenario(lab, key_file: str, impl: str, interval_ms: float, poll_ms: float, paths: int,
             seconds: float) -> dict:
    """Both nodes with ``impl``; node b starts first and runs longer, so a is always answered."""
    def spawn(ns, role, secs):
        return subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, os.path.abspath(__file__), "node",
             "--impl", impl, "--role", role, "--key-file", key_file, "--interval-ms", str(interval_ms),
             "--poll-ms", str(poll_ms), "--paths", str(paths), "--seconds", str(secs)],
            stdout=subprocess.PIPE, text=True)
    b = spawn(lab.b, "b", seconds + 1.0)
    time.sleep(0.3)
    a = spawn(lab.a, "a", seconds)
    out_a, _ = a.communicate(timeout=seconds + 30)
    b.communicate(timeout=seconds + 30)
    if a.returncode != 0:
        raise RuntimeError(f"{impl} node a failed ({a.returncode})")
    return json.loads(out_a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd")
    node = sub.add_parser("node", help="(internal) run one node inside its namespace")
    node.add_argument("--impl", choices=IMPLS, required=True)
    node.add_argument("--role", choices=("a", "b"), required=True)
    node.add_argument("--key-file", required=True)
    node.add_argument("--interval-ms", type=float, required=True)
    node.add_argument("--poll-ms", type=float, required=True)
    node.add_argument("--paths", type=int, default=2)
    node.add_argument("--seconds", type=float, required=True)
    node.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring window per scenario")
    args = parser.parse_args()
    if args.cmd == "node":
        print(json.dumps(run_node(args)))
        return

    results: dict = {"host": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                              "python": sys.version.split()[0]}, "seconds": args.seconds}
    with tempfile.NamedTemporaryFile(prefix="hanet-bench-key-") as key, \
            labnet.TwoNodeLab.create("bprobe") as lab:
        key.write(os.urandom(32))
        key.flush()
        for impl in IMPLS:
            r = results[impl] = {}
            for interval in (1.0, 10.0):
                r[f"timer_floor_{interval:g}ms"] = timer_floor(impl, interval, args.seconds)
            for interval in (1.0, 10.0):
                r[f"lateness_{interval:g}ms"] = scenario(lab, key.name, impl, interval, interval, 2, args.seconds)
            for poll in (10.0, 1.0):
                r[f"rest_10ms_poll_{poll:g}ms"] = scenario(lab, key.name, impl, 10.0, poll, 2, args.seconds)
            sweep = r["rate_sweep"] = {}
            for us in SWEEP_US:
                sweep[f"{us}us"] = scenario(lab, key.name, impl, us / 1000, 10.0, 1, min(args.seconds, 2.0))
            ok = [s["replies_per_s"] for s in sweep.values() if s["reply_ratio"] >= 0.99]
            r["max_reply_rate_per_s"] = max(ok, default=0)
    report(results)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


def report(results: dict) -> None:
    def row(label, pick):
        print(f"{label:<44}" + "".join(f"{pick(results[impl])!s:>20}" for impl in IMPLS))
    print(f"{'':<44}" + "".join(f"{impl:>20}" for impl in IMPLS))
    for interval in ("1", "10"):
        key = f"timer_floor_{interval}ms"
        for q in ("p50_us", "p99_us", "max_us", "cpu_percent", "cpu_us_per_wakeup"):
            row(f"host timer floor at {interval} ms, {q}", lambda r: r[key][q])
    for interval in ("1", "10"):
        key = f"lateness_{interval}ms"
        for q in ("p50_us", "p99_us", "max_us"):
            row(f"send lateness at {interval} ms, {q}", lambda r: r[key]["send_lateness"][q])
        row(f"  reply ratio at {interval} ms", lambda r: r[key]["reply_ratio"])
        for q in ("p50_us", "p99_us"):
            row(f"  RTT at {interval} ms, {q}", lambda r: r[key]["rtt"][q])
    for poll in ("10", "1"):
        key = f"rest_10ms_poll_{poll}ms"
        row(f"CPU % at rest, 2 paths @10 ms, poll {poll} ms", lambda r: r[key]["cpu_percent"])
        row("  wake-ups/s, CPU us per wake-up", lambda r: f"{r[key]['wakeups_per_s']}, {r[key]['cpu_us_per_wakeup']}")
    for us in SWEEP_US:
        row(f"replies/s at {us} us interval (ratio)",
            lambda r: f"{r['rate_sweep'][f'{us}us']['replies_per_s']} ({r['rate_sweep'][f'{us}us']['reply_ratio']})")
    row("max reply rate with >= 99 % answered", lambda r: r["max_reply_rate_per_s"])


if __name__ == "__main__":
    main()
