"""Network namespaces, veth pairs and fault injectors for the lab and the tests.

Lab tooling, not daemon code: it drives iproute2 and nftables as an operator would. Every
namespace it makes is named ``hn-<tag>-<pid>-<n>`` so two runs never collide, is removed on
``close()`` (and at interpreter exit), and ``sweep_stale()`` removes leftovers of dead processes.
"""
from __future__ import annotations

import atexit
import itertools
import os
import secrets
import subprocess
from dataclasses import dataclass, field

PREFIX = "hn-"
_counter = itertools.count()
_live: set[str] = set()

FAULT_KINDS = ("carrier", "blackhole", "oneway", "loss", "flap")


class LabError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def unique_name(tag: str, persistent: bool = False) -> str:
    """``hn-<tag>-<pid>-<n>``; a persistent namespace outlives this process: ``hn-<tag>-<random>``."""
    if persistent:
        return f"{PREFIX}{tag}-{secrets.token_hex(3)}"
    return f"{PREFIX}{tag}-{os.getpid()}-{next(_counter)}"


def sweep_stale() -> list[str]:
    """Remove namespaces this module made in processes that no longer exist."""
    removed = []
    for name in list_namespaces():
        parts = name[len(PREFIX):].split("-") if name.startswith(PREFIX) else []
        if len(parts) >= 3 and parts[-2].isdigit() and not _pid_alive(int(parts[-2])):
            sh("ip", "netns", "del", name, check=False)
            removed.append(name)
    return removed


