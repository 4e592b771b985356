"""hanet with confirmation probing on (``heartbeat.confirm_ms = 5``): a silence on a path (a reply,
or the peer's scheduled request, overdue) is confirmed at once by extra requests, and the path is
lost once they go unanswered for the confirmation window. Beside ``hanet`` (BFD's rule, the
default) it shows what confirmation probing gains, on the same daemon, lab and faults."""
from __future__ import annotations

from bench.peers.hanet_peer import HanetPeer


class HanetConfirm(HanetPeer):
    name = "hanet_confirm"
    confirm_ms = 5.0


PEER = HanetConfirm
