"""LinkWatch on real netlink: node a watches nic1 (path 0) and nic3 (path 1); faults come from b."""
from __future__ import annotations

import functools
import select
import time

import pytest
from pyroute2 import IPRoute

from hanet import model
from hanet.labnet import TwoNodeLab
from hanet.linkwatch import LinkWatch
from hanet.machine import Params, planned_move
from hanet.netops import NetOps
from nsrun import in_netns, lab_config

pytestmark = pytest.mark.lab

# The kernel may hold a link notification back by up to ~1 s when other links changed recently.
DEADLINE_S = 5.0


@pytest.fixture
def lab():
    lab = TwoNodeLab.create("lw")
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def watch(lab):
    lw = LinkWatch(lab_config(), ipr_factory=functools.partial(IPRoute, netns=lab.a.name))
    lw.start()
    try:
        yield lw
    finally:
        lw.close()


def wait_event(lw: LinkWatch, match, seen: list[model.Event] | None = None) -> model.Event:
    """Drain until an event satisfying ``match`` arrives; everything read is appended to ``seen``."""
    seen = [] if seen is None else seen
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        select.select([lw.fileno()], [], [], 0.05)
        for ev in lw.drain():
            seen.append(ev)
            if match(ev):
                return ev
    raise AssertionError(f"no matching event within {DEADLINE_S} s; saw {seen}")


def test_start_reports_nothing_and_knows_the_links(lab, watch):
    assert watch.drain() == []
    assert watch.ifindex(0) is not None and watch.ifindex(1) is not None
    assert watch.is_up(0) and watch.is_up(1)


def test_peer_carrier_loss_and_return(lab, watch):
    t0 = time.monotonic_ns()
    lab.b.ip("link", "set", "nic2", "down")
    ev = wait_event(watch, lambda e: isinstance(e, model.LinkDown))
    assert ev == model.LinkDown(ev.t_ns, path=0, source="netlink") and ev.t_ns > t0
    lab.b.ip("link", "set", "nic2", "up")
    ev = wait_event(watch, lambda e: isinstance(e, model.LinkUp))
    assert ev.path == 0 and ev.source == "netlink"


def test_interface_deleted_then_recreated(lab, watch):
    old = watch.ifindex(1)
    lab.a.ip("link", "del", "nic3")
    seen: list[model.Event] = []
    ev = wait_event(watch, lambda e: isinstance(e, model.LinkGone), seen)
    assert ev.path == 1 and ev.ifname == "nic3"
    assert not any(isinstance(e, model.LinkGone) and e.path == 0 for e in seen)

    lab.a.ip("link", "add", "nic3", "type", "veth", "peer", "name", "nic4", "netns", lab.b.name)
    ev = wait_event(watch, lambda e: isinstance(e, model.LinkReturned))
    assert ev.path == 1 and ev.ifindex == watch.ifindex(1) and ev.ifindex != old
    lab.a.ip("link", "set", "nic3", "up")
    lab.b.ip("link", "set", "nic4", "up")
    assert wait_event(watch, lambda e: isinstance(e, model.LinkUp)).path == 1


def test_rename_away_and_back(lab, watch):
    index = watch.ifindex(1)
    lab.a.ip("link", "set", "nic3", "down")
    lab.a.ip("link", "set", "nic3", "name", "spare3")
    assert wait_event(watch, lambda e: isinstance(e, model.LinkGone)).path == 1
    lab.a.ip("link", "set", "spare3", "name", "nic3")
    ev = wait_event(watch, lambda e: isinstance(e, model.LinkReturned))
    assert ev == model.LinkReturned(ev.t_ns, path=1, ifindex=index, mac=lab.a.mac("nic3"))


def test_address_removed_by_hand_is_reported_but_not_our_own_removals(lab, watch):
    cfg = lab_config(announce_count=0)
    with in_netns(lab.a.name):
        ops = NetOps(cfg)
    try:
        own = ("02:00:00:00:0a:01", "02:00:00:00:0a:02")
        for act in planned_move(Params.from_config(cfg), own, 1, 0):
            assert isinstance(ops.execute(act), model.ActionDone)
        watch.set_holder(0)

        lab.a.ip("addr", "del", "192.0.2.100/24", "dev", "nic1")
        ev = wait_event(watch, lambda e: isinstance(e, model.AddressRemoved))
        assert ev == model.AddressRemoved(ev.t_ns, path=0, address="192.0.2.100/24")

        # hanet's own failover removes every carried address from nic1: announced, so silent.
        watch.expect_removals(0, [c.address for c in ops.carried])
        disable, *rest = planned_move(Params.from_config(cfg), own, 0, 1)
        assert isinstance(ops.execute(disable), model.ActionDone)
        lab.b.ip("link", "set", "nic2", "down")  # a marker: the deletions were read before it
        seen: list[model.Event] = []
        wait_event(watch, lambda e: isinstance(e, model.LinkDown), seen)
        assert not any(isinstance(e, model.AddressRemoved) for e in seen)
        for act in rest:
            assert isinstance(ops.execute(act), model.ActionDone)
        watch.set_holder(1)
        # A later removal by hand on the new holder is still reported; nothing else came first.
        lab.a.ip("addr", "del", "2001:db8::1/64", "dev", "nic3")
        seen = []
        ev = wait_event(watch, lambda e: isinstance(e, model.AddressRemoved), seen)
        assert ev.path == 1 and ev.address == "2001:db8::1/64"
        assert [e for e in seen if isinstance(e, model.AddressRemoved)] == [ev]
    finally:
        ops.close()


def test_addresses_on_a_non_holder_are_not_watched(lab, watch):
    lab.a.ip("addr", "add", "192.0.2.1/24", "dev", "nic3")
    watch.set_holder(0)
    lab.a.ip("addr", "del", "192.0.2.1/24", "dev", "nic3")
    lab.b.ip("link", "set", "nic2", "down")  # a marker event that proves the deletion was read
    seen: list[model.Event] = []
    wait_event(watch, lambda e: isinstance(e, model.LinkDown), seen)
    assert not any(isinstance(e, model.AddressRemoved) for e in seen)


def test_lost_notifications_are_recovered_by_a_fresh_dump(lab):
    # A tiny receive buffer overflows at once (ENOBUFS); what was lost comes back from a dump.
    factory = functools.partial(IPRoute, netns=lab.a.name, rcvbuf=1024)
    lw = LinkWatch(lab_config(), ipr_factory=factory)
    lw.start()
    try:
        batch = "".join(f"address add 198.51.100.{i}/32 dev nic1\n" for i in range(1, 101))
        lab.a.run("ip", "-batch", "-", input=batch)
        lab.a.ip("link", "del", "nic3")
        seen: list[model.Event] = []
        ev = wait_event(lw, lambda e: isinstance(e, model.LinkGone), seen)
        assert ev.path == 1 and lw.overruns >= 1
    finally:
        lw.close()
