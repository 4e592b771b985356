"""The event log: framing, damage found and skipped, rotation, durability, merging, upcasting."""
from __future__ import annotations

import errno
import itertools
import os

import msgpack
import pytest

from hanet import machine, model
from hanet.eventlog import framing, reader, schema
from hanet.eventlog import Writer, open_logs, read_file, read_files, rotated_set
from hanet.eventlog.writer import FileOps

STEP = machine.Step(src="Monitoring", dst="Failing-Over", trigger="heartbeat.lost",
                    reason="heartbeats lost on the active path", active=1,
                    actions=(model.PauseMonitoring(id=1, path=0), model.EnableNic(id=2, path=1)))


def ticking(start: int, step: int):
    """A clock that advances ``step`` ns per reading."""
    counter = itertools.count(start, step)
    return lambda: next(counter)


def read_all(*paths: str) -> tuple[list[reader.Entry], list[reader.Damage]]:
    damage: list[reader.Damage] = []
    return list(read_files(paths, damage.append)), damage


def write_events(path: str, count: int, **kwargs) -> list[int]:
    with Writer(path, "alpha", **kwargs) as w:
        return [w.event(model.HeartbeatSuspect(t_ns=i, path=0, misses=1)) for i in range(count)]


def test_records_round_trip_with_offsets_and_numbers(tmp_path):
    path = str(tmp_path / "events.hlog")
    with Writer(path, "alpha", params=lambda: {"multiplier": 3}) as w:
        cause = w.event(model.HeartbeatLost(t_ns=5, path=0, misses=3, first_miss_ns=1))
        w.transition(STEP, cause)
        w.snapshot({"state": "Failing-Over"})
    entries, damage = read_all(path)
    assert damage == []
    assert [e.record["k"] for e in entries] == ["config", "event", "transition", "snapshot"]
    assert [e.record["n"] for e in entries] == [1, 2, 3, 4]
    assert entries[0].offset == 0
    with open(path, "rb") as fh:
        data = fh.read()
    for e in entries:  # each offset is where that record's frame starts
        assert data[e.offset:e.offset + 2] == framing.MAGIC
        assert framing.check(data, e.offset) == ""
    first = entries[0].record
    assert first["v"] == schema.VERSION and first["node"] == "alpha" and first["cfg"] == {"multiplier": 3}
    assert entries[1].record["e"] == model.to_dict(model.HeartbeatLost(t_ns=5, path=0, misses=3, first_miss_ns=1))
    assert model.event_from_dict(entries[1].record["e"]) == model.HeartbeatLost(t_ns=5, path=0, misses=3, first_miss_ns=1)
    tr = entries[2].record["tr"]
    assert tr == {"src": "Monitoring", "dst": "Failing-Over", "trigger": "heartbeat.lost",
                  "reason": STEP.reason, "active": 1, "cause": cause,
                  "actions": [{"type": "probe.pause", "id": 1, "path": 0},
                              {"type": "nic.enable", "id": 2, "path": 1}]}


def test_record_numbers_continue_across_restarts(tmp_path):
    path = str(tmp_path / "events.hlog")
    assert write_events(path, 3) == [1, 2, 3]
    assert write_events(path, 2, params=lambda: {}) == [5, 6]  # 4 is the restart's config record
    entries, damage = read_all(path)
    assert damage == [] and [e.record["n"] for e in entries] == [1, 2, 3, 4, 5, 6]


def test_torn_tail_is_reported_and_every_earlier_record_read(tmp_path):
    path = str(tmp_path / "events.hlog")
    write_events(path, 10)
    entries, _ = read_all(path)
    last = entries[-1].offset
    size = os.path.getsize(path)
    for cut in (size - 1, last + framing.HEADER_SIZE + 3, last + framing.HEADER_SIZE - 1, last + 1):
        with open(path, "r+b") as fh:
            fh.truncate(cut)
        got, damage = read_all(path)
        assert [e.record["n"] for e in got] == list(range(1, 10))
        assert len(damage) == 1
        assert damage[0].torn and damage[0].offset == last and damage[0].skipped == cut - last
        assert "torn tail" in str(damage[0])


def test_flipped_byte_skips_only_that_record(tmp_path):
    path = str(tmp_path / "events.hlog")
    write_events(path, 20)
    entries, _ = read_all(path)
    victim = entries[7]
    for where in (framing.HEADER_SIZE + 5, 3, 1):  # payload, length field, magic
        with open(path, "rb") as fh:
            data = bytearray(fh.read())
        data[victim.offset + where] ^= 0x40
        damaged = str(tmp_path / f"flipped{where}.hlog")
        with open(damaged, "wb") as fh:
            fh.write(data)
        got, damage = read_all(damaged)
        assert [e.record["n"] for e in got] == [n for n in range(1, 21) if n != 8]
        assert [e.offset for e in got] == [e.offset for e in entries if e is not victim]
        assert len(damage) == 1 and not damage[0].torn
        assert damage[0].offset == victim.offset
        assert damage[0].skipped == entries[8].offset - victim.offset
        assert str(damage[0]).startswith(f"? flipped{where}.hlog @ offset {victim.offset}: corrupt record (")


