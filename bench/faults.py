"""Timed fault injection for the detection benchmark.

Each node namespace gets one persistent worker process (``python bench/faults.py serve`` under
``ip netns exec``) that keeps a pyroute2 IPRoute and a libnftables context open, so a fault costs
one netlink transaction rather than a process start. The worker stamps CLOCK_MONOTONIC
immediately before and after the kernel call and returns both; CLOCK_MONOTONIC is shared by every
namespace on the host, so the stamps compare with the detectors' own.

Fault time:
- nftables faults: the *after* stamp of the last kernel call that put the fault in force (the
  fault is certainly in force then); the injection cost (from the first before-stamp) bounds how
  much earlier it may already have bitten.
- carrier faults: setting a veth end admin-down takes 1-3 ms in the kernel and the peer's carrier
  drops somewhere inside that call, so neither stamp is the fault time. Node a's worker reads
  a.nic1's carrier bit (ETHTOOL_GLINK ioctl, a few us) every 50 us from before the call until
  it reads 0; the fault time is the midpoint of the last read that saw
  carrier and the first that did not, and half that interval is its uncertainty.
Detections are looked for from ``t_start_ns`` (the first before-stamp), the earliest the fault
may have begun.

Fault kinds (the observer is node a, on the primary path a.nic1 <-> b.nic2):
  carrier       b.nic2 set admin-down, so a.nic1 loses carrier
  blackhole     nftables netdev ingress drop on a.nic1 and b.nic2, carrier stays up
  oneway        ingress drop on b.nic2 only: a -> b is lost, b -> a still flows
  busy-carrier  carrier, applied ~20 ms after an unrelated link change (a spare veth pair in a
                third namespace goes down), so the kernel's host-wide linkwatch batching is engaged
"""
from __future__ import annotations

import array
import ctypes
import fcntl
import json
import socket
import struct
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hanet import labnet  # noqa: E402

PRIMARY_A, PRIMARY_B = "nic1", "nic2"
SPARE_IFS = ("spare0", "spare1")
BUSY_LEAD_NS = 20_000_000  # the unrelated link change comes this long before the fault
QUIET_S = 2.0  # linkwatch batches at most once a second; 2 s without link changes is a quiet host
WORKER_TIMEOUT_S = 10.0


def _table(ifname: str) -> str:
    return f"hanet_bench_{ifname}".replace("-", "_")


def drop_table_script(ifname: str) -> str:
    """A netdev ingress chain on ``ifname`` that accepts everything until a drop rule is added."""
    table = _table(ifname)
    return (f'table netdev {table} {{\n  chain ingress {{\n'
            f'    type filter hook ingress device "{ifname}" priority -500; policy accept;\n  }}\n}}\n')


def drop_on(ifname: str) -> str:
    return f"add rule netdev {_table(ifname)} ingress drop\n"


def drop_off(ifname: str) -> str:
    return f"flush chain netdev {_table(ifname)} ingress\n"


CARRIER_WATCH_TIMEOUT_NS = 200_000_000
WATCH_PERIOD_S = 50e-6
SIOCETHTOOL = 0x8946
ETHTOOL_GLINK = 0x0000000A


