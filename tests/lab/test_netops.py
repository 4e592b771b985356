"""NetOps in real namespaces: node a moves its identity between nic1 and nic3, node b is the peer."""
from __future__ import annotations

import dataclasses
import json
import select
import socket
import struct
import time

import pytest

from hanet import model
from hanet.labnet import TwoNodeLab
from hanet.machine import Params, planned_move
from hanet.netops import NetOps
from nsrun import GATEWAY, in_netns, lab_config, setup_peer, wait_for

pytestmark = pytest.mark.lab

IDENTITY_MAC = "02:00:00:00:0a:01"   # nic1's own MAC: the primary's, learned at first start
OWN_MACS = (IDENTITY_MAC, "02:00:00:00:0a:02")
CARRIED = ["192.0.2.1/24", "192.0.2.100/24", "2001:db8::1/64", "2001:db8::100/64"]
ROUTE = "203.0.113.0/24"
ETH_P_ALL = 0x0003


@pytest.fixture
def lab():
    lab = TwoNodeLab.create("nops")
    try:
        setup_peer(lab)
        yield lab
    finally:
        lab.close()


@pytest.fixture
def ops(lab):
    cfg = lab_config(announce_interval_ms=20.0, announce_count=1)
    with in_netns(lab.a.name):
        netops = NetOps(cfg)
    try:
        yield netops
    finally:
        netops.close()


def run_all(ops: NetOps, actions) -> None:
    for act in actions:
        out = ops.execute(act)
        assert isinstance(out, model.ActionDone), out
        assert out.action_id == act.id and out.kind == act.type


def moves(ops: NetOps, src: int, dst: int, count: int = 1):
    return planned_move(dataclasses.replace(Params.from_config(ops.cfg), announce_count=count), OWN_MACS, src, dst)


def addr_info(lab, ifname: str) -> dict[str, dict]:
    info = json.loads(lab.a.ip("-j", "addr", "show", "dev", ifname).stdout)[0]
    return {f"{a['local']}/{a['prefixlen']}": a for a in info.get("addr_info", []) if a.get("scope") == "global"}


def route_dev(lab) -> list[str]:
    routes = json.loads(lab.a.ip("-j", "route", "show", ROUTE).stdout)
    return [r["dev"] for r in routes]


def peer_reaches(lab, via_ifname: str) -> bool:
    proc = lab.b.run("ping", "-n", "-q", "-c", "1", "-W", "1", "-I", via_ifname, "192.0.2.1", check=False)
    return proc.returncode == 0


def assert_layout(lab, holder_if: str, other_if: str) -> None:
    on_holder = addr_info(lab, holder_if)
    assert sorted(on_holder) == sorted(CARRIED)
    assert addr_info(lab, other_if) == {}
    assert on_holder["192.0.2.1/24"]["broadcast"] == "192.0.2.255"
    for v6 in ("2001:db8::1/64", "2001:db8::100/64"):
        assert on_holder[v6].get("nodad") is True and not on_holder[v6].get("tentative")
    assert lab.a.mac(holder_if) == IDENTITY_MAC
    assert lab.a.mac(other_if) != IDENTITY_MAC
    assert route_dev(lab) == [holder_if]


def test_failover_moves_identity_and_failback_restores_it(lab, ops):
    run_all(ops, moves(ops, 1, 0))
    assert_layout(lab, "nic1", "nic3")
    assert wait_for("peer reaches the identity over nic2", lambda: peer_reaches(lab, "nic2"))

    lab.b.ip("link", "set", "nic2", "down")  # carrier loss on the primary cable
    run_all(ops, moves(ops, 0, 1))
    assert_layout(lab, "nic3", "nic1")
    assert lab.a.mac("nic1") == OWN_MACS[1]  # the MAC swap: nic1 took the alternate's own MAC
    assert wait_for("peer reaches the identity over nic4", lambda: peer_reaches(lab, "nic4"))
    rec = ops.reconcile()
    assert rec.holder == 1 and rec.found == {1: sorted(CARRIED)} and rec.routes == {1: [ROUTE]}
    assert rec.carrier == (False, True) and rec.macs == (OWN_MACS[1], IDENTITY_MAC)

    lab.b.ip("link", "set", "nic2", "up")
    run_all(ops, moves(ops, 1, 0))
    assert_layout(lab, "nic1", "nic3")
    assert lab.a.mac("nic3") == OWN_MACS[1]
    assert wait_for("peer reaches the identity over nic2 again", lambda: peer_reaches(lab, "nic2"))


