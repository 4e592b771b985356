"""The event log on a thread of its own, so that a disk that hangs never holds up a failover.

A disk can refuse a write (ENOSPC, EIO: the writer turns degraded and says so) or not answer at
all: a frozen file system, a dying disk or a hung network file system block write() and
fdatasync() for as long as they last. So the daemon hands every record to this thread and waits
for a transition's fdatasync at most ``wait_ns``; past that it acts without it, and the log is
reported *stalled* until the thread has written everything handed to it. Records keep the times
they were made at. At most ``max_queued`` wait for the thread; beyond that they are dropped,
counted, and named lost in a gap record once the disk answers again.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

from .. import model
from .writer import Counters, Degradation, OnHealth, Writer

log = logging.getLogger("hanet")

#: Records that may wait for a stalled disk: minutes of a busy daemon's events.
DEFAULT_MAX_QUEUED = 5000

_EVENT, _TRANSITION, _CONFIG, _FLUSH, _LOST, _CLOSE = range(6)


class BackgroundWriter:
    """``Writer``'s face for the daemon's thread; the writer itself lives on a thread of its own.

    ``open_writer(on_health)`` builds the Writer (on that thread: opening a log reads and writes
    the disk). ``on_health(degraded, detail)`` is called on the daemon's thread, through
    ``call_soon`` (the event loop's ``call_soon_threadsafe``), when the log starts or stops being
    degraded or stalled. ``durable``: whether transitions wait for their fdatasync at all (they
    do not with ``wait_ns`` 0).

    ``event(ev)`` returns a token that ``transition(step, cause=token)`` names as its cause; no
    call waits on the disk except ``transition`` (one with actions) and ``config(durable=True)``, for at most
    ``wait_ns`` while the log is not stalled, and ``close()``, for at most ``close_wait_s``.
    """

    def __init__(self, open_writer: Callable[[OnHealth], Writer], *, on_health: OnHealth,
                 call_soon: Callable[..., Any], wait_ns: int, durable: bool = True,
                 max_queued: int = DEFAULT_MAX_QUEUED, close_wait_s: float = 2.0,
                 mono_ns: Callable[[], int] = time.monotonic_ns, wall_ns: Callable[[], int] = time.time_ns):
        self._open_writer, self._on_health, self._call_soon = open_writer, on_health, call_soon
        # wait_ns 0: never wait, so never stalled either (the fdatasync then follows the act).
        self._wait_s, self._durable, self._close_wait_s = wait_ns / 1e9, durable and wait_ns > 0, close_wait_s
        self._max_queued = max_queued
        self._mono_ns, self._wall_ns = mono_ns, wall_ns
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0            # items handed over so far (daemon thread's count)
        self._done = 0              # items the log thread has finished (its count)
        self._dropped = 0           # records dropped since the last one that went through
        self._flush_queued = False
        self._token = 0
        self._writer: Writer | None = None
        self._failure: Degradation | None = None   # the writer's own (refusing disk)
        self._stall: Degradation | None = None     # the thread's (a disk that does not answer)
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="hanet-eventlog", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the daemon's side
    @property
    def n(self) -> int:
        """The number of the last record the writer has taken (0 before it has opened)."""
        return self._writer.n if self._writer is not None else 0

    @property
    def counters(self) -> Counters:
        return self._writer.counters if self._writer is not None else Counters()

    @property
    def degraded(self) -> Degradation | None:
        return self._stall or self._failure

    def event(self, ev: model.Event) -> int:
        self._token += 1
        self._hand_over((_EVENT, ev, self._stamps(), self._token))
        return self._token

    def transition(self, step, cause: int) -> None:
        """Hand over a transition. One that acts waits (bounded) for its fdatasync unless the log
        is stalled: it is on the disk before the kernel is changed. One without actions waits for
        nothing, so an event that follows it at once (the loss after a suspicion) is not held up;
        the next that acts waits for it too, as the log is written in order."""
        done = threading.Event() if step.actions and self._durable and self._stall is None else None
        if self._hand_over((_TRANSITION, step, self._stamps(), cause, done)) and done is not None:
            self._wait(done)

    def config(self, params: dict[str, Any], durable: bool = False) -> None:
        done = threading.Event() if durable and self._durable and self._stall is None else None
        if self._hand_over((_CONFIG, params, self._stamps(), durable, done)) and done is not None:
            self._wait(done)

    def flush(self) -> None:
        """Write what is held, and retry a refusing disk; never waits (one flush queued at most)."""
        if not self._flush_queued:
            self._flush_queued = True
            self._hand_over((_FLUSH,), droppable=False)
        self._check_caught_up()

    def close(self) -> bool:
        """Write what can be written within ``close_wait_s``; False if the disk did not answer
        (what was still queued is then lost, and said so in the daemon's log)."""
        done = threading.Event()
        self._hand_over((_CLOSE, done), droppable=False)
        if done.wait(self._close_wait_s):
            self._thread.join(self._close_wait_s)
            return True
        log.error("eventlog closed with %d records unwritten: the disk did not answer within %.1f s",
                  self._queued - self._done, self._close_wait_s)
        return False

    def _stamps(self) -> tuple[int, int]:
        return self._mono_ns(), self._wall_ns()

    def _hand_over(self, item: tuple, droppable: bool = True) -> bool:
        """Queue ``item`` for the thread; False if it was dropped because too many wait."""
        if droppable and self._queued - self._done >= self._max_queued:
            self._dropped += 1
            return False
        if self._dropped:
            self._queued += 1
            self._queue.put((_LOST, self._dropped))
            self._dropped = 0
        self._queued += 1
        self._queue.put(item)
        return True

    def _wait(self, done: threading.Event) -> None:
        if done.wait(self._wait_s):
            return
        waited_ms = self._wait_s * 1e3
        self._stall = Degradation(f"stalled {self._path()}: a record not on disk after {waited_ms:.0f} ms",
                                  "ETIMEDOUT", self._mono_ns())
        self._report()

    def _check_caught_up(self) -> None:
        """The stall ends once the thread has done everything handed to it."""
        if self._stall is not None and self._done >= self._queued:
            self._stall = None
            self._report(Degradation("caught up", "", self._mono_ns()))

    def _report(self, recovered: Degradation | None = None) -> None:
        degraded = self.degraded
        if (degraded is not None) != self._reported:
            self._reported = degraded is not None
            self._on_health(self._reported, degraded or recovered)

    def _path(self) -> str:
        return self._writer.path if self._writer is not None else "the event log"

    # ------------------------------------------------------------------ the log thread
    def _run(self) -> None:
        writer = self._writer = self._open_writer(self._writer_health)
        last_event = (0, 0)  # (token, record number): a transition's cause is the event just before it
        while True:
            item = self._queue.get()
            kind, done = item[0], None
            try:
                if kind == _EVENT:
                    _, ev, stamps, token = item
                    last_event = (token, writer.event(ev, stamps))
                elif kind == _TRANSITION:
                    _, step, stamps, cause, done = item
                    writer.transition(step, last_event[1] if last_event[0] == cause else 0, stamps)
                elif kind == _CONFIG:
                    _, params, stamps, durable, done = item
                    writer.config(params, durable, stamps)
                elif kind == _FLUSH:
                    self._flush_queued = False
                    writer.flush()
                elif kind == _LOST:
                    writer.note_lost(item[1], f"{item[1]} records dropped while the disk did not answer")
                elif kind == _CLOSE:
                    writer.close()
            except Exception:  # noqa: BLE001 - one record the writer refused must not end the log
                log.exception("eventlog: a record could not be written")
            finally:
                if done is not None:
                    done.set()
                self._done += 1
            if kind == _CLOSE:
                item[1].set()
                return
            if self._stall is not None and self._done >= self._queued:
                self._call_soon(self._check_caught_up)

    def _writer_health(self, degraded: bool, detail: Degradation) -> None:
        def apply() -> None:
            self._failure = detail if degraded else None
            self._report(detail)
        self._call_soon(apply)