# --------------------------------------------------------------------------- worker (in a netns)
class _CarrierReader:
    """The carrier bit of one interface via ETHTOOL_GLINK: current at once, unlike netlink."""

    def __init__(self, ifname: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.value = array.array("I", [ETHTOOL_GLINK, 0])  # struct ethtool_value {cmd, data}
        address, _ = self.value.buffer_info()
        self.ifreq = bytearray(struct.pack("16sP", ifname.encode(), address).ljust(40, b"\0"))

    def up(self) -> bool:
        fcntl.ioctl(self.sock, SIOCETHTOOL, self.ifreq)
        return self.value[1] != 0

    def close(self) -> None:
        self.sock.close()


def _watch_carrier_loss(ifname: str) -> tuple[int, int, str]:
    """Poll ``ifname``'s carrier every WATCH_PERIOD_S until it is lost; returns (last read that saw
    carrier, first read that did not, error). Sleeping between reads leaves the CPU to the kernel
    call and the detectors under test; a preempted watcher widens the bracket, which is reported."""
    reader = _CarrierReader(ifname)
    try:
        print(json.dumps({"ok": True, "armed": True}), flush=True)
        last_up = time.monotonic_ns()
        deadline = last_up + CARRIER_WATCH_TIMEOUT_NS
        while True:
            up = reader.up()
            now = time.monotonic_ns()
            if not up:
                return last_up, now, ""
            if now > deadline:
                return last_up, now, f"{ifname} kept carrier for {CARRIER_WATCH_TIMEOUT_NS // 1_000_000} ms"
            last_up = now
            time.sleep(WATCH_PERIOD_S)
    finally:
        reader.close()


class _Nft:
    """libnftables in-process: one context, one netlink socket, opened once."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1")
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, script: bytes) -> str:
        """Returns "" on success, else nft's error text."""
        if self.lib.nft_run_cmd_from_buffer(self.ctx, script) == 0:
            return ""
        return (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace").strip() or "nft failed"


def serve() -> None:
    """Read JSON requests on stdin, one a line; answer {"ok", "t0", "t1"[, "error"]} on stdout."""
    from pyroute2 import IPRoute

    nft = _Nft()
    ipr = IPRoute()
    ifindex: dict[str, int] = {}
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        error = ""
        if req["op"] == "nft":
            script = req["script"].encode()
            t0 = time.monotonic_ns()
            error = nft.run(script)
            t1 = time.monotonic_ns()
        elif req["op"] == "link":
            name = req["ifname"]
            if name not in ifindex:
                ifindex[name] = ipr.link_lookup(ifname=name)[0]
            state = "up" if req["up"] else "down"
            t0 = time.monotonic_ns()
            ipr.link("set", index=ifindex[name], state=state)
            t1 = time.monotonic_ns()
        elif req["op"] == "watch-carrier-loss":
            t0, t1, error = _watch_carrier_loss(req["ifname"])
        else:
            t0 = t1 = time.monotonic_ns()
            error = f"unknown op {req['op']!r}"
        print(json.dumps({"ok": not error, "t0": t0, "t1": t1, "error": error}), flush=True)
    ipr.close()


# --------------------------------------------------------------------------- controller side
class FaultError(RuntimeError):
    pass


class NsWorker:
    """The persistent fault worker inside one namespace."""

    def __init__(self, ns: labnet.Netns) -> None:
        self.ns = ns
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, str(Path(__file__).resolve()), "serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self._read()  # the ready line

    def send(self, req: dict) -> None:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise FaultError(f"fault worker in {self.ns.name} exited ({self.proc.poll()})")
        reply = json.loads(line)
        if not reply["ok"]:
            raise FaultError(f"{self.ns.name}: {reply['error']}")
        return reply

    def call(self, req: dict) -> tuple[int, int]:
        self.send(req)
        reply = self._read()
        return reply["t0"], reply["t1"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(WORKER_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WORKER_TIMEOUT_S)


@dataclass(frozen=True)
class Injection:
    t_fault_ns: int  # the fault time (see the module docstring)
    t_start_ns: int  # the first before-stamp: the earliest the fault may have begun
    cost_ns: int  # duration of the kernel call(s) that applied the fault
    t_prior_ns: int | None = None  # busy-carrier: after-stamp of the unrelated link change
    uncertainty_ns: int | None = None  # carrier faults: half the carrier reads' bracket


def _parallel(calls: list[tuple[NsWorker, dict]]) -> tuple[int, int]:
    """Issue requests to several workers at once; returns (first t0, last t1)."""
    for worker, req in calls:
        worker.send(req)
    stamps = [worker._read() for worker, _ in calls]
    return min(s["t0"] for s in stamps), max(s["t1"] for s in stamps)


class Injector:
    """Applies and heals faults on a TwoNodeLab's primary path, with a spare link for busy-host runs."""

    KINDS = ("carrier", "blackhole", "oneway", "busy-carrier")

    def __init__(self, lab: labnet.TwoNodeLab) -> None:
        self.lab = lab
        self.spare: labnet.Netns | None = None
        self.workers: dict[str, NsWorker] = {}
        self.last_link_change_ns = 0
        try:
            self.spare = labnet.Netns.create("spare")
            labnet.veth(self.spare, SPARE_IFS[0], self.spare, SPARE_IFS[1])
            self.workers = {"a": NsWorker(lab.a), "b": NsWorker(lab.b), "spare": NsWorker(self.spare)}
            self.workers["a"].call({"op": "nft", "script": drop_table_script(PRIMARY_A)})
            self.workers["b"].call({"op": "nft", "script": drop_table_script(PRIMARY_B)})
        except BaseException:
            self.close()
            raise
        self.last_link_change_ns = time.monotonic_ns()

    def wait_quiet(self, deadline_s: float = QUIET_S + 1.0) -> None:
        """Let QUIET_S pass since this injector's last link change (bounded by its own arithmetic)."""
        remaining = (self.last_link_change_ns + int(QUIET_S * 1e9) - time.monotonic_ns()) / 1e9
        if remaining > 0:
            time.sleep(min(remaining, deadline_s))

    def _link(self, node: str, ifname: str, up: bool) -> tuple[int, int]:
        t0, t1 = self.workers[node].call({"op": "link", "ifname": ifname, "up": up})
        self.last_link_change_ns = t1
        return t0, t1

    def _carrier_loss(self, prior_ns: int | None = None) -> Injection:
        """b.nic2 admin-down, timed by a.nic1's carrier bit as node a's worker sees it."""
        watcher = self.workers["a"]
        watcher.send({"op": "watch-carrier-loss", "ifname": PRIMARY_A})
        watcher._read()  # armed: spinning from now on
        t0, t1 = self._link("b", PRIMARY_B, up=False)
        reply = watcher._read()
        last_up, first_down = reply["t0"], reply["t1"]
        return Injection((last_up + first_down) // 2, t0, t1 - t0, t_prior_ns=prior_ns,
                         uncertainty_ns=(first_down - last_up) // 2)

    def apply(self, kind: str) -> Injection:
        if kind == "carrier":
            self.wait_quiet()
            return self._carrier_loss()
        if kind == "blackhole":
            t0, t1 = _parallel([(self.workers["a"], {"op": "nft", "script": drop_on(PRIMARY_A)}),
                                (self.workers["b"], {"op": "nft", "script": drop_on(PRIMARY_B)})])
            return Injection(t1, t0, t1 - t0)
        if kind == "oneway":
            t0, t1 = self.workers["b"].call({"op": "nft", "script": drop_on(PRIMARY_B)})
            return Injection(t1, t0, t1 - t0)
        if kind == "busy-carrier":
            _, prior = self._link("spare", SPARE_IFS[0], up=False)
            pause = (prior + BUSY_LEAD_NS - time.monotonic_ns()) / 1e9
            if pause > 0:
                time.sleep(pause)
            return self._carrier_loss(prior_ns=prior)
        raise FaultError(f"unknown fault kind {kind!r}; known: {', '.join(self.KINDS)}")

    def heal(self, kind: str) -> None:
        if kind in ("carrier", "busy-carrier"):
            self._link("b", PRIMARY_B, up=True)
            if kind == "busy-carrier":
                self._link("spare", SPARE_IFS[0], up=True)
        elif kind == "blackhole":
            _parallel([(self.workers["a"], {"op": "nft", "script": drop_off(PRIMARY_A)}),
                       (self.workers["b"], {"op": "nft", "script": drop_off(PRIMARY_B)})])
        elif kind == "oneway":
            self.workers["b"].call({"op": "nft", "script": drop_off(PRIMARY_B)})

    def close(self) -> None:
        for worker in self.workers.values():
            worker.close()
        self.workers = {}
        if self.spare is not None:
            self.spare.delete()
            self.spare = None


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    serve()
