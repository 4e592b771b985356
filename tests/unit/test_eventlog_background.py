"""The event log on its own thread: a disk that does not answer (every write and fdatasync held
until the test lets go, as on a frozen file system) costs a transition at most the wait, is
reported stalled, and loses nothing it can hold; what it cannot hold is named in a gap record."""
from __future__ import annotations

import os
import queue
import threading
import time

import pytest

from hanet import machine, model
from hanet.eventlog import Writer, read_file
from hanet.eventlog.background import BackgroundWriter
from hanet.eventlog.writer import FileOps

STEP = machine.Step(src="Monitoring", dst="Failing-Over", trigger="heartbeat.lost",
                    reason="heartbeats lost on the active path", active=1,
                    actions=(model.PauseMonitoring(id=1, path=0), model.EnableNic(id=2, path=1)))
WAIT_NS = 30_000_000


class HeldOps(FileOps):
    """The real system calls, except that while ``held`` every write and fdatasync waits."""

    def __init__(self):
        self.released = threading.Event()
        self.released.set()

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def write(self, fd, data):
        assert self.released.wait(10), "held for too long"
        return os.write(fd, data)

    def fdatasync(self, fd):
        assert self.released.wait(10), "held for too long"
        os.fdatasync(fd)


class Daemon:
    """The daemon's side: the loop's call_soon_threadsafe is a queue run by the test."""

    def __init__(self, path: str, ops: HeldOps, **kw):
        self.soon: queue.SimpleQueue = queue.SimpleQueue()
        self.health: list[tuple[bool, str]] = []
        self.log = BackgroundWriter(
            lambda on_health: Writer(path, "alpha", ops=ops, on_health=on_health),
            on_health=lambda degraded, detail: self.health.append((degraded, detail.reason)),
            call_soon=lambda fn, *args: self.soon.put((fn, args)), wait_ns=WAIT_NS, **kw)

    def run_soon(self) -> None:
        while True:
            try:
                fn, args = self.soon.get_nowait()
            except queue.Empty:
                return
            fn(*args)

    def settle(self, until, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, "did not settle"
            self.log.flush()
            time.sleep(0.01)
            self.run_soon()


def suspect(i: int) -> model.HeartbeatSuspect:
    return model.HeartbeatSuspect(t_ns=i, path=0, misses=1)


def records(path: str) -> list[dict]:
    """Every record; the only damage allowed is a gap (lost records the log itself names)."""
    damage = []
    out = [e.record for e in read_file(path, damage.append)]
    assert all(d.gap for d in damage), damage
    return out


@pytest.fixture
def log_path(tmp_path):
    return str(tmp_path / "events.hlog")


def test_a_disk_that_does_not_answer_costs_a_transition_the_wait_and_loses_nothing(log_path):
    ops = HeldOps()
    d = Daemon(log_path, ops)
    d.log.transition(STEP, d.log.event(suspect(1)))  # healthy: waits for its fdatasync
    assert not d.health and d.log.degraded is None
    ops.hold()
    t0 = time.monotonic()
    made_at = time.monotonic_ns()
    d.log.transition(STEP, d.log.event(suspect(2)))
    waited = time.monotonic() - t0
    assert WAIT_NS / 1e9 <= waited < WAIT_NS / 1e9 + 1.0
    assert "stalled" in d.log.degraded.reason and d.health == [(True, d.log.degraded.reason)]
    t0 = time.monotonic()
    for i in range(3, 10):  # while stalled, nothing waits
        d.log.transition(STEP, d.log.event(suspect(i)))
    assert time.monotonic() - t0 < WAIT_NS / 1e9
    ops.release()
    d.settle(lambda: d.log.degraded is None)
    assert d.health[-1][0] is False and len(d.health) == 2
    assert d.log.close()
    recs = [r for r in records(log_path) if r["k"] in ("event", "transition")]
    assert [r["n"] for r in recs] == list(range(recs[0]["n"], recs[0]["n"] + 18))  # in order, none lost
    events = [r for r in recs if r["k"] == "event"]
    assert [r["e"]["t_ns"] for r in events] == list(range(1, 10))
    for ev, tr in zip(recs[::2], recs[1::2]):
        assert tr["k"] == "transition" and tr["tr"]["cause"] == ev["n"]
    # Each record keeps the time it was made at, not the time the disk took it.
    assert made_at <= events[1]["mono"] < made_at + WAIT_NS


def test_only_a_transition_that_acts_waits_for_the_disk(log_path):
    # Monitoring -> Suspect changes nothing in the kernel: it waits for no fdatasync, so the loss
    # that follows it at once is handled at once; the failover that acts waits for both.
    ops = HeldOps()
    d = Daemon(log_path, ops)
    quiet = machine.Step(src="Monitoring", dst="Suspect", trigger="heartbeat.suspect",
                         reason="first missed reply on the active path", active=0, actions=())
    ops.hold()
    t0 = time.monotonic()
    d.log.transition(quiet, d.log.event(suspect(1)))
    assert time.monotonic() - t0 < WAIT_NS / 1e9 / 2 and d.log.degraded is None
    d.log.transition(STEP, d.log.event(suspect(2)))
    assert time.monotonic() - t0 >= WAIT_NS / 1e9 and "stalled" in d.log.degraded.reason
    ops.release()
    d.settle(lambda: d.log.degraded is None)
    assert d.log.close()
    assert [r["tr"]["dst"] for r in records(log_path) if r["k"] == "transition"] == ["Suspect", "Failing-Over"]


def test_records_beyond_the_queue_are_dropped_and_named_in_a_gap(log_path):
    ops = HeldOps()
    d = Daemon(log_path, ops, max_queued=4, durable=False)
    d.log.event(suspect(0))
    d.settle(lambda: d.log.n > 0 and d.log._done >= d.log._queued)
    ops.hold()
    for i in range(1, 11):
        d.log.event(suspect(i))
    ops.release()
    d.settle(lambda: d.log._done >= d.log._queued)
    d.log.event(suspect(11))  # the drop is handed over, numbered and named lost, before this one
    d.settle(lambda: d.log._done >= d.log._queued and d.log.degraded is None)
    lost_count = d.log.counters.records_lost
    assert lost_count >= 6 and d.log.counters.gaps_written == 1  # at most four waited
    assert d.log.close()
    recs = records(log_path)
    gap = next(r for r in recs if r["k"] == "gap")
    kept = [r["e"]["t_ns"] for r in recs if r["k"] == "event"]
    assert kept == list(range(12 - 1 - lost_count)) + [11]  # the first that fitted, then the last
    lost = gap["g"]["lost"]
    assert sum(b - a + 1 for a, b in lost) == lost_count
    eleven = next(r for r in recs if r["k"] == "event" and r["e"]["t_ns"] == 11)
    assert gap["n"] < lost[0][0] and lost[-1][1] < eleven["n"]


def test_a_record_the_writer_refuses_does_not_end_the_log(log_path):
    d = Daemon(log_path, HeldOps())
    d.log.config({"bad": object()}, durable=True)  # msgpack cannot encode it: the writer raises
    d.log.transition(STEP, d.log.event(suspect(1)))
    assert d.log.close()
    assert [r["e"]["t_ns"] for r in records(log_path) if r["k"] == "event"] == [1]


def test_close_gives_up_on_a_disk_that_does_not_answer(log_path):
    ops = HeldOps()
    d = Daemon(log_path, ops, close_wait_s=0.2)
    ops.hold()
    d.log.event(suspect(1))
    t0 = time.monotonic()
    assert d.log.close() is False
    assert time.monotonic() - t0 < 1.0
    ops.release()


def test_a_wait_of_zero_never_waits_and_never_reports_a_stall(log_path):
    ops = HeldOps()
    soon = []
    log = BackgroundWriter(lambda on_health: Writer(log_path, "alpha", ops=ops, on_health=on_health),
                           on_health=lambda *a: soon.append(a), call_soon=lambda fn, *a: fn(*a), wait_ns=0)
    ops.hold()
    t0 = time.monotonic()
    for i in range(5):
        log.transition(STEP, log.event(suspect(i)))
    assert time.monotonic() - t0 < 0.5 and log.degraded is None and not soon
    ops.release()
    assert log.close()
    assert [r["e"]["t_ns"] for r in records(log_path) if r["k"] == "event"] == list(range(5))
