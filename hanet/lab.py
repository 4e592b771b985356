"""``hanet lab``: two namespaced nodes running hanet, fault injection, and the one-minute demo.

Node alpha has nic1 (primary) and nic3 (alternate); node beta has nic2 and nic4; nic1<->nic2 and
nic3<->nic4 are veth "crossover cables". Each node runs its own daemon with its own config, event
log and control socket under the lab directory. All addresses are TEST-NET.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from . import labnet

STATE_FILE = "lab.json"
DEFAULT_ROOT = "/run/hanet-lab"
FAULT_KINDS = ("carrier", "blackhole", "oneway", "loss", "flap")
STABLE_STATES = ("Monitoring", "Alternate-Active")


@dataclass(frozen=True)
class NodePlan:
    node: str
    peer: str
    nics: tuple[str, str]
    address: str
    ipv6: str
    vip: str
    route_to: str
    route_via: str


ALPHA = NodePlan("alpha", "beta", ("nic1", "nic3"), "192.0.2.1/24", "2001:db8::1/64", "192.0.2.101/24",
                 "203.0.113.0/24", "192.0.2.2")
BETA = NodePlan("beta", "alpha", ("nic2", "nic4"), "192.0.2.2/24", "2001:db8::2/64", "192.0.2.102/24",
                "198.51.100.0/24", "192.0.2.1")


def node_config(plan: NodePlan, workdir: str, interval_ms: float, multiplier: int,
                overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """A node's configuration file; ``overrides`` replaces keys table by table."""
    tables: dict[str, dict[str, Any]] = {
        "node": {"id": plan.node, "peer": plan.peer},
        "heartbeat": {"interval_ms": float(interval_ms), "multiplier": multiplier, "recover_count": 3,
                      "key_file": "heartbeat.key"},
        "link": {"poll_interval_ms": 1.0},
        "failover": {"announce_count": 3},
        "failback": {"policy": "auto", "hold_down_ms": 1500.0},
        "identity": {"address": plan.address, "ipv6": [plan.ipv6], "vips": [plan.vip],
                     "routes": [{"to": plan.route_to, "via": plan.route_via}]},
        "eventlog": {"path": f"{workdir}/{plan.node}.hlog"},
        "control": {"socket": f"{workdir}/{plan.node}.sock"},
    }
    for table, values in (overrides or {}).items():
        tables.setdefault(table, {}).update(values)
    paths = [{"name": "primary", "interface": plan.nics[0]}, {"name": "alternate", "interface": plan.nics[1]}]
    lines = []
    for name, values in tables.items():
        lines += [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items()), ""]
        if name == "node":
            for p in paths:
                lines += ["[[path]]", *(f"{k} = {_toml(v)}" for k, v in p.items()), ""]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


