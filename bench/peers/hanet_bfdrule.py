"""hanet with confirmation probing off (``heartbeat.confirm_ms = 0``): BFD's rule alone, a path
lost ``multiplier`` x ``interval`` after its last reply. The baseline that shows what confirmation
probing gains, on the same daemon, lab and faults."""
from __future__ import annotations

from bench.peers.hanet_peer import HanetPeer


class HanetBfdRule(HanetPeer):
    name = "hanet_bfdrule"
    confirm_ms = 0.0


PEER = HanetBfdRule
