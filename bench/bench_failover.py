"""Failover time: from a carrier loss to the identity being configured and reachable on the
alternate NIC, in a two-namespace lab (node a moves its identity from nic1 to nic3; node b is the
peer and injects the faults).

Per trial:
  t_fault      the peer sets its end of the primary cable (b.nic2) down, from another process in
               its own namespace; stamped just before the request (CLOCK_MONOTONIC is shared)
  t_detect     node a sees nic1's carrier gone (ETHTOOL_GLINK ioctl, polled every poll_ms)
  t_configured NetOps has run the kernel actions of the move (disable, plumb, configure, enable,
               announce (first round), routes)
  t_reachable  an ICMP echo reply from the peer to the service address arrives on nic3

Scenarios: "quiet" (nothing else changes on the host), and "after-link-change" (another link on
the peer flaps 1 ms before the fault; it delays kernel link notifications, not a carrier poll).
Also the NetOps sequence alone, with no fault, back and forth. Prints a table; --json FILE writes
every figure. Run as root from the repository root:

    PYTHONPATH=. python bench/bench_failover.py --trials 60 --json failover.json
"""
from __future__ import annotations

import argparse
import array
import fcntl
import json
import os
import platform
import random
import select
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lab"))

from hanet import model  # noqa: E402
from hanet.labnet import TwoNodeLab  # noqa: E402
from hanet.machine import Params, planned_move  # noqa: E402
from hanet.netops import NetOps  # noqa: E402
from nsrun import PEER_ADDRESSES, in_netns, lab_config, setup_peer  # noqa: E402

SIOCETHTOOL = 0x8946
ETHTOOL_GLINK = 0x0000000A
IP_FREEBIND = 15
SERVICE = "192.0.2.1"
IDENTITY_MAC = "02:00:00:00:0a:01"
OWN_MACS = (IDENTITY_MAC, "02:00:00:00:0a:02")
REACH_TIMEOUT_S = 1.0
DETECT_TIMEOUT_S = 2.0

# Runs in the peer's namespace: one line in ("down DELAY_US", "up 0", "flap-down DELAY_US"), one
# line out with the monotonic time taken just before the fault request. The delay puts the fault
# at a random phase of node a's carrier poll. The requests are encoded beforehand and
# sent raw, so the stamp is within tens of microseconds of the kernel acting on it.
INJECTOR = r"""
import socket, sys, time
from pyroute2 import IPBatch, IPRoute
ipr = IPRoute()
nic, spare = ipr.link_lookup(ifname=sys.argv[1])[0], ipr.link_lookup(ifname=sys.argv[2])[0]
def encode(index, state):
    ipb = IPBatch()
    ipb.link("set", index=index, state=state)
    data = bytes(ipb.batch)
    ipb.close()
    return data
msgs = {(i, st): encode(i, st) for i in (nic, spare) for st in ("up", "down")}
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
def link(index, state):
    sock.send(msgs[(index, state)])
    sock.recv(65536)  # the ack
for line in sys.stdin:
    cmd, delay_us = line.split()
    if cmd == "flap-down":
        link(spare, "down")
        link(spare, "up")
        time.sleep(0.001)
    time.sleep(int(delay_us) / 1e6)
    t = time.monotonic_ns()
    link(nic, "up" if cmd == "up" else "down")
    print(t, flush=True)
"""