@dataclass
class Lab:
    """A running (or runnable) lab: namespaces, configs, daemons."""
    workdir: str
    ns: dict[str, str]                      # node -> namespace name
    pids: dict[str, int] = field(default_factory=dict)
    interval_ms: float = 10.0
    multiplier: int = 3
    switch: str | None = None                # the bridge namespace of a switched lab

    # ------------------------------------------------------------------ build and tear down
    @classmethod
    def create(cls, workdir: str | None = None, persistent: bool = False, interval_ms: float = 10.0,
               multiplier: int = 3, overrides: dict[str, dict[str, Any]] | None = None,
               switched: bool = False) -> "Lab":
        """``overrides`` changes both nodes' configuration, table by table."""
        workdir = workdir or tempfile.mkdtemp(prefix="hanet-lab-")
        os.makedirs(workdir, exist_ok=True)
        topo = labnet.TwoNodeLab.create("lab", persistent=persistent, switched=switched)
        lab = cls(workdir, {"alpha": topo.a.name, "beta": topo.b.name}, interval_ms=interval_ms,
                  multiplier=multiplier, switch=topo.switch.name if topo.switch else None)
        try:
            lab._write_configs(overrides)
            for plan in (ALPHA, BETA):
                lab._plumb_identity(plan)
            lab.save()
        except Exception:
            lab.destroy()
            raise
        return lab

    @classmethod
    def load(cls, workdir: str) -> "Lab":
        with open(os.path.join(workdir, STATE_FILE)) as fh:
            data = json.load(fh)
        return cls(**data)

    def save(self) -> None:
        with open(os.path.join(self.workdir, STATE_FILE), "w") as fh:
            json.dump({"workdir": self.workdir, "ns": self.ns, "pids": self.pids, "switch": self.switch,
                       "interval_ms": self.interval_ms, "multiplier": self.multiplier}, fh)

    def _write_configs(self, overrides: dict[str, dict[str, Any]] | None) -> None:
        key = os.path.join(self.workdir, "heartbeat.key")
        with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        for plan in (ALPHA, BETA):
            with open(self.config_path(plan.node), "w") as fh:
                fh.write(node_config(plan, self.workdir, self.interval_ms, self.multiplier, overrides))

    def _plumb_identity(self, plan: NodePlan) -> None:
        """As an administrator would: the identity starts on the primary NIC."""
        ns = self.netns(plan.node)
        nic = plan.nics[0]
        ns.ip("addr", "add", plan.address, "broadcast", "+", "dev", nic)
        ns.ip("addr", "add", plan.vip, "dev", nic)
        ns.ip("-6", "addr", "add", plan.ipv6, "dev", nic, "nodad")
        ns.ip("route", "add", plan.route_to, "via", plan.route_via, "dev", nic)

    def destroy(self) -> None:
        self.stop_daemons()
        for name in [*self.ns.values(), *([self.switch] if self.switch else [])]:
            labnet.Netns(name).delete()

    def netns(self, node: str) -> labnet.Netns:
        return labnet.Netns(self.ns[node])

    def config_path(self, node: str) -> str:
        return os.path.join(self.workdir, f"{node}.toml")

    def log_path(self, node: str) -> str:
        return os.path.join(self.workdir, f"{node}.hlog")

    def socket_path(self, node: str) -> str:
        return os.path.join(self.workdir, f"{node}.sock")

    # ------------------------------------------------------------------ daemons
    def start_daemon(self, node: str, env: dict[str, str] | None = None) -> int:
        err = open(os.path.join(self.workdir, f"{node}.stderr"), "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns[node], sys.executable, "-m", "hanet", "run", "-c", self.config_path(node)],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
            env={**os.environ, **(env or {})})
        err.close()
        self.pids[node] = proc.pid
        self.save()
        return proc.pid

    def start_daemons(self, timeout_s: float = 15.0) -> None:
        for node in self.ns:
            self.start_daemon(node)
        for node in self.ns:
            self.wait_state(node, STABLE_STATES, timeout_s, all_paths_up=True)

    def stop_daemon(self, node: str, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        pid = self.pids.pop(node, None)
        self.save()
        if pid is None:
            return None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG) if _is_child(pid) else (0, 0)
            if done or not _alive(pid):
                return os.waitstatus_to_exitcode(status) if done else None
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        return None

    def stop_daemons(self) -> None:
        """SIGTERM to every daemon first, then wait for each, so none sees the other go."""
        for pid in self.pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for node in list(self.pids):
            self.stop_daemon(node)

    def daemon_alive(self, node: str) -> bool:
        pid = self.pids.get(node)
        if pid is None:
            return False
        if _is_child(pid):
            done, _ = os.waitpid(pid, os.WNOHANG)
            return done == 0
        return _alive(pid)

    # ------------------------------------------------------------------ observation
    def status(self, node: str, timeout: float = 2.0) -> dict[str, Any]:
        from . import control
        return control.request(self.socket_path(node), "status", timeout=timeout)

    def command(self, node: str, cmd: str, **args) -> dict[str, Any]:
        from . import control
        return control.request(self.socket_path(node), cmd, **args)

    def wait_state(self, node: str, states: tuple[str, ...] | str, timeout_s: float = 10.0,
                   active: int | None = None, all_paths_up: bool = False) -> dict[str, Any]:
        """Poll the node's status until its state is one of ``states`` (bounded), and optionally
        until every path's heartbeats are answered."""
        states = (states,) if isinstance(states, str) else states
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.status(node, timeout=1.0)
            except Exception as exc:  # not up yet: socket missing or refusing
                last = exc
                if self.pids.get(node) and not self.daemon_alive(node):
                    raise LabError(f"{node} daemon exited: {self.stderr_tail(node)}") from None
            else:
                healthy = not all_paths_up or all(p["health"] == "up" for p in last["paths"])
                if last["state"] in states and (active is None or last["active"] == active) and healthy:
                    return last
            time.sleep(0.02)
        raise LabError(f"{node}: not in {states} (active={active}) within {timeout_s}s; last: {last}\n"
                       f"{self.stderr_tail(node)}")

    def stderr_tail(self, node: str, lines: int = 15) -> str:
        try:
            with open(os.path.join(self.workdir, f"{node}.stderr"), errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ faults
    def cable(self, path: str | int) -> tuple[str, str]:
        """(alpha's NIC, beta's NIC) of a path: 0/primary or 1/alternate."""
        index = {"primary": 0, "alternate": 1}.get(str(path), None)
        index = int(path) if index is None else index
        return ALPHA.nics[index], BETA.nics[index]

    def ends(self, path: str | int) -> tuple[labnet.Netns, str, labnet.Netns, str]:
        """Where faults act: (namespace, interface) facing alpha, then facing beta. Crossover: the
        NICs themselves; switched: the switch ports, so the nodes' own links stay as they are."""
        nic_a, nic_b = self.cable(path)
        if self.switch is None:
            return self.netns("alpha"), nic_a, self.netns("beta"), nic_b
        index = ALPHA.nics.index(nic_a)
        sw = labnet.Netns(self.switch)
        return sw, f"a{index}", sw, f"b{index}"

    def fault(self, kind: str, path: str | int, percent: int = 30, hz: float = 5.0, seconds: float = 5.0) -> None:
        """Crossover: carrier and flap set beta's NIC down, so both nodes lose carrier. Switched:
        they set the switch port facing alpha down, so only alpha sees it in its carrier; beta
        learns it from heartbeats (or alpha's notice)."""
        a, nic_a, b, nic_b = self.ends(path)
        if self.switch is not None and kind in ("carrier", "flap"):
            b, nic_b = a, nic_a
        if kind == "carrier":
            labnet.carrier_down(b, nic_b)
        elif kind == "blackhole":
            labnet.drop_ingress(a, nic_a)
            labnet.drop_ingress(b, nic_b)
        elif kind == "oneway":
            # alpha -> beta lost, beta -> alpha still flows: drop where alpha's frames come in.
            labnet.drop_ingress(*((a, nic_a) if self.switch else (b, nic_b)))
        elif kind == "loss":
            labnet.drop_ingress(a, nic_a, percent)
            labnet.drop_ingress(b, nic_b, percent)
        elif kind == "flap":
            half = 0.5 / hz
            for _ in range(max(1, int(seconds * hz))):
                labnet.carrier_down(b, nic_b)
                time.sleep(half)
                labnet.carrier_up(b, nic_b)
                time.sleep(half)
        else:
            raise LabError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}")

    def heal(self, path: str | int) -> None:
        a, nic_a, b, nic_b = self.ends(path)
        for ns, nic in ((a, nic_a), (b, nic_b)):
            labnet.clear_ingress(ns, nic)
            labnet.carrier_up(ns, nic)


