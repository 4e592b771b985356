"""The daemon's log lines go out on a thread of their own: a reader that stops reading (journald
hung, a pipe nobody drains) must never hold up a failover. Lines wait in a bounded queue; past it
they are dropped and counted, and the count is written as soon as lines flow again."""
from __future__ import annotations

import logging
import logging.handlers
import queue
import threading
import time
from typing import TextIO

MAX_WAITING = 10_000   # lines held for a slow reader: minutes of a busy daemon's log
STOP_WAIT_S = 1.0      # at exit, the longest spent writing what is still held


class _DroppingHandler(logging.handlers.QueueHandler):
    """Formats in the caller's thread and queues; never blocks: a full queue drops the line."""

    def __init__(self, lines: queue.Queue):
        super().__init__(lines)
        self.dropped = 0  # only ever grows: the writer compares, so no lock is needed

    def enqueue(self, record: logging.LogRecord) -> None:
        record.dropped_before = self.dropped  # the writer says so in this place
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class LineWriter:
    """Made, it is the root logger's one handler, writing to ``stream`` on its own thread;
    ``stop()`` writes what is held, for at most STOP_WAIT_S."""

    def __init__(self, stream: TextIO, level: int, fmt: str, max_waiting: int = MAX_WAITING):
        self._lines: queue.Queue = queue.Queue(max_waiting)
        self._out = logging.StreamHandler(stream)
        self.handler = _DroppingHandler(self._lines)
        self.handler.setFormatter(logging.Formatter(fmt))
        self._reported = 0
        self._thread = threading.Thread(target=self._pump, name="hanet-log", daemon=True)
        root = logging.getLogger()
        root.handlers[:] = [self.handler]
        root.setLevel(level)
        self._thread.start()

    def _pump(self) -> None:
        while True:
            record = self._lines.get()
            dropped = self.handler.dropped if record is None else record.dropped_before
            if dropped > self._reported:
                note = logging.makeLogRecord({
                    "name": "hanet", "levelno": logging.WARNING, "levelname": "WARNING",
                    "msg": f"{dropped - self._reported} log lines dropped: their reader did not take them"})
                self._out.handle(self.handler.prepare(note))
                self._reported = dropped
            if record is None:
                return
            self._out.handle(record)

    def stop(self) -> None:
        deadline = time.monotonic() + STOP_WAIT_S
        try:
            self._lines.put(None, timeout=STOP_WAIT_S)
        except queue.Full:
            return  # the reader is gone: what is held stays unwritten
        self._thread.join(max(0.0, deadline - time.monotonic()))
