"""FRR bfdd, standalone (no zebra), one instance per node, one BFD session per path.

bfdd needs IP addresses on the paths, so the adapter puts TEST-NET /30s on the lab NICs. A session
going down logs ``state-change: [... peer:IP ...] up -> down`` stamped with the wall clock to the
microsecond (``log timestamp precision 6``); the adapter converts that stamp to CLOCK_MONOTONIC
with ``time.time_ns() - time.monotonic_ns()`` sampled at the moment of each lookup (the minimum of
a few back-to-back samples), so only the wall clock's slew within one trial adds error.

Being standalone, bfdd does not watch carrier: it declares a path down only when control packets
stop (or the remote says Down), never because a NIC lost carrier.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from bench.peers import NODES, NotSupported, Peer, PeerUnavailable
from hanet import labnet

BFDD = "/usr/lib/frr/bfdd"
VTYSH = "vtysh"
MIN_INTERVAL_MS = 10
# (a's NIC, a's address, b's NIC, b's address) per path; TEST-NET-2 and TEST-NET-3.
PATHS = (("nic1", "198.51.100.1", "nic2", "198.51.100.2"),
         ("nic3", "203.0.113.1", "nic4", "203.0.113.2"))
PREFIXLEN = 30
STAMP_RE = re.compile(r"^(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) ")
STOP_TIMEOUT_S = 5.0

_running: set[int] = set()  # bfdd pids still alive, killed at interpreter exit whatever happened


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_running):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _running.clear()


def wall_to_mono_offset_ns() -> int:
    """time.time_ns() - time.monotonic_ns(), from the tightest of five back-to-back samples."""
    best = None
    for _ in range(5):
        m0 = time.monotonic_ns()
        w = time.time_ns()
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, w - (m0 + m1) // 2)
    return best[1]


def parse_stamp_ns(line: str) -> int | None:
    """The wall-clock ns of an FRR log line stamped 'YYYY/MM/DD HH:MM:SS.uuuuuu' in local time."""
    m = STAMP_RE.match(line)
    if not m:
        return None
    y, mo, d, h, mi, s, us = (int(g) for g in m.groups())
    seconds = int(time.mktime((y, mo, d, h, mi, s, 0, 0, -1)))
    return seconds * 1_000_000_000 + us * 1000


def bfdd_config(log_file: str, my_ips: list[str], peer_ips: list[str], interval_ms: float, multiplier: int) -> str:
    lines = ["log timestamp precision 6", f"log file {log_file} debugging", "debug bfd peer", "!", "bfd"]
    for mine, peer in zip(my_ips, peer_ips):
        lines += [f" peer {peer} local-address {mine}",
                  f"  detect-multiplier {multiplier}",
                  f"  receive-interval {int(interval_ms)}",
                  f"  transmit-interval {int(interval_ms)}",
                  " !"]
    return "\n".join(lines + ["!", ""])


@dataclass
class _Node:
    ns: labnet.Netns
    rundir: str
    peer_primary: str  # the primary path's remote address, as bfdd names the session
    proc: subprocess.Popen | None = None
    log_pos: int = 0
    down_stamps: list[int] = field(default_factory=list)  # wall ns of primary-session up -> down

    @property
    def log_file(self) -> str:
        return os.path.join(self.rundir, "bfdd.log")

    @property
    def pidfile(self) -> str:
        return os.path.join(self.rundir, "bfdd.pid")

    def read_log(self) -> None:
        """Collect new primary-session down transitions from the log (lines written since last read)."""
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self.log_pos)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # leave a torn last line for the next read
        self.log_pos += end
        marker = f"peer:{self.peer_primary} "
        for raw in data[:end].decode(errors="replace").splitlines():
            if "state-change" in raw and "up -> down" in raw and marker in raw:
                stamp = parse_stamp_ns(raw)
                if stamp is not None:
                    self.down_stamps.append(stamp)

    def peers_json(self) -> list[dict]:
        proc = subprocess.run([VTYSH, "--vty_socket", self.rundir, "-d", "bfdd", "-c", "show bfd peers json"],
                              capture_output=True, text=True, timeout=10)
        try:
            return json.loads(proc.stdout) if proc.returncode == 0 else []
        except ValueError:
            return []


class BfddPeer(Peer):
    name = "bfdd"
    min_interval_ms = MIN_INTERVAL_MS
    moves_traffic = False

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}

    def start(self, lab: labnet.TwoNodeLab, interval_ms: float, multiplier: int) -> None:
        if interval_ms < MIN_INTERVAL_MS:
            raise NotSupported(f"bfdd's minimum interval is {MIN_INTERVAL_MS} ms")
        if not os.access(BFDD, os.X_OK) or shutil.which(VTYSH) is None:
            raise PeerUnavailable(f"{BFDD} or {VTYSH} not installed (Debian package frr)")
        for if_a, ip_a, if_b, ip_b in PATHS:
            lab.a.ip("addr", "replace", f"{ip_a}/{PREFIXLEN}", "dev", if_a)
            lab.b.ip("addr", "replace", f"{ip_b}/{PREFIXLEN}", "dev", if_b)
        ips = {"a": [p[1] for p in PATHS], "b": [p[3] for p in PATHS]}
        try:
            for node, ns in (("a", lab.a), ("b", lab.b)):
                other = "b" if node == "a" else "a"
                rundir = tempfile.mkdtemp(prefix=f"hanet-bench-bfdd-{node}-")
                shutil.chown(rundir, "frr", "frr")  # bfdd drops privileges to frr and writes here
                self.nodes[node] = n = _Node(ns, rundir, ips[other][0])
                conf = os.path.join(rundir, "bfdd.conf")
                with open(conf, "w") as f:
                    f.write(bfdd_config(n.log_file, ips[node], ips[other], interval_ms, multiplier))
                n.proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns.name, BFDD, "-f", conf, "-i", n.pidfile, "--vty_socket", rundir,
                     "--bfdctl", os.path.join(rundir, "bfdd.sock"), "-z", os.path.join(rundir, "no-zebra.api"),
                     "-P", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                _running.add(n.proc.pid)  # `ip netns exec` execs bfdd: same pid
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes.values():
            pids = {node.proc.pid} if node.proc else set()
            try:
                with open(node.pidfile) as f:
                    pids.add(int(f.read().strip()))
            except (FileNotFoundError, ValueError):
                pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if node.proc:
                try:
                    node.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(STOP_TIMEOUT_S)
            _running.difference_update(pids)
            shutil.rmtree(node.rundir, ignore_errors=True)
        self.nodes = {}

    def _primary_status(self, node: _Node) -> str:
        for peer in node.peers_json():
            if peer.get("peer") == node.peer_primary:
                return peer.get("status", "")
        return ""

    def wait_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.proc.poll() is not None:
                    raise PeerUnavailable(f"bfdd in {node.ns.name} exited ({node.proc.returncode})")
            if all(self._primary_status(n) == "up" for n in self.nodes.values()):
                return True
            time.sleep(0.05)
        return False

    def detection_time_after(self, t_fault_ns: int, timeout: float, node: str = "a") -> int | None:
        n = self.nodes[node]
        deadline = time.monotonic() + timeout
        while True:
            n.read_log()
            offset = wall_to_mono_offset_ns()
            for stamp in n.down_stamps:
                if stamp - offset >= t_fault_ns:
                    return stamp - offset
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def pids(self) -> dict[str, list[int]]:
        return {name: [n.proc.pid] for name, n in self.nodes.items() if name in NODES}


PEER = BfddPeer