class CarrierPoll:
    """ETHTOOL_GLINK on one NIC: the carrier bit as the driver has it now."""

    def __init__(self, ifname: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.value = array.array("I", [ETHTOOL_GLINK, 0])
        self.ifreq = struct.pack("16sQ16x", ifname.encode(), self.value.buffer_info()[0])

    def carrier(self) -> bool:
        fcntl.ioctl(self.sock.fileno(), SIOCETHTOOL, self.ifreq)
        return bool(self.value[1])

    def wait(self, want: bool, poll_s: float) -> int:
        deadline = time.monotonic() + DETECT_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.carrier() == want:
                return time.monotonic_ns()
            time.sleep(poll_s)
        raise TimeoutError(f"carrier never became {want}")


class Echo:
    """ICMP echo from the service address to the peer (out of and back on ``ifname`` if given)."""

    def __init__(self, ifname: str, peer: str):
        self.peer = peer
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        if ifname:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        # The service address is not on this NIC yet when the socket is made.
        self.sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        self.sock.bind((SERVICE, 0))
        self.ident = os.getpid() & 0xFFFF
        self.seq = 0

    def _request(self) -> bytes:
        self.seq = (self.seq + 1) & 0xFFFF
        head = struct.pack("!BBHHH", 8, 0, 0, self.ident, self.seq)
        total = sum(struct.unpack("!4H", head))
        total = (total & 0xFFFF) + (total >> 16)
        return struct.pack("!BBHHH", 8, 0, ~total & 0xFFFF, self.ident, self.seq)

    def reach(self) -> int | None:
        """Monotonic ns of the first reply; None if none within REACH_TIMEOUT_S."""
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while time.monotonic() < deadline:
            self.sock.sendto(self._request(), (self.peer, 0))
            resend = time.monotonic() + 0.005
            while time.monotonic() < min(resend, deadline):
                if not select.select([self.sock], [], [], 0.001)[0]:
                    continue
                pkt = self.sock.recv(2048)
                ihl = (pkt[0] & 0x0F) * 4
                kind, _, _, ident, seq = struct.unpack_from("!BBHHH", pkt, ihl)
                if kind == 0 and ident == self.ident and seq == self.seq:
                    return time.monotonic_ns()
        return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(pct(values, 50), 3), "p99_ms": round(pct(values, 99), 3),
            "min_ms": round(min(values), 3), "max_ms": round(max(values), 3)}


def run_sequence(ops: NetOps, actions, per_action: dict[str, list[float]]) -> dict[str, float]:
    """Execute ``actions``; returns each action's time in ms and appends it to ``per_action``."""
    took = {}
    for act in actions:
        t = time.perf_counter_ns()
        out = ops.execute(act)
        took[act.type] = (time.perf_counter_ns() - t) / 1e6
        per_action.setdefault(act.type, []).append(took[act.type])
        if not isinstance(out, model.ActionDone):
            raise RuntimeError(f"{act.type} failed: {out}")
    return took


def trials(lab, ops, injector, scenario: str, n: int, poll_s: float, rng: random.Random) -> dict:
    cfg = ops.cfg
    failover = planned_move(Params.from_config(cfg), OWN_MACS, 0, 1)
    failback = planned_move(Params.from_config(cfg), OWN_MACS, 1, 0)
    with in_netns(lab.a.name):
        poll = CarrierPoll("nic1")
        via_alt = Echo("nic3", PEER_ADDRESSES["nic4"].split("/")[0])
        # Any NIC: with both cables up the peer may answer over either (two connected routes).
        via_primary = Echo("", PEER_ADDRESSES["nic2"].split("/")[0])
    rows, failures = [], 0
    per_action: dict[str, list[float]] = {}
    for _ in range(n):
        cmd = "flap-down" if scenario == "after-link-change" else "down"
        injector.stdin.write(f"{cmd} {rng.randrange(int(2 * poll_s * 1e6) + 1)}\n")
        injector.stdin.flush()
        t_detect = poll.wait(False, poll_s)
        run_sequence(ops, failover, per_action)
        t_configured = time.monotonic_ns()
        t_reachable = via_alt.reach()
        t_fault = int(injector.stdout.readline())
        if t_reachable is None:
            failures += 1
        else:
            rows.append({"detect_ms": (t_detect - t_fault) / 1e6,
                         "configured_ms": (t_configured - t_fault) / 1e6,
                         "reachable_ms": (t_reachable - t_fault) / 1e6,
                         "sequence_ms": (t_configured - t_detect) / 1e6})
        # Back to the primary, as the next trial starts from there.
        injector.stdin.write("up 0\n")
        injector.stdin.flush()
        injector.stdout.readline()
        poll.wait(True, poll_s)
        run_sequence(ops, failback, {})
        if via_primary.reach() is None:
            raise RuntimeError("the peer does not reach the identity on the primary after failback")
        time.sleep(0.02)  # let the announcer's later rounds and neighbour updates settle
    out = {key: summary([r[key] for r in rows]) for key in ("detect_ms", "configured_ms", "reachable_ms", "sequence_ms")}
    out["unreachable"] = failures
    out["per_action"] = {k: summary(v) for k, v in per_action.items()}
    out["samples"] = rows
    return out


