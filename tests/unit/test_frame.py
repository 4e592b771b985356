"""One suite for both frame codecs: the C one in hanet._fastprobe and the reference hanet.frame."""
from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hanet import _fastprobe, frame

KEY = b"0123456789abcdef-shared-key"
CODECS = [pytest.param(frame, id="python"), pytest.param(_fastprobe, id="cython")]

u64 = st.integers(min_value=0, max_value=2**64 - 1)
frames = st.builds(
    frame.Frame,
    kind=st.sampled_from(frame.KINDS),
    path=st.integers(0, 255),
    node_id=st.binary(min_size=16, max_size=16),
    seq=u64,
    send_ns=u64,
    active=st.integers(0, 255),
    echo_seq=u64,
    echo_ns=u64,
)


def sample(**kw) -> frame.Frame:
    fields = dict(kind=frame.KIND_REPLY, path=1, node_id=frame.node_id_field("alpha"),
                  seq=1_700_000_000_000_000_123, send_ns=42, echo_seq=7, echo_ns=9)
    return frame.Frame(**{**fields, **kw})


def test_layout_is_the_documented_one():
    data = frame.encode(KEY, sample())
    body = struct.pack("!BBBB16sQQQQ", 1, 2, 1, 0, b"alpha".ljust(16, b"\0"),
                       1_700_000_000_000_000_123, 42, 7, 9)
    assert data == body + hmac.new(KEY, body, hashlib.sha256).digest()[:16]
    assert len(data) == frame.FRAME_LEN == 68


@given(f=frames)
def test_codecs_agree_byte_for_byte(f):
    assert _fastprobe.encode(KEY, f) == frame.encode(KEY, f)


@pytest.mark.parametrize("codec", CODECS)
@given(f=frames)
def test_round_trip(codec, f):
    assert codec.decode(KEY, codec.encode(KEY, f)) == (frame.OK, f)


@pytest.mark.parametrize("codec", CODECS)
@settings(max_examples=500)
@given(data=st.binary(max_size=200))
def test_random_bytes_are_dropped_never_raised(codec, data):
    reason, parsed = codec.decode(KEY, data)
    assert parsed is None and reason in _fastprobe.DROP_REASONS


@settings(max_examples=500)
@given(data=st.binary(max_size=200))
def test_codecs_agree_on_any_input(data):
    assert _fastprobe.decode(KEY, data) == frame.decode(KEY, data)


@settings(max_examples=300)
@given(f=frames, where=st.integers(0, frame.FRAME_LEN - 1), flip=st.integers(1, 255))
def test_any_changed_byte_is_refused(f, where, flip):
    data = bytearray(frame.encode(KEY, f))
    data[where] ^= flip
    if where == 0:
        expected = frame.BAD_VERSION
    elif where == 1 and data[1] not in frame.KINDS:
        expected = frame.BAD_KIND  # the free checks come before the HMAC
    else:
        expected = frame.BAD_AUTH
    for codec in (frame, _fastprobe):
        assert codec.decode(KEY, bytes(data)) == (expected, None)


@pytest.mark.parametrize("codec", CODECS)
def test_drop_reasons(codec):
    good = codec.encode(KEY, sample())
    assert codec.decode(KEY, b"") == (frame.SHORT, None)
    assert codec.decode(KEY, good[:-1]) == (frame.SHORT, None)
    assert codec.decode(KEY, good + b"\0") == (frame.LONG, None)
    assert codec.decode(KEY, b"\x02" + good[1:]) == (frame.BAD_VERSION, None)
    assert codec.decode(b"another-key-of-16-bytes", good) == (frame.BAD_AUTH, None)
    assert codec.decode(KEY, codec.encode(KEY, sample(kind=9))) == (frame.BAD_KIND, None)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("field,top", [("kind", 255), ("path", 255), ("active", 255),
                                       ("seq", 2**64 - 1), ("send_ns", 2**64 - 1),
                                       ("echo_seq", 2**64 - 1), ("echo_ns", 2**64 - 1)])
def test_encoder_refuses_values_out_of_range_instead_of_truncating(codec, field, top):
    assert codec.encode(KEY, sample(**{field: top})) == frame.encode(KEY, sample(**{field: top}))
    for bad in (top + 1, -1):
        with pytest.raises(ValueError, match=field):
            codec.encode(KEY, sample(**{field: bad}))


@pytest.mark.parametrize("codec", CODECS)
def test_encoder_refuses_a_node_id_of_the_wrong_size(codec):
    with pytest.raises(ValueError, match="node_id"):
        codec.encode(KEY, sample(node_id=b"short"))


@pytest.mark.parametrize("codec", CODECS)
def test_send_ns_with_the_top_bit_set_is_unsigned_in_both_codecs(codec):
    top_bit = sample(send_ns=2**63 + 5, echo_ns=2**64 - 1)
    assert codec.decode(KEY, codec.encode(KEY, top_bit)) == (frame.OK, top_bit)
    assert _fastprobe.decode(KEY, frame.encode(KEY, top_bit)) == frame.decode(KEY, _fastprobe.encode(KEY, top_bit))


def test_both_codecs_share_one_set_of_constants():
    from hanet import wire
    assert frame.FRAME_LEN == wire.FRAME_LEN and frame.GROUP_MAC == wire.GROUP_MAC
    assert _fastprobe.DROP_REASONS == wire.DROP_REASONS


def test_reason_names_are_shared():
    for reason in (frame.SHORT, frame.LONG, frame.BAD_VERSION, frame.BAD_AUTH, frame.BAD_KIND):
        assert reason in _fastprobe.DROP_REASONS


def test_node_id_field():
    assert frame.node_id_field("beta") == b"beta" + b"\0" * 12
    with pytest.raises(ValueError):
        frame.node_id_field("x" * 17)


def test_probe_has_no_fallback_when_the_extension_is_missing(monkeypatch):
    import sys

    import hanet
    monkeypatch.setitem(sys.modules, "hanet._fastprobe", None)  # what a failed build looks like
    monkeypatch.delattr(hanet, "_fastprobe")
    monkeypatch.delitem(sys.modules, "hanet.probe", raising=False)
    with pytest.raises(ImportError):
        import hanet.probe  # noqa: F401