def test_executing_twice_is_harmless(lab, ops):
    run_all(ops, moves(ops, 1, 0))
    run_all(ops, moves(ops, 0, 1))
    run_all(ops, moves(ops, 0, 1))
    assert_layout(lab, "nic3", "nic1")


@pytest.mark.parametrize("target", [1, 0], ids=["complete", "roll-back"])
def test_partial_failover_is_repaired_by_running_the_sequence_again(lab, ops, target):
    failover = moves(ops, 0, 1)
    for k in range(len(failover) + 1):
        run_all(ops, moves(ops, 1, 0))
        run_all(ops, failover[:k])  # the daemon died after step k

        rec = ops.reconcile()
        holders = [p for p, addrs in rec.found.items() if "192.0.2.1/24" in addrs]
        assert rec.holder == (min(holders) if holders else None)
        assert rec.shared_macs == {}  # I2: no two NICs share a MAC after a crash at any step
        if k == 1:  # disabled, not yet configured: nothing carried anywhere
            assert rec.found == {} and rec.holder is None
        if k >= 4:  # enabled: the alternate carries everything
            assert rec.holder == 1 and rec.found == {1: sorted(CARRIED)}

        # The restarted daemon runs the whole sequence towards its target again.
        run_all(ops, failover if target == 1 else moves(ops, 1, 0))
        holder_if, other_if = ("nic3", "nic1") if target == 1 else ("nic1", "nic3")
        assert_layout(lab, holder_if, other_if)
        rec = ops.reconcile()
        assert rec.holder == target and rec.found == {target: sorted(CARRIED)}
        assert rec.shared_macs == {} and rec.routes == {target: [ROUTE]}


def test_split_addresses_are_reported(lab, ops):
    run_all(ops, moves(ops, 1, 0))
    lab.a.ip("addr", "add", "192.0.2.1/24", "dev", "nic3")
    lab.a.ip("addr", "add", "2001:db8::100/64", "dev", "nic3", "nodad")
    rec = ops.reconcile()
    assert rec.holder == 0
    assert rec.found[1] == ["192.0.2.1/24", "2001:db8::100/64"]
    assert rec.split == {"192.0.2.1/24": [0, 1], "2001:db8::100/64": [0, 1]}


def test_describe_touches_nothing(lab, ops):
    run_all(ops, moves(ops, 1, 0))
    before = lab.a.ip("-j", "addr").stdout
    texts = [ops.describe(a) for a in moves(ops, 0, 1, count=3)]
    assert lab.a.ip("-j", "addr").stdout == before
    assert texts[0] == ("nic.disable path=0 nic1: stop pending announcements; "
                        "ip addr del 2001:db8::100/64 dev nic1; ip addr del 192.0.2.100/24 dev nic1; "
                        "ip addr del 2001:db8::1/64 dev nic1; ip addr del 192.0.2.1/24 dev nic1")
    assert texts[2] == (f"nic.configure path=1 nic3: MAC layout nic1={OWN_MACS[1]} nic3={IDENTITY_MAC} "
                        "(a permutation, through temporary locally administered MACs)")
    assert "ip addr replace 192.0.2.1/24 brd 192.0.2.255 dev nic3" in texts[3]
    assert "ip addr replace 2001:db8::1/64 nodad dev nic3" in texts[3]
    assert "count 3 interval 20ms" in texts[4]
    assert texts[5] == f"nic.routes path=1 nic3: ip route replace {ROUTE} via {GATEWAY} dev nic3"


def test_failures_are_reported_not_raised(lab, ops):
    lab.a.ip("link", "del", "nic3")
    out = ops.execute(model.EnableNic(7, path=1))
    assert isinstance(out, model.ActionFailed)
    assert out.action_id == 7 and out.error.startswith("nic.enable path=1 nic3: ENODEV")
    # A route via a gateway that no connected subnet reaches: the kernel refuses it.
    out = ops.execute(model.MoveRoutes(8, path=0))
    assert isinstance(out, model.ActionFailed) and "RTNETLINK ENETUNREACH" in out.error
    assert ops.execute(model.PlumbNic(9, path=5)).error == "nic.plumb: no path 5 (the configuration has 2)"


