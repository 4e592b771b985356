"""The C engine's constructor: every argument checked before anything reaches the loop."""
from __future__ import annotations

import pytest

from hanet import _fastprobe

GOOD = dict(node_id="alpha", peer_id="beta", key=b"k" * 32, paths=[("nic1", ""), ("nic3", "")],
            interval_ms=10.0, multiplier=3, recover_count=3, ethertype=0x88B5, replay_window=64,
            poll_interval_ms=1.0)


def test_good_arguments_make_an_engine():
    engine = _fastprobe.Engine(**GOOD)
    assert engine.snapshot(1)["interface"] == "nic3" and engine.snapshot(0)["state"] == "unknown"


@pytest.mark.parametrize("name,value", [
    ("interval_ms", 0), ("interval_ms", -1.0), ("interval_ms", float("nan")), ("interval_ms", float("inf")),
    ("interval_ms", 1e-9), ("interval_ms", "10"), ("poll_interval_ms", 0), ("poll_interval_ms", -5),
    ("multiplier", 0), ("multiplier", 2.0), ("recover_count", 0), ("ethertype", 0x0800 - 0x300),
    ("ethertype", 0x10000), ("replay_window", 0), ("replay_window", 1025), ("rt_priority", 100),
    ("reply_timeout_ms", 11.0), ("reply_timeout_ms", -1.0), ("quality_window_ms", -1.0),
    ("seq_start", -1), ("seq_start", 2**64), ("rcvbuf_bytes", -1), ("key", b""), ("key", "text"),
    ("node_id", ""), ("node_id", "x" * 17), ("peer_id", "alpha"), ("paths", []),
    ("paths", [("nic1", "")] * 9), ("paths", [("", "")]), ("paths", [("a" * 16, "")]),
    ("paths", [("nic1", "02:00:00:00:00")]), ("paths", [("nic1", "zz:00:00:00:00:00")]),
    ("paths", ["nic1"]),
])
def test_a_bad_argument_is_a_value_error(name, value):
    with pytest.raises(ValueError):
        _fastprobe.Engine(**{**GOOD, name: value})