def list_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Netns:
    name: str

    @classmethod
    def create(cls, tag: str, persistent: bool = False) -> "Netns":
        name = unique_name(tag, persistent)
        sh("ip", "netns", "add", name)
        if not persistent:
            _live.add(name)  # removed at interpreter exit at the latest
        ns = cls(name)
        ns.ip("link", "set", "lo", "up")
        return ns

    def run(self, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.name, *argv, check=check, input=input)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", self.name, *args, check=check)

    def nft(self, script: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("nft", "-f", "-", input=script, check=check)

    def delete(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)
        _live.discard(self.name)

    # -- observations
    def link(self, ifname: str) -> dict:
        import json
        return json.loads(self.ip("-j", "link", "show", "dev", ifname).stdout)[0]

    def addresses(self, ifname: str) -> list[str]:
        import json
        info = json.loads(self.ip("-j", "addr", "show", "dev", ifname).stdout)
        return [f"{a['local']}/{a['prefixlen']}" for i in info for a in i.get("addr_info", [])
                if a.get("scope") != "link"]

    def mac(self, ifname: str) -> str:
        return self.link(ifname)["address"]

    def ping(self, address: str, count: int = 1, timeout_s: float = 1.0) -> bool:
        tool = "ping"
        proc = self.run(tool, "-n", "-q", "-c", str(count), "-W", str(timeout_s), "-i", "0.01", address, check=False)
        return proc.returncode == 0


def veth(a: Netns, if_a: str, b: Netns, if_b: str, mac_a: str = "", mac_b: str = "") -> None:
    """A crossover cable: ``if_a`` in ``a`` joined to ``if_b`` in ``b``, both up."""
    sh("ip", "link", "add", if_a, "netns", a.name, "type", "veth", "peer", "name", if_b, "netns", b.name)
    for ns, ifname, mac in ((a, if_a, mac_a), (b, if_b, mac_b)):
        if mac:
            ns.ip("link", "set", ifname, "address", mac)
        ns.ip("link", "set", ifname, "up")


# --------------------------------------------------------------------------- faults
def _table(ifname: str) -> str:
    return f"hanet_fault_{ifname}".replace("-", "_").replace(".", "_")


def drop_ingress(ns: Netns, ifname: str | tuple[str, ...], percent: int = 100, match: str = "") -> None:
    """Drop frames arriving on ``ifname`` (or on each of several, in one nftables transaction, so
    they fail at the same instant): all, or ``percent`` % at random; only those ``match``, an
    nftables expression, says. Carrier stays up."""
    rule = "drop" if percent >= 100 else f"numgen random mod 100 < {int(percent)} drop"
    rule = f"{match} {rule}".strip()
    ns.nft("".join(f"""
table netdev {_table(name)} {{
  chain ingress {{
    type filter hook ingress device "{name}" priority -500; policy accept;
    {rule}
  }}
}}
""" for name in _names(ifname)))


def clear_ingress(ns: Netns, ifname: str | tuple[str, ...]) -> None:
    """Undo drop_ingress: in one transaction (the paths heal at the same instant), else, when some
    of the tables are missing, one by one."""
    names = _names(ifname)
    if ns.nft("".join(f"delete table netdev {_table(name)}\n" for name in names), check=False).returncode:
        for name in names:
            ns.run("nft", "delete", "table", "netdev", _table(name), check=False)


def _names(ifname: str | tuple[str, ...]) -> tuple[str, ...]:
    return (ifname,) if isinstance(ifname, str) else tuple(ifname)


def carrier_down(ns: Netns, ifname: str) -> None:
    """Set ``ifname`` admin-down: its veth peer loses carrier at once."""
    ns.ip("link", "set", ifname, "down")


def carrier_up(ns: Netns, ifname: str) -> None:
    ns.ip("link", "set", ifname, "up")


@dataclass
class TwoNodeLab:
    """Two nodes, two cables: a.nic1 <-> b.nic2 (primary), a.nic3 <-> b.nic4 (alternate).

    Crossover by default. With ``switched``, each cable runs through a Linux bridge in a third
    namespace (ports ``a<i>`` facing node a and ``b<i>`` facing node b), so a fault can be seen by
    one node's carrier and not the other's, as with a switch in the path.
    """
    a: Netns
    b: Netns
    cables: list[tuple[str, str]] = field(default_factory=lambda: [("nic1", "nic2"), ("nic3", "nic4")])
    switch: Netns | None = None

    @classmethod
    def create(cls, tag: str = "lab", cables: int = 2, persistent: bool = False,
               switched: bool = False) -> "TwoNodeLab":
        made: list[Netns] = []
        try:
            for side in ("a", "b", "s")[:3 if switched else 2]:
                made.append(Netns.create(f"{tag}{side}", persistent))
        except Exception:
            for ns in made:
                ns.delete()
            raise
        lab = cls(made[0], made[1], [(f"nic{2 * i + 1}", f"nic{2 * i + 2}") for i in range(cables)],
                  made[2] if switched else None)
        try:
            for i, (if_a, if_b) in enumerate(lab.cables):
                # Locally administered MACs that say which node and cable they belong to.
                mac_a, mac_b = f"02:00:00:00:0a:{i + 1:02x}", f"02:00:00:00:0b:{i + 1:02x}"
                if lab.switch is None:
                    veth(lab.a, if_a, lab.b, if_b, mac_a=mac_a, mac_b=mac_b)
                    continue
                sw = lab.switch
                sw.ip("link", "add", f"br{i}", "type", "bridge", "forward_delay", "0")
                veth(lab.a, if_a, sw, f"a{i}", mac_a=mac_a)
                veth(lab.b, if_b, sw, f"b{i}", mac_a=mac_b)
                for port in (f"a{i}", f"b{i}"):
                    sw.ip("link", "set", port, "master", f"br{i}")
                sw.ip("link", "set", f"br{i}", "up")
        except Exception:
            lab.close()
            raise
        return lab

    def namespaces(self) -> list[Netns]:
        return [self.a, self.b] + ([self.switch] if self.switch else [])

    def close(self) -> None:
        for ns in self.namespaces():
            ns.delete()

    def __enter__(self) -> "TwoNodeLab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _cleanup() -> None:
    for name in list(_live):
        sh("ip", "netns", "del", name, check=False)
    _live.clear()