def _announcements(frames: list[bytes]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(sender MAC, sender IPv4) of gratuitous ARPs and (MAC, target) of unsolicited NAs seen."""
    garps, nas = [], []
    for f in frames:
        ethertype = struct.unpack_from("!H", f, 12)[0]
        if ethertype == 0x0806 and f[20:22] == b"\x00\x01" and f[28:32] == f[38:42]:
            garps.append((f[22:28].hex(":"), socket.inet_ntoa(f[28:32])))
        elif ethertype == 0x86DD and f[20] == 58 and f[54] == 136 and f[58] & 0x20:
            nas.append((f[80:86].hex(":"), socket.inet_ntop(socket.AF_INET6, f[62:78])))
    return garps, nas


def test_announce_is_seen_by_the_peer_and_spaced_without_blocking(lab, ops):
    run_all(ops, moves(ops, 1, 0))
    for ip in ("192.0.2.1", "2001:db8::1"):
        lab.b.ip("neigh", "replace", ip, "lladdr", "02:00:00:00:00:99", "dev", "nic4", "nud", "stale")
    with in_netns(lab.b.name):
        cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        cap.bind(("nic4", 0))
        for act in moves(ops, 0, 1, count=3)[:4]:
            assert isinstance(ops.execute(act), model.ActionDone)
        started = time.monotonic()
        out = ops.execute(model.Announce(50, path=1, count=3))
        assert isinstance(out, model.ActionDone)
        assert time.monotonic() - started < 0.015  # rounds 2 and 3 are left to the timer thread

        frames, deadline = [], time.monotonic() + 5.0
        while time.monotonic() < deadline:
            garps, _ = _announcements(frames)
            if garps.count((IDENTITY_MAC, "192.0.2.1")) >= 3:
                break
            if select.select([cap], [], [], 0.05)[0]:
                frames.append(cap.recv(2048))
        garps, nas = _announcements(frames)
        assert garps.count((IDENTITY_MAC, "192.0.2.1")) == 3
        assert (IDENTITY_MAC, "192.0.2.100") in garps
        assert (IDENTITY_MAC, "2001:db8::1") in nas and (IDENTITY_MAC, "2001:db8::100") in nas
    finally:
        cap.close()

    # The peer's kernel accepted both kinds (a bad NA checksum or hop limit would be dropped).
    def peer_learned(ip: str) -> bool:
        neigh = json.loads(lab.b.ip("-j", "neigh", "show", ip, "dev", "nic4").stdout)
        return bool(neigh) and neigh[0].get("lladdr") == IDENTITY_MAC
    for ip in ("192.0.2.1", "2001:db8::1"):
        assert wait_for(f"the peer's neighbour entry for {ip} to take the identity MAC", lambda: peer_learned(ip))


def test_no_two_nics_share_a_mac_at_any_moment_of_a_move(lab, ops):
    """A watcher samples every NIC's MAC (RTM_NEWLINK notifications, so no change is missed)
    while the identity moves back and forth."""
    from pyroute2 import IPRoute
    run_all(ops, moves(ops, 1, 0))
    with in_netns(lab.a.name):
        watcher = IPRoute()
    try:
        watcher.bind()
        seen: dict[str, str] = {name: lab.a.mac(name) for name in ("nic1", "nic3")}
        layouts = []
        for src, dst in ((0, 1), (1, 0), (0, 1), (1, 0)):
            run_all(ops, moves(ops, src, dst))
        for _ in range(1000):  # bounded: read every notification queued by the moves
            if not select.select([watcher.fileno()], [], [], 0.2)[0]:
                break
            for msg in watcher.get():
                name = msg.get_attr("IFLA_IFNAME")
                mac = msg.get_attr("IFLA_ADDRESS")
                if msg["event"] == "RTM_NEWLINK" and name in seen and mac and mac != seen[name]:
                    seen[name] = mac
                    layouts.append(dict(seen))
        assert len(layouts) >= 3  # the watcher saw the MACs change places
        for layout in layouts:
            assert layout["nic1"] != layout["nic3"], layouts
    finally:
        watcher.close()
