"""The event log writer when the disk refuses: no exception, a degraded state, bounded memory,
and a gap record once the file takes writes again. Failures are injected at the system-call
boundary (the Nth write, fdatasync, open, rename ... fails with a chosen errno, or a write is
cut short in the middle of a record); everything else is the real file system."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from hanet import machine, model
from hanet.eventlog import Writer, read_files, rotated_set
from hanet.eventlog.writer import Degradation, FileOps

STEP = machine.Step(src="Monitoring", dst="Failing-Over", trigger="heartbeat.lost",
                    reason="heartbeats lost on the active path", active=1,
                    actions=(model.PauseMonitoring(id=1, path=0), model.EnableNic(id=2, path=1)))


def oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class FaultyOps(FileOps):
    """The real system calls, except the ones a test scripts to fail.

    ``fail(op, code, nth=1, times=1)``: the nth call of ``op`` from now on, and the ``times - 1``
    after it, raise OSError(code). ``full = True``: every write raises ENOSPC until set False.
    ``short_next(k)``: the next write hands only ``k`` bytes to the kernel.
    """

    def __init__(self):
        self.calls: Counter[str] = Counter()
        self.faults: dict[str, list[list[int]]] = {}
        self.full = False
        self._short: int | None = None

    def fail(self, op: str, code: int, nth: int = 1, times: int = 1) -> None:
        self.faults.setdefault(op, []).append([self.calls[op] + nth, times, code])

    def short_next(self, k: int | None) -> None:
        self._short = k

    def _check(self, op: str) -> None:
        self.calls[op] += 1
        for fault in self.faults.get(op, ()):
            first, times, code = fault
            if first <= self.calls[op] < first + times:
                raise oserror(code)

    def open(self, path, flags, mode=0o777):
        self._check("open")
        return os.open(path, flags, mode)

    def write(self, fd, data):
        self._check("write")
        if self.full:
            raise oserror(errno.ENOSPC)
        if self._short is not None:
            data, self._short = bytes(data[:self._short]), None
        return os.write(fd, data)

    def fdatasync(self, fd):
        self._check("fdatasync")
        os.fdatasync(fd)

    def fsync(self, fd):
        self._check("fsync")
        os.fsync(fd)

    def close(self, fd):
        self._check("close")
        os.close(fd)

    def replace(self, src, dst):
        self._check("replace")
        os.replace(src, dst)

    def unlink(self, path):
        self._check("unlink")
        os.unlink(path)


class Health:
    """Records on_health calls."""

    def __init__(self):
        self.calls: list[tuple[bool, Degradation]] = []

    def __call__(self, degraded: bool, detail: Degradation) -> None:
        self.calls.append((degraded, detail))


def read_all(*paths):
    damage: list = []
    entries = list(read_files(paths, damage.append))
    return entries, damage


def new_writer(tmp_path, ops, health=None, **kwargs):
    kwargs.setdefault("retry_interval_ns", 0)
    return Writer(str(tmp_path / "events.hlog"), "alpha", ops=ops, on_health=health, **kwargs)


def suspect(i: int) -> model.Event:
    return model.HeartbeatSuspect(t_ns=i, path=0, misses=1)


def gaps(entries):
    return [e.record for e in entries if e.record["k"] == "gap"]


def test_full_disk_then_space_again_writes_a_gap_record_before_newer_records(tmp_path):
    ops, health = FaultyOps(), Health()
    w = new_writer(tmp_path, ops, health, max_pending_bytes=1024)
    assert [w.event(suspect(i)) for i in range(3)] == [1, 2, 3]
    ops.full = True
    numbers = [w.event(suspect(i)) for i in range(3, 40)]  # more than 1 KiB: some must be dropped
    cause = w.event(model.HeartbeatLost(t_ns=40, path=0, misses=3))
    assert w.transition(STEP, cause) == cause + 1  # returns at once, numbered, no exception
    # 4 could not be written: the gap record that will follow it takes number 5 now.
    assert numbers == [4] + list(range(6, 42))
    down = w.degraded
    assert down is not None and down.errno == "ENOSPC" and "No space left" in down.reason
    assert health.calls == [(True, health.calls[0][1])] and health.calls[0][1].errno == "ENOSPC"
    assert len(down.lost) == 1
    first_lost, last_lost = down.lost[0]
    assert last_lost == cause + 1 and first_lost > 4
    assert w.counters.records_lost == last_lost - first_lost + 1
    assert w.counters.write_errors >= 1

    ops.full = False
    after = w.event(suspect(99))
    assert w.degraded is None
    assert [c[0] for c in health.calls] == [True, False]
    assert health.calls[1][1].lost == ((first_lost, last_lost),)
    w.close()

    entries, damage = read_all(w.path)
    assert [d.gap for d in damage] == [True]
    numbers_in_file = [e.record["n"] for e in entries]
    # Every record held while the disk was full is there, whole, in order, the gap record in
    # the place where the failure began; then the newer ones. The dropped numbers appear nowhere.
    assert after == last_lost + 1
    assert numbers_in_file == list(range(1, first_lost)) + [after]
    gap = gaps(entries)[0]
    assert gap["n"] == 5 and entries[4].record is gap and gap["g"]["lost"] == [[first_lost, last_lost]]
    assert gap["g"]["errno"] == "ENOSPC" and gap["g"]["unsure"] == []
    assert damage[0].offset == entries[4].offset


def test_a_write_cut_short_in_the_middle_of_a_record_is_finished_after_recovery(tmp_path):
    ops = FaultyOps()
    w = new_writer(tmp_path, ops)
    w.event(suspect(1))
    ops.short_next(7)             # the record's header is only partly in the file ...
    ops.fail("write", errno.EIO)  # ... and the next write, for the rest, fails
    w.event(suspect(2))
    assert w.degraded is not None and w.degraded.errno == "EIO"
    first_size = os.path.getsize(w.path) - 7  # record 1, then 7 bytes of record 2
    assert first_size > 7 and w.counters.write_errors == 1
    w.event(suspect(3))  # retried (interval 0): the rest of record 2, the gap, record 4 ... 
    assert w.degraded is None
    w.close()
    entries, damage = read_all(w.path)
    assert [e.record["k"] for e in entries] == ["event", "event", "gap", "event"]
    assert [e.record["n"] for e in entries] == [1, 2, 3, 4]
    assert gaps(entries)[0]["g"]["lost"] == [] and len(damage) == 1  # the gap, nothing torn


def test_failed_fdatasync_marks_unsynced_records_unsure_and_reopens(tmp_path):
    ops, health = FaultyOps(), Health()
    w = new_writer(tmp_path, ops, health)
    cause = w.event(suspect(1))
    w.transition(STEP, cause)                 # synced: 1, 2
    cause = w.event(model.HeartbeatLost(t_ns=2, path=0))
    opens = ops.calls["open"]
    ops.fail("fdatasync", errno.EIO)
    tr = w.transition(STEP, cause)            # 3, 4 written, the sync fails
    down = w.degraded
    assert down.errno == "EIO" and down.unsure == ((3, 4),) and down.lost == ()
    assert w.counters.sync_errors == 1 and w.counters.records_unsure == 2
    assert w._fd < 0  # closed: the next write goes through a fresh descriptor
    nxt = w.event(suspect(3))
    assert w.degraded is None and ops.calls["open"] == opens + 1
    w.close()
    entries, damage = read_all(w.path)
    # Nothing is written twice: records 3 and 4 were handed to the kernel once.
    assert [e.record["n"] for e in entries] == [1, 2, 3, tr, tr + 1, nxt]
    assert gaps(entries)[0]["g"]["unsure"] == [[3, 4]]
    assert len(damage) == 1 and "records 3-4 may be lost (fdatasync failed)" in str(damage[0])
    assert [c[0] for c in health.calls] == [True, False]


def test_failed_fdatasync_of_the_gap_record_keeps_the_writer_degraded(tmp_path):
    ops = FaultyOps()
    w = new_writer(tmp_path, ops)
    w.event(suspect(1))
    ops.fail("fdatasync", errno.EIO, times=2)
    w.transition(STEP, 1)        # the sync fails: 1 (never synced) and 2 are unsure; gap 3 due
    w.event(suspect(2))          # recovery writes gap 3, whose sync fails too: gap 4 due, 5 held
    assert w.degraded is not None and w.degraded.unsure == ((1, 3),)
    w.event(suspect(3))          # gap 4, 5, then 6
    assert w.degraded is None
    w.close()
    entries, _ = read_all(w.path)
    assert [e.record["n"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [(g["n"], g["g"]["unsure"]) for g in gaps(entries)] == [(3, [[1, 2]]), (4, [[1, 3]])]


@pytest.mark.parametrize("op, code", [("replace", errno.EROFS), ("fsync", errno.EIO),
                                      ("fdatasync", errno.EIO), ("open", errno.ENOSPC)])
def test_failure_during_rotation(tmp_path, op, code):
    ops, health = FaultyOps(), Health()
    state = {"state": "Monitoring"}
    w = new_writer(tmp_path, ops, health, rotate_bytes=2048, keep=10,
                   params=lambda: {"multiplier": 3}, snapshot=lambda: dict(state))
    numbers = []
    while not os.path.exists(f"{w.path}.1"):
        numbers.append(w.event(suspect(len(numbers))))
    size_before = os.path.getsize(w.path)
    while os.path.getsize(w.path) < 2048 or os.path.getsize(w.path) == size_before:
        numbers.append(w.event(suspect(len(numbers))))
    ops.fail(op, code)
    numbers.append(w.event(suspect(len(numbers))))  # rotates, a step fails, the append retries
    assert [(c[0], c[1].errno) for c in health.calls] == [(True, errno.errorcode[code]),
                                                          (False, errno.errorcode[code])]
    assert w.degraded is None
    for _ in range(60):  # and rotation works again
        numbers.append(w.event(suspect(len(numbers))))
    w.close()
    files = rotated_set(w.path)
    entries, damage = read_all(*files)
    got = [e.record["n"] for e in entries if e.record["k"] == "event"]
    assert got == [n for n in numbers if n in got] and len(set(got)) == len(got)
    all_numbers = [e.record["n"] for e in entries]
    assert all_numbers == sorted(all_numbers)
    assert len(gaps(entries)) == 1 and len(damage) == 1
    gap = gaps(entries)[0]["g"]
    assert gap["lost"] == []
    # A file that was created anew by the recovery starts with the gap, then config + snapshot.
    for f in files:
        kinds = [e.record["k"] for e in entries if e.file == f][:3]
        assert kinds[:2] == ["config", "snapshot"] or kinds == ["gap", "config", "snapshot"] \
            or f == files[0]


def test_memory_stays_bounded_while_the_disk_stays_full(tmp_path):
    ops, health = FaultyOps(), Health()
    w = new_writer(tmp_path, ops, health, max_pending_bytes=16 * 1024)
    w.event(suspect(0))
    ops.full = True
    for i in range(20_000):
        if i % 10 == 9:
            w.transition(STEP, w.n)
        else:
            w.event(suspect(i))
    assert len(w._pending) <= 16 * 1024
    down = w.degraded
    assert len(down.lost) == 1 and down.lost[0][1] == w.n
    held = w._held_count()
    assert w.counters.records_lost == 20_000 - held
    assert len(health.calls) == 1
    w.close()  # still full: what is held is counted lost too, nothing raises
    assert w.counters.records_lost == 20_000
    entries, _ = read_all(w.path)
    assert [e.record["n"] for e in entries] == [1]


def test_appends_retry_at_most_once_per_interval_and_retry_always_tries(tmp_path):
    now = [0]
    ops = FaultyOps()
    w = Writer(str(tmp_path / "events.hlog"), "alpha", ops=ops, retry_interval_ns=1_000_000_000,
               mono_ns=lambda: now[0])
    w.event(suspect(0))
    ops.full = True
    w.event(suspect(1))
    writes = ops.calls["write"]
    for i in range(50):
        w.event(suspect(i))
    assert ops.calls["write"] == writes  # no retry within the interval
    now[0] += 1_000_000_000
    w.event(suspect(99))
    assert ops.calls["write"] == writes + 1
    assert not w.retry() and ops.calls["write"] == writes + 2
    ops.full = False
    assert w.retry() and w.degraded is None
    calls = sum(ops.calls.values())
    assert w.retry() and sum(ops.calls.values()) == calls  # healthy: no system call at all


def test_an_unopenable_log_at_start_is_degraded_not_fatal(tmp_path):
    ops, health = FaultyOps(), Health()
    ops.fail("open", errno.EROFS)
    w = new_writer(tmp_path, ops, health, params=lambda: {"multiplier": 3}, retry_interval_ns=10**12)
    assert w.degraded is not None and w.degraded.errno == "EROFS" and w.n == 2  # 1: the gap
    assert not os.path.exists(w.path)
    assert w.retry() and w.degraded is None
    w.event(suspect(1))
    w.close()
    entries, _ = read_all(w.path)
    # The gap, the held config record, the config again (a replay may restart after a gap).
    assert [(e.record["k"], e.record["n"]) for e in entries] == \
        [("gap", 1), ("config", 2), ("config", 3), ("event", 4)]
    assert [c[0] for c in health.calls] == [True, False]


def test_close_never_raises(tmp_path):
    ops = FaultyOps()
    w = new_writer(tmp_path, ops)
    w.event(suspect(0))
    ops.fail("fdatasync", errno.EIO, times=10)
    ops.fail("close", errno.EIO)
    w.close()
    assert w.counters.sync_errors >= 1


# --------------------------------------------------------------------------- any sequence of faults
class WriterUnderFaults(RuleBasedStateMachine):
    """Appends interleaved with failures of every kind, then the disk heals: every record
    appended is in the log, whole and once, or named lost by a gap record; nothing else is
    damaged; record numbers only go up; the health callback alternates."""
    durability = "transition"

    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="hanet-faults-")
        self.ops, self.health = FaultyOps(), Health()
        self.writer = Writer(os.path.join(self.directory, "events.hlog"), "alpha", ops=self.ops,
                             on_health=self.health, rotate_bytes=1024, keep=1000, retry_interval_ns=0,
                             durability=self.durability,
                             max_pending_bytes=600, params=lambda: {"multiplier": 3},
                             snapshot=lambda: {"state": "Monitoring"})
        self.appended: list[int] = [1]  # the config record at open

    @rule(i=st.integers(0, 1000))
    def event(self, i):
        self.appended.append(self.writer.event(suspect(i)))

    @rule()
    def transition(self):
        self.appended.append(self.writer.transition(STEP, self.writer.n))

    @rule(full=st.booleans())
    def disk(self, full):
        self.ops.full = full

    @rule(op=st.sampled_from(["write", "fdatasync", "open", "replace", "fsync", "close"]),
          code=st.sampled_from([errno.EIO, errno.ENOSPC, errno.EROFS, errno.EDQUOT]),
          times=st.integers(1, 3))
    def fail(self, op, code, times):
        self.ops.fail(op, code, times=times)

    @rule(k=st.integers(1, 40))
    def short_write(self, k):
        self.ops.short_next(k)

    @rule()
    def retry(self):
        assert self.writer.retry() == (self.writer.degraded is None)

    @rule()
    def flush(self):
        self.writer.flush()

    @invariant()
    def memory_is_bounded(self):
        assert len(self.writer._pending) <= 600 + 2 * 400  # the bound, plus a gap and a record in flight

    def teardown(self):
        try:
            self.ops.full = False
            self.ops.faults.clear()
            self.ops.short_next(None)
            assert self.writer.retry() and self.writer.degraded is None
            self.writer.close()
            entries, damage = read_all(*rotated_set(self.writer.path))
            numbers = [e.record["n"] for e in entries]
            assert numbers == sorted(set(numbers))
            assert all(d.gap for d in damage)
            lost = {n for g in gaps(entries) for a, b in g["g"]["lost"] for n in range(a, b + 1)}
            for n in self.appended:
                assert (n in numbers) != (n in lost), n
            calls = [c[0] for c in self.health.calls]
            assert calls == [True, False] * (len(calls) // 2)
            assert len(gaps(entries)) >= len(calls) // 2
        finally:
            shutil.rmtree(self.directory)


class WriterUnderFaultsSyncingEvery(WriterUnderFaults):
    durability = "every"


class WriterUnderFaultsNeverSyncing(WriterUnderFaults):
    durability = "none"


for machine_class in (WriterUnderFaults, WriterUnderFaultsSyncingEvery, WriterUnderFaultsNeverSyncing):
    machine_class.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
test_writer_under_any_sequence_of_faults = WriterUnderFaults.TestCase
test_writer_under_any_sequence_of_faults_syncing_every_record = WriterUnderFaultsSyncingEvery.TestCase
test_writer_under_any_sequence_of_faults_never_syncing = WriterUnderFaultsNeverSyncing.TestCase