class LabError(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _is_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, ValueError, IndexError):
        return False


# --------------------------------------------------------------------------- the demo
def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def ping_stats(ns: labnet.Netns, address: str, count: int, interval_s: float) -> tuple[int, int]:
    proc = ns.run("ping", "-n", "-q", "-c", str(count), "-i", f"{interval_s}", "-W", "1", address, check=False)
    for line in proc.stdout.splitlines():
        if "packets transmitted" in line:
            parts = line.split(",")
            return int(parts[0].split()[0]), int(parts[1].split()[0])
    return count, 0


def demo(args) -> int:
    from . import control, replay

    started = time.monotonic()
    lab = Lab.create(interval_ms=args.interval_ms, multiplier=args.multiplier)
    try:
        say(f"two nodes in namespaces {lab.ns['alpha']} and {lab.ns['beta']}; "
            f"heartbeats every {lab.interval_ms:g} ms x {lab.multiplier}")
        lab.start_daemons()
        for node in ("alpha", "beta"):
            print(control.render_status(lab.status(node)))
        a, b = lab.netns("alpha"), lab.netns("beta")
        sent, got = ping_stats(a, "192.0.2.2", 20, 0.01)
        say(f"traffic alpha -> beta service address 192.0.2.2: {got}/{sent} replies")

        say(f"fault: silent blackhole on the primary cable (nftables drop, carrier stays up)")
        pinger = subprocess.Popen(["ip", "netns", "exec", lab.ns["alpha"], "ping", "-n", "-q", "-c", "300",
                                   "-i", "0.005", "-W", "1", "192.0.2.2"], stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        t_fault = time.monotonic()
        lab.fault("blackhole", "primary")
        for node in ("alpha", "beta"):
            st = lab.wait_state(node, "Alternate-Active", 10)
            print(f"{node}: {st['state']} on {st['active_name']} "
                  f"({(time.monotonic() - t_fault) * 1000:.0f} ms after the fault, as seen by this script)")
        out, _ = pinger.communicate(timeout=10)
        summary = next((line for line in out.splitlines() if "packets transmitted" in line), "")
        sent, got = (int(summary.split(",")[0].split()[0]), int(summary.split(",")[1].split()[0])) if summary else (0, 0)
        say(f"traffic during the fault (one ping every 5 ms): {got}/{sent} replies, "
            f"{sent - got} lost = about {(sent - got) * 5} ms without service")
        sent, got = ping_stats(a, "192.0.2.2", 20, 0.01)
        print(f"now over the alternate: {got}/{sent} replies; alpha's nic3 carries {a.addresses('nic3')}")

        say("heal the primary; both fail back after the 1.5 s hold-down")
        lab.heal("primary")
        for node in ("alpha", "beta"):
            st = lab.wait_state(node, "Monitoring", 15)
            print(f"{node}: {st['state']} on {st['active_name']}")
        sent, got = ping_stats(a, "192.0.2.2", 20, 0.01)
        print(f"traffic on the primary again: {got}/{sent} replies")
        lab.stop_daemons()

        logs = [lab.log_path("alpha"), lab.log_path("beta")]
        say("the replayed timeline of both logs (transitions)")
        replay.main([*logs, "--transitions", "--clock", "mono"])
        say("replay --verify")
        verified = replay.main([*logs, "--verify"])
        say("replay --stats")
        replay.main([*logs, "--stats", "--clock", "mono"])
        say(f"demo finished in {time.monotonic() - started:.1f} s; verify {'passed' if verified == 0 else 'FAILED'}")
        return 0 if verified == 0 else 1
    finally:
        lab.destroy()
        if not args.keep:
            shutil.rmtree(lab.workdir, ignore_errors=True)
        else:
            print(f"logs kept in {lab.workdir}")


# --------------------------------------------------------------------------- CLI
def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hanet lab", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.path.join(DEFAULT_ROOT, "current"), help="lab directory")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="the whole story in under a minute")
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--multiplier", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="keep the logs")
    p = sub.add_parser("up", help="build the two nodes and start hanet on both")
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument("--multiplier", type=int, default=3)
    p = sub.add_parser("fault", help="inject a fault on a path")
    p.add_argument("kind", choices=FAULT_KINDS)
    p.add_argument("path", choices=("primary", "alternate"))
    p.add_argument("--percent", type=int, default=30, help="loss: share of frames dropped")
    p.add_argument("--hz", type=float, default=5.0, help="flap: carrier toggles per second")
    p.add_argument("--seconds", type=float, default=5.0, help="flap: how long")
    p = sub.add_parser("heal", help="remove every fault from a path")
    p.add_argument("path", choices=("primary", "alternate"))
    sub.add_parser("status", help="both nodes' status")
    sub.add_parser("down", help="stop the daemons and remove the namespaces")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("hanet lab: needs root (network namespaces)", file=sys.stderr)
        return 2
    try:
        if args.cmd == "demo":
            return demo(args)
        if args.cmd == "up":
            if os.path.exists(os.path.join(args.dir, STATE_FILE)):
                print(f"hanet lab: a lab is already up in {args.dir}; `hanet lab down` first", file=sys.stderr)
                return 1
            lab = Lab.create(args.dir, persistent=True, interval_ms=args.interval_ms, multiplier=args.multiplier)
            lab.start_daemons()
            print(f"lab up in {args.dir}: alpha={lab.ns['alpha']} beta={lab.ns['beta']}")
            print(f"status: hanet status -s {lab.socket_path('alpha')}")
            return 0
        lab = Lab.load(args.dir)
        if args.cmd == "fault":
            lab.fault(args.kind, args.path, percent=args.percent, hz=args.hz, seconds=args.seconds)
        elif args.cmd == "heal":
            lab.heal(args.path)
        elif args.cmd == "status":
            from . import control
            for node in lab.ns:
                print(control.render_status(lab.status(node)))
        elif args.cmd == "down":
            lab.destroy()
            shutil.rmtree(args.dir, ignore_errors=True)
        return 0
    except FileNotFoundError:
        print(f"hanet lab: no lab in {args.dir}; `hanet lab up` first", file=sys.stderr)
        return 1
    except (LabError, labnet.LabError) as exc:
        print(f"hanet lab: {exc}", file=sys.stderr)
        return 1
