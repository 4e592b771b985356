"""Detector adapters for the detection benchmark: one module per detector.

A module ``bench/peers/<name>.py`` that defines ``PEER``, a ``Peer`` subclass, is all it takes to
add a detector to the suite (``--peers <name>``). Every adapter runs its detector on both nodes of
a ``hanet.labnet.TwoNodeLab``, on both paths (a.nic1 <-> b.nic2 primary, a.nic3 <-> b.nic4
alternate), and reports failure declarations as CLOCK_MONOTONIC nanoseconds.
"""
from __future__ import annotations

import importlib
import os
import time
from abc import ABC, abstractmethod

from hanet import labnet

NODES = ("a", "b")


class PeerUnavailable(RuntimeError):
    """The detector is not installed or not runnable here; the suite reports it and goes on."""


class NotSupported(ValueError):
    """The detector cannot run this setting (e.g. an interval below its minimum)."""


class Peer(ABC):
    name: str = ""
    min_interval_ms: float = 0.0
    # True when the detector also moves traffic off a failed path, so recovery (the UDP gap) means
    # something without healing the fault; a pure detector has no recovery to measure.
    moves_traffic: bool = False

    @abstractmethod
    def start(self, lab: labnet.TwoNodeLab, interval_ms: float, multiplier: int) -> None:
        """Configure and start the detector on both nodes. Raises NotSupported / PeerUnavailable."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every process started; safe to call twice and after a failed start."""

    @abstractmethod
    def wait_up(self, timeout: float) -> bool:
        """Poll (bounded) until both nodes see the primary path up."""

    @abstractmethod
    def detection_time_after(self, t_fault_ns: int, timeout: float, node: str = "a") -> int | None:
        """CLOCK_MONOTONIC ns at which ``node`` declared the primary path failed after the fault,
        or None if it did not within ``timeout`` seconds."""

    @abstractmethod
    def pids(self) -> dict[str, list[int]]:
        """The detector's processes per node, for CPU accounting."""

    def service_addresses(self) -> tuple[str, str] | None:
        """(a's, b's) addresses that keep working across a failover, for the UDP stream."""
        return None

    def cpu_at_rest(self, seconds: float) -> dict[str, float]:
        """Per node: the detector's utime+stime over ``seconds``, as % of one core."""
        return cpu_percent(self.pids(), seconds)


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def cpu_percent(pids: dict[str, list[int]], seconds: float) -> dict[str, float]:
    hz = os.sysconf("SC_CLK_TCK")
    before = {node: sum(_cpu_ticks(p) for p in ps) for node, ps in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    after = {node: sum(_cpu_ticks(p) for p in ps) for node, ps in pids.items()}
    return {node: round(100.0 * (after[node] - before[node]) / hz / elapsed, 2) for node in pids}


def load(name: str) -> Peer:
    """An instance of ``PEER`` from ``bench/peers/<name>.py`` or ``<name>_peer.py`` (the suffix
    keeps an adapter from shadowing the package it drives, e.g. hanet)."""
    for module_name in (f"bench.peers.{name}", f"bench.peers.{name}_peer"):
        try:
            return importlib.import_module(module_name).PEER()
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
    raise PeerUnavailable(f"no adapter bench/peers/{name}.py or {name}_peer.py")
