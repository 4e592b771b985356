"""Lab helpers: run code inside a named network namespace, a config for TwoNodeLab, polling.

``in_netns`` moves only the calling thread (setns(2) with CLONE_NEWNET); every socket opened
inside the block — pyroute2's netlink socket, AF_PACKET, ioctl sockets — belongs to that
namespace for its whole life, even after the thread has moved back.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import time
from typing import Callable, Iterator, TypeVar

from hanet.config import Config, FailoverConfig, IdentityConfig, PathConfig, RouteConfig

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")

# Peer (namespace b) addresses: one per NIC, both in the identity's subnet, so the peer reaches
# the service address over whichever cable the identity sits behind.
PEER_ADDRESSES = {"nic2": "192.0.2.2/24", "nic4": "192.0.2.3/24"}
GATEWAY = "192.0.2.254"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread inside the namespace ``/run/netns/NAME``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def lab_config(**failover: object) -> Config:
    """The identity of node a in a TwoNodeLab: primary nic1, alternate nic3."""
    return Config(
        file="<lab>", node_id="alpha", peer_id="beta",
        paths=(PathConfig("primary", "nic1"), PathConfig("alternate", "nic3")),
        identity=IdentityConfig(
            address="192.0.2.1/24", ipv6=("2001:db8::1/64",),
            vips=("192.0.2.100/24", "2001:db8::100/64"),
            routes=(RouteConfig(to="203.0.113.0/24", via=GATEWAY),),
        ),
        failover=dataclasses.replace(FailoverConfig(), **failover),
    )


def setup_peer(lab) -> None:
    """Addresses on the peer's NICs, both in the identity's subnet."""
    for ifname, address in PEER_ADDRESSES.items():
        lab.b.ip("addr", "add", address, "dev", ifname)


def wait_for(what: str, probe: Callable[[], T], timeout_s: float = 5.0, every_s: float = 0.01) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
