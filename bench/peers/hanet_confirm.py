"""hanet with confirmation probing on (``heartbeat.confirm_ms = 5``): a silence on a path (a reply,
or the peer's scheduled request, overdue) is confirmed at once by extra requests, and the path is
lost once they go unanswered for the confirmation window. Beside ``hanet`` (BFD's rule, the
default) it shows what confirmation probing gains, on the same daemon, lab and faults."""
from __future__ import annotations

from bench.peers import NotSupported
from bench.peers.hanet_peer import HanetPeer
from hanet import labnet


class HanetConfirm(HanetPeer):
    name = "hanet_confirm"
    confirm_ms = 5.0

    def start(self, lab: labnet.TwoNodeLab, interval_ms: float, multiplier: int) -> None:
        if interval_ms < self.confirm_ms:  # heartbeat.confirm_ms may not exceed the interval
            raise NotSupported(f"confirm_ms {self.confirm_ms:g} is longer than the {interval_ms:g} ms interval")
        super().start(lab, interval_ms, multiplier)


PEER = HanetConfirm
