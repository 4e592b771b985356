"""A short flood of junk frames with hanet's EtherType: counted by reason, and no path is lost."""
from __future__ import annotations

import os
import socket
import time

import pytest
from nsrun import in_netns
from test_probe import ETH_P_HANET, _ethernet, start_pair

from hanet import frame, model

pytestmark = pytest.mark.lab

FLOOD_S = 1.5


def junk(kind: int, node: str, seq: int) -> bytes:
    """A frame that looks like the peer's (length, version, kind, node id) with a wrong HMAC."""
    body = bytearray(frame.encode(os.urandom(32), frame.Frame(
        kind=kind, path=0, node_id=frame.node_id_field(node), seq=seq, send_ns=1, echo_seq=7, echo_ns=9)))
    return _ethernet(bytes(body))


def test_a_short_flood_is_counted_by_reason_and_loses_no_path(lab, tmp_path):
    a, b = start_pair(lab, tmp_path)
    try:
        for node in (a, b):
            for path in (0, 1):
                node.wait(model.HeartbeatRecovered, path)
        before = a.stats(0)
        t0 = time.monotonic_ns()
        seq = time.clock_gettime_ns(time.CLOCK_REALTIME) + 10**15
        kinds = {"auth": [junk(frame.KIND_REQUEST, "beta", seq + k) for k in range(512)],
                 "late": [junk(frame.KIND_REPLY, "beta", seq + 512 + k) for k in range(512)],
                 "filtered": [junk(frame.KIND_REQUEST, "mallory", seq + k) for k in range(512)]}
        sent = dict.fromkeys(kinds, 0)
        with in_netns(b.ns.name):
            raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_HANET))
        with raw:
            raw.bind(("nic2", ETH_P_HANET))
            end = time.monotonic() + FLOOD_S
            while time.monotonic() < end:
                for name, frames in kinds.items():
                    for data in frames[:128]:
                        raw.send(data)
                    sent[name] += 128
                    frames.append(frames.pop(0))
        time.sleep(0.1)
        after = a.stats(0)
        drops = {r: after["drops"].get(r, 0) - before["drops"].get(r, 0) for r in ("auth", "late")}
        overflow = after["rcvbuf_overflow"] - before["rcvbuf_overflow"]
        # Each frame lands in exactly one counter: the kernel filter's, a reason, or a full ring
        # (plus the odd genuine reply that came after its deadline on a busy host).
        assert after["filtered"] - before["filtered"] == sent["filtered"]
        assert 0 <= drops["auth"] + drops["late"] + overflow - (sent["auth"] + sent["late"]) <= 10
        assert drops["late"] > 0 and drops["auth"] > 0
        for node in (a, b):
            node.collect()
            for path in (0, 1):
                assert node.find(model.HeartbeatLost, path, after_ns=t0) is None, (node.ns.name, path)
    finally:
        a.prober.stop()
        b.prober.stop()