def test_damage_reasons(tmp_path):
    good = [framing.frame(msgpack.packb(schema.record("alpha", n, n, n, "config", {}))) for n in (1, 2, 3)]
    bad_msgpack = framing.frame(b"\xc1")  # 0xc1 is never used by msgpack
    not_a_record = framing.frame(msgpack.packb([1, 2]))
    missing_keys = framing.frame(msgpack.packb({"v": 1, "node": "alpha"}))
    huge = framing.HEADER.pack(framing.MAGIC, framing.MAX_PAYLOAD + 1, 0)
    path = tmp_path / "events.hlog"
    path.write_bytes(good[0] + b"garbage!" + bad_msgpack + not_a_record + good[1] + missing_keys
                     + huge + good[2])
    got, damage = read_all(str(path))
    assert [e.record["n"] for e in got] == [1, 2, 3]
    reasons = [d.reason for d in damage]
    assert reasons[0] == "garbage" and damage[0].offset == len(good[0]) and damage[0].skipped == 8
    assert reasons[1].startswith("bad record") and reasons[2].startswith("bad record")
    assert "missing" in reasons[3] and reasons[4] == "bad length"
    assert not any(d.torn for d in damage)


def test_rotation_keeps_sizes_count_and_starts_files_with_config_and_snapshot(tmp_path):
    path = str(tmp_path / "events.hlog")
    state = {"state": "Monitoring", "seen": 0}

    def snapshot():
        return dict(state)

    rotate_bytes, keep = 4096, 3
    with Writer(path, "alpha", rotate_bytes=rotate_bytes, keep=keep, params=lambda: {"multiplier": 3},
                snapshot=snapshot) as w:
        for i in range(400):
            w.event(model.HeartbeatSuspect(t_ns=i, path=0))
            state["seen"] = i + 1
    files = rotated_set(path)
    assert files == [f"{path}.3", f"{path}.2", f"{path}.1", path]
    assert not os.path.exists(f"{path}.4")
    entries, damage = read_all(*files)
    assert damage == []
    numbers = [e.record["n"] for e in entries]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # no gap across files
    biggest = max(e2.offset - e1.offset for e1, e2 in zip(entries, entries[1:]) if e1.file == e2.file)
    for f in files:
        in_file = [e for e in entries if e.file == f]
        assert os.path.getsize(f) <= rotate_bytes + biggest
        assert [e.record["k"] for e in in_file[:2]] == ["config", "snapshot"]
        assert in_file[0].record["cfg"] == {"multiplier": 3}
        first_event = in_file[2].record["e"]
        # The snapshot is the state the file's first event folds into.
        assert in_file[1].record["s"] == {"state": "Monitoring", "seen": first_event["t_ns"]}
    for f in files[:-1]:
        assert os.path.getsize(f) >= rotate_bytes


def test_rotation_drops_files_beyond_a_smaller_keep(tmp_path):
    path = str(tmp_path / "events.hlog")
    write_events(path, 300, rotate_bytes=4096, keep=5)
    assert len(rotated_set(path)) == 6
    write_events(path, 100, rotate_bytes=4096, keep=2)
    assert rotated_set(path) == [f"{path}.2", f"{path}.1", path]


def test_two_nodes_are_merged_by_time(tmp_path):
    alpha, beta = str(tmp_path / "alpha.hlog"), str(tmp_path / "beta.hlog")
    # alpha's wall clock runs 3 ms ahead of beta's, and its monotonic clock 1 s behind.
    with Writer(alpha, "alpha", mono_ns=ticking(1_000, 1_000), wall_ns=ticking(3_000, 1_000)) as a, \
            Writer(beta, "beta", mono_ns=ticking(1_000_001_500, 1_000), wall_ns=ticking(500, 1_000)) as b:
        for i in range(5):
            a.event(model.HeartbeatSuspect(t_ns=i, path=0))
            b.event(model.HeartbeatSuspect(t_ns=i, path=1))
    damage: list = []
    merged = list(open_logs([beta, alpha], damage.append))
    assert damage == []
    walls = [e.record["wall"] for e in merged]
    assert walls == sorted(walls) and len(merged) == 10
    assert [e.record["node"] for e in merged[:4]] == ["beta", "beta", "beta", "alpha"]
    by_mono = list(open_logs([beta, alpha], damage.append, clock="mono"))
    assert [e.record["node"] for e in by_mono] == ["alpha"] * 5 + ["beta"] * 5


