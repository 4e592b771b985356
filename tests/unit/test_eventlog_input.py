"""The reader on bad input: well-framed records of the wrong shape are damage at their offset,
arbitrary bytes never raise, and finding the next intact frame costs work linear in the file
size however the file was made."""
from __future__ import annotations

import zlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hanet import model
from hanet.eventlog import framing, reader, schema

EVENT = model.to_dict(model.LinkDown(t_ns=5, path=1))
ACTION = model.to_dict(model.EnableNic(id=2, path=1))
TRANSITION = {"src": "Monitoring", "dst": "Failing-Over", "trigger": "link.down", "reason": "r",
              "active": 1, "cause": 1, "actions": [ACTION]}


def good(n: int, kind: str = "event", body=EVENT) -> dict:
    return schema.record("alpha", n, n, n, kind, body)


def framed(obj) -> bytes:
    return framing.frame(msgpack.packb(obj, use_bin_type=True))


def with_(number: int, **fields) -> dict:
    return {**good(number), **fields}


WRONG_SHAPES = {
    "payload a list": [1, 2, 3],
    "payload an int": 7,
    "payload a str": "record",
    "n a str": with_(2, n="2"),
    "n a bool": with_(2, n=True),
    "n a float": with_(2, n=2.0),
    "node an int": with_(2, node=5),
    "mono missing": {k: v for k, v in good(2).items() if k != "mono"},
    "wall a str": with_(2, wall="now"),
    "unknown kind": with_(2, k="frobnicate"),
    "kind not a str": with_(2, k=3),
    "event body a list": with_(2, e=[1, 2]),
    "event body without its key": {k: v for k, v in good(2).items() if k != "e"},
    "event of unknown type": with_(2, e={"type": "link.sideways", "t_ns": 1}),
    "event t_ns a str": with_(2, e={**EVENT, "t_ns": "5"}),
    "event path None": with_(2, e={**EVENT, "path": None}),
    "event lacking a field": with_(2, e={"type": "link.down", "path": 1}),
    "event tuple field of ints": with_(2, e=model.to_dict(model.DaemonStarted(t_ns=1)) | {"carrier": [1, 0]}),
    "transition body a str": good(2, "transition", "Monitoring -> Failing-Over"),
    "transition cause a str": good(2, "transition", {**TRANSITION, "cause": "1"}),
    "transition actions a map": good(2, "transition", {**TRANSITION, "actions": {"a": 1}}),
    "transition action of unknown type": good(2, "transition", {**TRANSITION, "actions": [{"type": "x"}]}),
    "transition action id a str": good(2, "transition", {**TRANSITION, "actions": [{**ACTION, "id": "2"}]}),
    "config body a list": good(2, "config", [1]),
    "snapshot body None": good(2, "snapshot", None),
    "gap ranges not pairs": good(2, "gap", {"lost": [[1]], "unsure": [], "reason": "x", "errno": "EIO", "since": 0}),
    "gap without reason": good(2, "gap", {"lost": [], "unsure": [], "errno": "EIO", "since": 0}),
}


@pytest.mark.parametrize("name", WRONG_SHAPES)
def test_a_well_framed_record_of_the_wrong_shape_is_damage_at_its_offset(name):
    first, bad, last = framed(good(1)), framed(WRONG_SHAPES[name]), framed(good(3))
    buf = first + bad + last
    damage: list[reader.Damage] = []
    entries = list(reader.decode("x.hlog", buf, damage.append))
    assert [e.record["n"] for e in entries] == [1, 3]
    assert len(damage) == 1
    assert damage[0].offset == len(first) and damage[0].skipped == len(bad)
    assert damage[0].reason.startswith("bad record: ") and not damage[0].torn


def test_the_records_the_writer_makes_pass_the_shape_check():
    for event_type in model.EVENT_TYPES.values():
        body = model.to_dict(event_type(t_ns=1)) if _all_defaults(event_type) else None
        if body is not None:
            assert schema.problem(good(1, "event", body)) == ""
    assert schema.problem(good(1, "transition", TRANSITION)) == ""
    assert schema.problem(good(1, "config", {})) == ""
    gap = {"lost": [[1, 2]], "unsure": [], "reason": "x", "errno": "ENOSPC", "since": 5}
    assert schema.problem(good(1, "gap", gap)) == ""


def _all_defaults(cls) -> bool:
    import dataclasses
    return all(f.name == "t_ns" or f.default is not dataclasses.MISSING
               or f.default_factory is not dataclasses.MISSING for f in dataclasses.fields(cls))


def test_a_gap_record_is_yielded_and_reported_as_damage():
    gap = {"lost": [[3, 9]], "unsure": [[1, 2]], "reason": "write x: No space left on device",
           "errno": "ENOSPC", "since": 5}
    first, g = framed(good(1)), framed(good(10, "gap", gap))
    damage: list[reader.Damage] = []
    entries = list(reader.decode("x.hlog", first + g, damage.append))
    assert [e.record["k"] for e in entries] == ["event", "gap"]
    assert len(damage) == 1 and damage[0].gap and damage[0].offset == len(first)
    assert damage[0].lost == ((3, 9),) and damage[0].unsure == ((1, 2),)
    assert str(damage[0]) == (f"? x.hlog @ offset {len(first)}: gap (n=10): records 3-9 lost, records 1-2 "
                              "may be lost (fdatasync failed) (ENOSPC: write x: No space left on device)")


