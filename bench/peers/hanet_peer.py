"""hanet itself: ``hanet run -c FILE`` in each node namespace, both paths, the identity as service address.

A failure is declared at the ``mono`` stamp of the first "transition" record in the node's event
log whose destination is Failing-Over or All-Paths-Down after the fault. The daemon's state comes
from its control socket (``status``). Unlike bfdd, hanet moves the identity off a failed path, so
the UDP stream between the identities measures recovery without healing the fault.

The bench configuration departs from conf/hanet.toml only where repeated trials need it: flap
damping off (it would rightly keep a path that failed ten times in a minute out of service) and a
shorter failback hold-down, so the identity returns to the primary between trials.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.peers import NODES, Peer, PeerUnavailable
from hanet import labnet

REPO = Path(__file__).resolve().parents[2]
NODE_IDS = {"a": "alpha", "b": "beta"}
PATH_NICS = {"a": ("nic1", "nic3"), "b": ("nic2", "nic4")}
IDENTITY = {"a": "192.0.2.1/24", "b": "192.0.2.2/24"}  # TEST-NET-1
FAILURE_STATES = ("Failing-Over", "All-Paths-Down")
UP_STATE = "Monitoring"  # the identity on the primary path, nothing suspect
FAILBACK_HOLD_MS = 500.0
MIN_INTERVAL_MS = 0.5  # config.py's lower bound for heartbeat.interval_ms
STOP_TIMEOUT_S = 5.0
KEY = b"hanet-bench-shared-heartbeat-key!".hex().encode()  # 33 bytes as hex; the bench's own, never a real one

_running: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_running):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _running.clear()


def hanet_config(node: str, rundir: str, interval_ms: float, multiplier: int,
                 confirm_ms: float | None = None) -> str:
    """Mirrored per node. No peer_mac: the identity's MAC moves with a failover, so the peer is
    known by its node id alone. ``confirm_ms`` None: the default (off)."""
    other = "b" if node == "a" else "a"
    primary, alternate = PATH_NICS[node]
    confirm = "" if confirm_ms is None else f"confirm_ms = {float(confirm_ms)}\n"
    return f"""\
[node]
id = "{NODE_IDS[node]}"
peer = "{NODE_IDS[other]}"

[[path]]
name = "primary"
interface = "{primary}"

[[path]]
name = "alternate"
interface = "{alternate}"

[heartbeat]
interval_ms = {float(interval_ms)}
multiplier = {int(multiplier)}
key_file = "heartbeat.key"
{confirm}
[failback]
policy = "auto"
hold_down_ms = {FAILBACK_HOLD_MS}

[damping]
enabled = false

[identity]
address = "{IDENTITY[node]}"
ipv6 = []
vips = []
routes = []

[eventlog]
path = "{rundir}/events.hlog"