def test_open_logs_chains_a_nodes_files_by_record_number_and_tags_damage(tmp_path):
    path = str(tmp_path / "events.hlog")
    write_events(path, 200, rotate_bytes=4096, keep=8, params=lambda: {}, snapshot=lambda: {})
    files = rotated_set(path)
    with open(files[1], "r+b") as fh:
        fh.seek(20)
        fh.write(b"\xff")
    damage: list[reader.Damage] = []
    entries = list(open_logs(files[::-1], damage.append))  # given newest first
    numbers = [e.record["n"] for e in entries]
    assert numbers == sorted(numbers)
    assert len(damage) == 1 and damage[0].node == "alpha" and damage[0].file == files[1]
    assert str(damage[0]).startswith(f"alpha {os.path.basename(files[1])} @ offset 0: corrupt record (crc mismatch)")


class FdatasyncCounter(FileOps):
    """The real system calls, counting fdatasync."""
    def __init__(self):
        self.calls = 0

    def fdatasync(self, fd):
        self.calls += 1
        os.fdatasync(fd)


@pytest.mark.parametrize("durability, expected", [("transition", 3 + 1), ("every", 3 + 9 + 1), ("none", 0)])
def test_durability_policy_fdatasyncs(tmp_path, durability, expected):
    counter = FdatasyncCounter()
    w = Writer(str(tmp_path / "events.hlog"), "alpha", durability=durability, buffer_bytes=1 << 20,
               max_pending_bytes=1 << 20, ops=counter)
    for _ in range(3):
        causes = [w.event(model.HeartbeatSuspect(t_ns=1, path=0)) for _ in range(3)]
        w.transition(STEP, causes[-1])
    before_close = counter.calls
    w.close()
    assert before_close == expected - (1 if durability != "none" else 0)
    assert counter.calls == expected  # close syncs once more unless "none"


def test_transition_is_in_the_file_when_transition_returns(tmp_path):
    path = str(tmp_path / "events.hlog")
    # A large buffer: events wait in it, and the transition must push them out first, in order.
    w = Writer(path, "alpha", buffer_bytes=1 << 20, max_pending_bytes=1 << 20)
    cause = w.event(model.HeartbeatLost(t_ns=1, path=0))
    assert os.path.getsize(path) == 0
    n = w.transition(STEP, cause)
    fd = os.open(path, os.O_RDONLY)  # another descriptor, as a crash-restarted reader would have
    try:
        data = os.read(fd, 1 << 16)
    finally:
        os.close(fd)
    got = list(reader.decode(path, data, pytest.fail))
    assert [(e.record["k"], e.record["n"]) for e in got] == [("event", cause), ("transition", n)]
    w.close()


def test_older_schema_version_is_upcast_on_read(tmp_path):
    v0 = {"v": 0, "node": "alpha", "n": 1, "mono": 10, "wall": 20, "k": "ev",
          "e": {"type": "link.down", "t_ns": 10, "path": 1}}

    def v0_to_v1(rec):  # v0 called the event kind "ev"
        return {**rec, "v": 1, "k": {"ev": "event"}.get(rec["k"], rec["k"])}

    path = tmp_path / "events.hlog"
    path.write_bytes(framing.frame(msgpack.packb(v0)))
    damage: list = []
    got = list(read_file(str(path), damage.append, upcasters={0: v0_to_v1}))
    assert damage == [] and got[0].record["v"] == 1 and got[0].record["k"] == "event"
    assert model.event_from_dict(got[0].record["e"]) == model.LinkDown(t_ns=10, path=1)
    # Without the upcaster the record is reported, not silently misread.
    assert list(read_file(str(path), damage.append)) == []
    assert "no upcaster from schema version 0" in damage[0].reason


def test_newer_schema_version_is_reported(tmp_path):
    path = tmp_path / "events.hlog"
    path.write_bytes(framing.frame(msgpack.packb({"v": 2, "node": "alpha", "n": 1, "mono": 1, "wall": 1, "k": "x"})))
    damage: list = []
    assert list(read_file(str(path), damage.append)) == []
    assert "newer" in damage[0].reason


def test_last_record_finds_the_end_of_a_large_file(tmp_path):
    path = str(tmp_path / "events.hlog")
    numbers = write_events(path, 12_000)  # larger than the tail the writer reads at a restart
    assert os.path.getsize(path) > 1 << 20
    assert reader.last_record(path)["n"] == numbers[-1]
    assert reader.first_record(path)["n"] == 1


def test_writer_rejects_unknown_durability(tmp_path):
    with pytest.raises(ValueError, match="durability"):
        Writer(str(tmp_path / "events.hlog"), "alpha", durability="sometimes")