# --------------------------------------------------------------------------- arbitrary bytes
def spans(buf: bytes, entries, damage) -> list[tuple[int, int]]:
    out = [(e.offset, e.offset + framing.HEADER_SIZE + framing.HEADER.unpack_from(buf, e.offset)[1])
           for e in entries]
    out += [(d.offset, d.offset + d.skipped) for d in damage if not d.gap and d.skipped]
    return sorted(out)


chunks = st.one_of(
    st.binary(max_size=40),
    st.just(framing.MAGIC),
    st.integers(0, 60).map(lambda n: framing.HEADER.pack(framing.MAGIC, n, 0)),
    st.integers(1, 4).map(lambda n: framed(good(n))),
    st.sampled_from(list(WRONG_SHAPES.values())).map(framed),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(chunks, max_size=12))
def test_arbitrary_bytes_never_raise_and_every_byte_is_a_record_or_damage(parts):
    buf = b"".join(parts)
    damage: list[reader.Damage] = []
    entries = list(reader.decode("x.hlog", buf, damage.append))
    covered = spans(buf, entries, damage)
    pos = 0
    for start, stop in covered:  # the records and the damage tile the buffer, in order
        assert start == pos
        pos = stop
    assert pos == len(buf)
    for e in entries:
        assert schema.problem(e.record) == ""


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=20_000), st.data())
def test_scanner_crc_of_any_span_is_the_crc32_of_its_bytes(buf, data):
    scanner = framing.Scanner(buf)
    start = data.draw(st.integers(0, len(buf)))
    stop = data.draw(st.integers(start, len(buf)))
    assert scanner.crc(start, stop) == zlib.crc32(buf[start:stop])
    assert framing.shift(zlib.crc32(buf[:start]), stop - start) ^ zlib.crc32(buf[start:stop]) \
        == zlib.crc32(buf[:stop])


# --------------------------------------------------------------------------- linear work
class CountingZlib:
    """zlib with crc32 counted: calls and bytes, the work of checking frames."""

    def __init__(self):
        self.calls = 0
        self.bytes = 0

    def crc32(self, data, value=0):
        self.calls += 1
        self.bytes += len(data)
        return zlib.crc32(data, value)


def crafted(size: int, length: int) -> bytes:
    """Headers back to back, each claiming ``length`` bytes of payload with a wrong CRC."""
    unit = framing.HEADER.pack(framing.MAGIC, length, 0)
    return (unit * (size // len(unit) + 1))[:size]


def decode_work(monkeypatch, buf: bytes) -> tuple[int, int, list]:
    counter = CountingZlib()
    monkeypatch.setattr(framing, "zlib", counter)
    monkeypatch.setattr(reader, "zlib", counter)
    damage: list = []
    entries = list(reader.decode("x.hlog", buf, damage.append))
    monkeypatch.undo()
    return counter.calls, counter.bytes, entries


@pytest.mark.parametrize("length", [100, framing.DIRECT_MAX, framing.DIRECT_MAX + 1, 0.1, 0.5, 0.9,
                                    framing.MAX_PAYLOAD])
def test_resync_work_is_linear_in_the_file_size(monkeypatch, length):
    """``length``: the payload each header claims, in bytes or as a fraction of the file size
    (the old search checked each candidate's CRC over its whole claimed payload: quadratic)."""
    small, large = 256 * 1024, 1024 * 1024
    claim = (lambda size: int(length * size)) if isinstance(length, float) else (lambda size: length)
    calls_small, bytes_small, _ = decode_work(monkeypatch, crafted(small, claim(small)))
    calls_large, bytes_large, _ = decode_work(monkeypatch, crafted(large, claim(large)))
    # At most one direct CRC of DIRECT_MAX bytes, or a few short ones, per candidate header.
    per_byte = framing.DIRECT_MAX / framing.HEADER_SIZE + 8
    assert bytes_large <= per_byte * large
    assert calls_large <= 4 * large / framing.HEADER_SIZE + large / framing.BLOCK + 10
    # Four times the file, about four times the work (a quadratic search would be sixteen).
    assert bytes_large <= 4.5 * bytes_small + framing.DIRECT_MAX
    assert calls_large <= 4.5 * calls_small + 10


def test_records_after_a_crafted_stretch_are_all_found(monkeypatch):
    records = b"".join(framed(good(n)) for n in range(1, 51))
    big = framed(good(51, "config", {"blob": "x" * 20_000}))  # checked through the prefix CRCs
    buf = crafted(300_001, 50_000) + records + big + crafted(1000, 200) + framed(good(52))
    _calls, _bytes, entries = decode_work(monkeypatch, buf)
    assert [e.record["n"] for e in entries] == list(range(1, 53))


def test_repeated_magic_alone_is_one_damage_report():
    buf = framing.MAGIC * (1 << 16)
    damage: list = []
    assert list(reader.decode("x.hlog", buf, damage.append)) == []
    assert len(damage) == 1 and damage[0].skipped == len(buf) and damage[0].reason == "bad length"
