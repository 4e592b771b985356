"""Netlink link and address notifications -> link events for the path NICs.

One IPRoute socket subscribed to RTMGRP_LINK and the IPv4/IPv6 address groups, read without
blocking: the daemon polls ``fileno()`` and calls ``drain()`` when it is readable. What it reports:

- LinkDown / LinkUp (source "netlink") when a path NIC's operational state changes;
- LinkGone when a path NIC is deleted or renamed away, LinkReturned when a NIC of that name
  exists again (re-created or renamed back, maybe under a new ifindex);
- AddressRemoved when a carried address disappears from the holder's NIC and hanet did not remove
  it itself: ``expect_removals`` announces hanet's own deletions, each one absorbs one matching
  RTM_DELADDR within a window.

If the socket overflows (ENOBUFS: notifications were lost) the link table is dumped again and the
differences are reported as events, so no change is missed for good.
"""
from __future__ import annotations

import errno
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import (RTM_DELADDR, RTM_DELLINK, RTM_NEWLINK, RTMGRP_IPV4_IFADDR,
                                   RTMGRP_IPV6_IFADDR, RTMGRP_LINK)

from . import model
from .config import Config
from .netops import carried_addresses

IFF_UP = 0x1
OPER_UP = ("UP", "UNKNOWN")  # UNKNOWN: drivers that do not report operstate (RFC 2863)
RECV_BYTES = 1 << 16
MAX_READS_PER_DRAIN = 256     # bounds one drain; the rest waits for the next readable poll
EXPECT_WINDOW_NS = 2_000_000_000


@dataclass
class _PathLink:
    ifindex: int | None = None   # None: no NIC of that name exists now
    up: bool = False


class LinkWatch:
    def __init__(self, cfg: Config, ipr_factory: Callable[[], IPRoute] | None = None):
        self._factory = ipr_factory or IPRoute
        self._ifnames = [p.interface for p in cfg.paths]
        self._names = {name: i for i, name in enumerate(self._ifnames)}
        self._links = [_PathLink() for _ in cfg.paths]
        self._carried = {_key(c.address): c.address for c in carried_addresses(cfg)}
        self._holder: int | None = None
        self._expected: dict[tuple[int, str], list[int]] = {}  # (path, address) -> deadlines
        self._sub: IPRoute | None = None
        self.overruns = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Subscribe, then read the current link table (subscribing first leaves no gap)."""
        self._sub = self._factory()
        self._sub.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
        self._resync(emit=False)

    def fileno(self) -> int:
        if self._sub is None:
            raise RuntimeError("LinkWatch.start() was not called")
        return self._sub.fileno()

    def close(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    # ------------------------------------------------------------------ what hanet tells it
    def set_holder(self, path: int | None) -> None:
        """The path whose NIC should hold the carried addresses now (None: none is watched)."""
        self._holder = path

    def expect_removals(self, path: int, addresses: Iterable[str],
                        window_ns: int = EXPECT_WINDOW_NS) -> None:
        """hanet is about to delete ``addresses`` from ``path``'s NIC: do not report those."""
        now = time.monotonic_ns()
        for address in addresses:
            # Expired entries go here too: a removal the kernel never reports to us (from a NIC
            # that no longer holds the identity) is never consumed by _expected_now.
            pending = [d for d in self._expected.get((path, address), []) if d > now]
            pending.append(now + window_ns)
            self._expected[(path, address)] = pending

    # ------------------------------------------------------------------ reading
    def drain(self) -> list[model.Event]:
        """Every event pending on the socket, without blocking."""
        if self._sub is None:
            return []
        events: list[model.Event] = []
        for _ in range(MAX_READS_PER_DRAIN):
            try:
                data = self._sub.recv(RECV_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                events += self._resync(emit=True)
                continue
            now = time.monotonic_ns()
            for msg in self._sub.marshal.parse(data):
                events += self._on_message(msg, now)
        return events

    def _on_message(self, msg, now: int) -> list[model.Event]:
        kind = msg["header"]["type"]
        if kind == RTM_NEWLINK:
            return self._on_link(msg["index"], msg.get_attr("IFLA_IFNAME"), _is_up(msg), now, *_macs(msg))
        if kind == RTM_DELLINK:
            return self._on_link(msg["index"], None, False, now)
        if kind == RTM_DELADDR:
            return self._on_deladdr(msg, now)
        return []

    def _on_link(self, ifindex: int, ifname: str | None, up: bool, now: int,
                 mac: str = "", hw_mac: str = "") -> list[model.Event]:
        """A link exists as ``ifname`` with ``up`` (ifname None: the link was deleted)."""
        events: list[model.Event] = []
        for path, link in enumerate(self._links):
            if link.ifindex == ifindex and ifname != self._ifnames[path]:
                link.ifindex, link.up = None, False
                events.append(model.LinkGone(now, path=path, ifname=self._ifnames[path]))
        path = self._names.get(ifname) if ifname is not None else None
        if path is None:
            return events
        link = self._links[path]
        if link.ifindex != ifindex:
            link.ifindex, link.up = ifindex, False
            events.append(model.LinkReturned(now, path=path, ifindex=ifindex, mac=mac, hw_mac=hw_mac))
        if up != link.up:
            link.up = up
            cls = model.LinkUp if up else model.LinkDown
            events.append(cls(now, path=path, source="netlink"))
        return events

    def _on_deladdr(self, msg, now: int) -> list[model.Event]:
        holder = self._holder
        if holder is None or self._links[holder].ifindex != msg["index"]:
            return []
        ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        address = self._carried.get((ipaddress.ip_address(ip), msg["prefixlen"])) if ip else None
        if address is None or self._expected_now(holder, address, now):
            return []
        return [model.AddressRemoved(now, path=holder, address=address)]

    def _expected_now(self, path: int, address: str, now: int) -> bool:
        deadlines = [d for d in self._expected.pop((path, address), []) if d > now]
        if not deadlines:
            return False
        if deadlines[1:]:
            self._expected[(path, address)] = deadlines[1:]
        return True

    def _resync(self, emit: bool) -> list[model.Event]:
        """Read the whole link table and fold it in as if each link had just been announced."""
        with self._factory() as ipr:
            links = [(m["index"], m.get_attr("IFLA_IFNAME"), _is_up(m), *_macs(m)) for m in ipr.get_links()]
        now = time.monotonic_ns()
        events: list[model.Event] = []
        present = {link[0] for link in links}
        for path, link in enumerate(self._links):
            if link.ifindex is not None and link.ifindex not in present:
                events += self._on_link(link.ifindex, None, False, now)
        for ifindex, ifname, up, mac, hw_mac in links:
            events += self._on_link(ifindex, ifname, up, now, mac, hw_mac)
        return events if emit else []

    # Read-only view for the daemon's status output and the tests.
    def ifindex(self, path: int) -> int | None:
        return self._links[path].ifindex

    def is_up(self, path: int) -> bool:
        return self._links[path].up


def _macs(msg) -> tuple[str, str]:
    """(current MAC, permanent MAC or "") of an RTM_NEWLINK message."""
    perm = msg.get_attr("IFLA_PERM_ADDRESS") or ""
    return msg.get_attr("IFLA_ADDRESS") or "", "" if perm == "00:00:00:00:00:00" else perm


def _is_up(msg) -> bool:
    return (bool(msg["flags"] & IFF_UP) and msg.get_attr("IFLA_CARRIER") != 0
            and msg.get_attr("IFLA_OPERSTATE") in OPER_UP)


def _key(address: str) -> tuple:
    iface = ipaddress.ip_interface(address)
    return iface.ip, iface.network.prefixlen