[control]
socket = "{rundir}/control.sock"
"""


@dataclass
class _Node:
    ns: labnet.Netns
    rundir: str
    proc: subprocess.Popen | None = None
    offset: int = 0  # bytes of the log already scanned
    failures: list[int] = field(default_factory=list)  # mono ns of failure transitions

    @property
    def socket(self) -> str:
        return os.path.join(self.rundir, "control.sock")

    @property
    def eventlog(self) -> str:
        return os.path.join(self.rundir, "events.hlog")

    def output_tail(self, lines: int = 5) -> str:
        try:
            with open(os.path.join(self.rundir, "stdout.log"), errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def status(self) -> dict | None:
        from hanet import control
        try:
            reply = control.request(self.socket, "status", timeout=1.0)
        except control.ControlError:
            return None
        if not reply.get("ok"):
            return None
        return reply.get("status", reply)  # the daemon merges STATUS's keys into the response

    def read_log(self) -> None:
        """Collect failure transitions logged since the last read (the log's live file only).

        Reads on from the end of the last intact record: decoding the whole log every few
        milliseconds would take a core away from the daemons under test as the log grows.
        """
        from hanet.eventlog import framing, reader, schema
        try:
            with open(self.eventlog, "rb") as fh:
                fh.seek(self.offset)
                buf = fh.read()
        except FileNotFoundError:
            return
        end = 0
        for entry in reader.decode(self.eventlog, buf, lambda damage: None):
            rec = entry.record
            if rec["k"] == schema.TRANSITION and rec[schema.BODY_KEYS[schema.TRANSITION]]["dst"] in FAILURE_STATES:
                self.failures.append(rec["mono"])
            _, length, _ = framing.HEADER.unpack_from(buf, entry.offset)
            end = entry.offset + framing.HEADER_SIZE + length
        self.offset += end  # a record still being written is read whole next time


class HanetPeer(Peer):
    name = "hanet"
    min_interval_ms = MIN_INTERVAL_MS
    moves_traffic = True
    confirm_ms: float | None = None  # heartbeat.confirm_ms; None: the default (off)

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {}

    def start(self, lab: labnet.TwoNodeLab, interval_ms: float, multiplier: int) -> None:
        try:
            import hanet.cli  # noqa: F401  (the daemon's entry point)
        except ImportError as exc:
            raise PeerUnavailable(f"the hanet daemon is not importable here: {exc}") from exc
        env = dict(os.environ, PYTHONPATH=str(REPO))
        try:
            for node, ns in (("a", lab.a), ("b", lab.b)):
                rundir = tempfile.mkdtemp(prefix=f"hanet-bench-hanet-{node}-")
                self.nodes[node] = n = _Node(ns, rundir)
                with open(os.path.join(rundir, "heartbeat.key"), "wb") as f:
                    f.write(KEY)
                os.chmod(os.path.join(rundir, "heartbeat.key"), 0o600)
                conf = os.path.join(rundir, "hanet.toml")
                with open(conf, "w") as f:
                    f.write(hanet_config(node, rundir, interval_ms, multiplier, self.confirm_ms))
                with open(os.path.join(rundir, "stdout.log"), "w") as out:
                    n.proc = subprocess.Popen(
                        ["ip", "netns", "exec", ns.name, sys.executable, "-c",
                         "import sys; from hanet.cli import main; sys.exit(main())", "run", "-c", conf],
                        stdout=out, stderr=subprocess.STDOUT, env=env)
                _running.add(n.proc.pid)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc and node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(STOP_TIMEOUT_S)
            if node.proc:
                _running.discard(node.proc.pid)
            shutil.rmtree(node.rundir, ignore_errors=True)
        self.nodes = {}

    def _up(self, node: _Node) -> bool:
        status = node.status()
        if not status or status.get("state") != UP_STATE:
            return False
        # Every path, not only the primary: right after a failback the path the identity left is
        # heard afresh (three replies), and a fault then would find no other path to tell a dead
        # path from a stopped peer. A fault is timed from the steady state.
        paths = status.get("paths") or []
        return bool(paths) and all(p.get("health") == "up" for p in paths)

    def wait_up(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.proc.poll() is not None:
                    raise PeerUnavailable(f"hanet in {node.ns.name} exited ({node.proc.returncode}): "
                                          f"{node.output_tail()}")
            if all(self._up(n) for n in self.nodes.values()):
                return True
            time.sleep(0.02)
        return False

    def detection_time_after(self, t_fault_ns: int, timeout: float, node: str = "a") -> int | None:
        n = self.nodes[node]
        deadline = time.monotonic() + timeout
        while True:
            n.read_log()
            for mono in n.failures:
                if mono >= t_fault_ns:
                    return mono
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)

    def pids(self) -> dict[str, list[int]]:
        return {name: [n.proc.pid] for name, n in self.nodes.items() if name in NODES}

    def service_addresses(self) -> tuple[str, str]:
        return IDENTITY["a"].split("/")[0], IDENTITY["b"].split("/")[0]


PEER = HanetPeer