def sequence_only(lab, ops, n: int) -> dict:
    """The move's kernel actions alone, back and forth between two up NICs; no fault."""
    forth = planned_move(Params.from_config(ops.cfg), OWN_MACS, 0, 1)
    back = planned_move(Params.from_config(ops.cfg), OWN_MACS, 1, 0)
    per_action: dict[str, list[float]] = {}
    totals, five = [], []
    for _ in range(n):
        for seq in (forth, back):
            t = time.perf_counter_ns()
            took = run_sequence(ops, seq, per_action)
            totals.append((time.perf_counter_ns() - t) / 1e6)
            # The five netlink steps, without the announcement's first round.
            five.append(sum(ms for kind, ms in took.items() if kind != "nic.announce"))
    return {"six_actions": summary(totals), "five_netlink_actions": summary(five),
            "per_action": {k: summary(v) for k, v in per_action.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=60, help="trials per scenario (at least 50 for a p99)")
    ap.add_argument("--poll-ms", type=float, default=None, help="carrier poll period (default: link.poll_interval_ms)")
    ap.add_argument("--json", metavar="FILE", help="write all figures here")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault phase jitter")
    args = ap.parse_args(argv)

    cfg = lab_config()
    poll_ms = cfg.link.poll_interval_ms if args.poll_ms is None else args.poll_ms
    rng = random.Random(args.seed)
    result = {"bench": "failover", "trials": args.trials, "poll_ms": poll_ms, "seed": args.seed,
              "announce": {"count": cfg.failover.announce_count, "interval_ms": cfg.failover.announce_interval_ms},
              "host": {"kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count(),
                       "loadavg_before": os.getloadavg()},
              "scenarios": {}}
    with TwoNodeLab.create("bfo") as lab:
        setup_peer(lab)
        lab.b.ip("link", "add", "spare0", "type", "veth", "peer", "name", "spare1")
        lab.b.ip("link", "set", "spare1", "up")
        with in_netns(lab.a.name):
            ops = NetOps(cfg)
        injector = subprocess.Popen(["ip", "netns", "exec", lab.b.name, sys.executable, "-c", INJECTOR, "nic2", "spare0"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            both = planned_move(Params.from_config(cfg), OWN_MACS, 0, 1) + planned_move(Params.from_config(cfg), OWN_MACS, 1, 0)
            ops.prepare(both)
            run_sequence(ops, planned_move(Params.from_config(cfg), OWN_MACS, 1, 0), {})
            result["sequence_only"] = sequence_only(lab, ops, args.trials)
            for scenario in ("quiet", "after-link-change"):
                result["scenarios"][scenario] = trials(lab, ops, injector, scenario, args.trials, poll_ms / 1000, rng)
        finally:
            injector.stdin.close()
            injector.wait(timeout=10)
            ops.close()

    result["host"]["loadavg_after"] = os.getloadavg()
    seq = result["sequence_only"]
    print(f"NetOps sequence alone ({2 * args.trials} moves): 6 actions p50 {seq['six_actions']['p50_ms']} ms "
          f"p99 {seq['six_actions']['p99_ms']} ms; 5 netlink actions p50 {seq['five_netlink_actions']['p50_ms']} ms "
          f"p99 {seq['five_netlink_actions']['p99_ms']} ms (load average {result['host']['loadavg_before'][0]:.2f})")
    for name, s in result["scenarios"].items():
        print(f"{name:>18}: " + "  ".join(f"{k[:-3]} p50 {s[k]['p50_ms']} / p99 {s[k]['p99_ms']} ms"
                                          for k in ("detect_ms", "configured_ms", "reachable_ms"))
              + f"  unreachable {s['unreachable']}/{args.trials}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
