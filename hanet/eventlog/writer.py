"""Append records to a node's event log: framing, the durability policy, size-based rotation,
and what happens when the disk refuses.

The shell writes an event's record, steps the machine, then writes the transition; the writer
makes the transition durable (``fdatasync``) before ``transition()`` returns, so no action is
carried out that the log could lose. Durability policies (config ``eventlog.durability``):

    "transition"  fdatasync after each transition record and each record asked durable
    "every"       fdatasync after every record
    "none"        never fdatasync (the page cache decides)

Records go out through one buffer in order, and the buffer is written before every fdatasync,
so an event record always reaches the file before the transition it caused is made durable.

Rotation happens only before an event record, once the file has reached ``rotate_bytes``: a
transition then always sits in the file of the event that caused it, and the snapshot at the top
of the new file is the state that the file's first event folds into.

A log that cannot be written is reported, never obeyed: failing over must not depend on the
disk. No I/O error (ENOSPC, EDQUOT, EIO, EROFS, ...) of open, write, fdatasync, close or the
renames of a rotation leaves the writer; it turns *degraded* instead (see ``Writer``), keeps
numbering records, holds at most ``max_pending_bytes`` of them, counts the rest as lost, and
once the file takes writes again writes a "gap" record naming what was lost, in the place
where the failure began.
"""
from __future__ import annotations

import errno as errno_names
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from .. import model
from ..config import DURABILITY, EventLogConfig
from . import framing, reader, schema

FILE_MODE = 0o640
#: Bytes held before a write(). 0 writes each record at once: measured ~125k records/s against
#: ~150k/s with a 64 KiB buffer (bench/bench_eventlog.py), far above any daemon's event rate,
#: and no record then waits inside the process for a crash to lose it.
DEFAULT_BUFFER_BYTES = 0
#: Records held while the disk refuses them; beyond this they are dropped and counted as lost.
#: 1 MiB is some 5,000 records: minutes of a busy daemon's events.
DEFAULT_MAX_PENDING_BYTES = 1 << 20
#: How often an append retries a refusing disk (``retry()`` always tries).
DEFAULT_RETRY_INTERVAL_NS = 1_000_000_000
#: Lost-number ranges kept per failure; past this the newest ones are merged into one.
MAX_RANGES = 64


class FileOps:
    """The system calls the writer makes, in one object so that tests can make any of them
    fail (a chosen errno on the Nth call, a short write). These defaults are the os functions
    themselves: the hot path calls them with no wrapper in between."""
    open = staticmethod(os.open)
    write = staticmethod(os.write)
    fdatasync = staticmethod(os.fdatasync)
    fsync = staticmethod(os.fsync)
    close = staticmethod(os.close)
    fstat = staticmethod(os.fstat)
    replace = staticmethod(os.replace)
    unlink = staticmethod(os.unlink)
    makedirs = staticmethod(os.makedirs)


@dataclass(frozen=True)
class Degradation:
    """Why the log is not being written, since when, and which records it has not kept.

    ``lost``: record-number ranges (first, last), inclusive, that never reached the file.
    ``unsure``: ranges that were written, but a failed fdatasync since means the kernel may have
    dropped them. ``since_ns`` is CLOCK_MONOTONIC at the first failure.
    """
    reason: str
    errno: str
    since_ns: int
    lost: tuple[tuple[int, int], ...] = ()
    unsure: tuple[tuple[int, int], ...] = ()

    def __str__(self) -> str:
        parts = [self.reason]
        if self.lost:
            parts.append(f"lost records {_ranges_text(self.lost)}")
        if self.unsure:
            parts.append(f"records {_ranges_text(self.unsure)} may be lost (fdatasync failed)")
        return "; ".join(parts)


@dataclass
class Counters:
    """Totals since the writer opened (exported as metrics by the daemon)."""
    records_lost: int = 0     # records dropped, never written
    records_unsure: int = 0   # records written before a failed fdatasync
    write_errors: int = 0     # failed write() calls
    sync_errors: int = 0      # failed fdatasync() calls
    open_errors: int = 0      # failed open / rotation / close
    gaps_written: int = 0


OnHealth = Callable[[bool, Degradation], None]
Stamps = tuple[int, int]


@dataclass
class _Failure:
    """The writer's own record of the failure in progress."""
    reason: str
    errno: str
    since_ns: int
    lost: list[list[int]] = field(default_factory=list)
    unsure: list[list[int]] = field(default_factory=list)
    next_retry_ns: int = 0
    #: The first record dropped since the held ones were last written (0: none). Once one is
    #: dropped all later ones are, so the held records stay consecutive and the lost range one.
    drop_from: int = 0

    def snapshot(self) -> Degradation:
        return Degradation(self.reason, self.errno, self.since_ns,
                           tuple(tuple(r) for r in self.lost), tuple(tuple(r) for r in self.unsure))


class Writer:
    """One node's append-only log at ``path`` (rotated files are path.1 ... path.keep).

    Constructor (all but ``path`` and ``node`` keyword-only; a bad value raises ValueError)::

        Writer(path, node, durability="transition", rotate_bytes=64 MiB, keep=8,
               params=None, snapshot=None, buffer_bytes=0,
               max_pending_bytes=1 MiB, retry_interval_ns=1_000_000_000,
               on_health=None, ops=None, mono_ns=time.monotonic_ns, wall_ns=time.time_ns)
        Writer.from_config(cfg.eventlog, node, **any of the keyword arguments above)

    ``params()`` and ``snapshot()`` return the machine's parameters and state. ``params`` is
    written when the writer opens (a daemon start); both are written at the top of every
    rotated-in file and right after every gap record, so that a replay can check again from
    there. Record numbers continue from the last record already in the log. ``ops`` (default
    ``FileOps()``) makes the system calls. Not thread-safe: one writer per log, used from one
    thread (the daemon's is ``background.BackgroundWriter``'s, so that no disk holds it up).

    Records, each returning its record number ``n``: ``event(ev)``, ``transition(step, cause)``
    (fdatasync'd before it returns, unless durability is "none" or the writer is degraded),
    ``config(params, durable=False)``, ``snapshot(state, durable=False)``,
    ``append(kind, body, durable=False)``. Kinds (schema.py): "event", "transition", "config",
    "snapshot", and "gap", which only the writer itself writes.

    No I/O error leaves any method (only a bad argument, a body msgpack cannot encode, or an
    exception raised by ``on_health`` itself). Every append returns its number at once, written
    or not. The health of the log:

    ``degraded`` -> None while healthy, else a ``Degradation``: ``reason`` ("write PATH: No
        space left on device"), ``errno`` ("ENOSPC"), ``since_ns`` (CLOCK_MONOTONIC at the first
        failure), ``lost`` and ``unsure`` (inclusive record-number ranges so far).
    ``on_health(degraded: bool, detail: Degradation)`` -> called exactly once with True when a
        failure begins and once with False, with the final detail, when the gap record has been
        written and (unless durability is "none") fdatasync'd.
    ``retry() -> bool`` -> try to write again now; True when healthy. The shell calls it
        periodically; when healthy it costs one attribute test and no system call. Appends
        retry too, at most once per ``retry_interval_ns``; ``flush()``, ``sync()`` and
        ``close()`` always do.
    ``counters`` -> a ``Counters``: records_lost, records_unsure, write_errors, sync_errors,
        open_errors, gaps_written.
    ``n`` -> the number of the last record appended (or reserved for a gap).

    While degraded, records are held in order up to ``max_pending_bytes``; from the first one
    that does not fit, every record is dropped and its number listed as lost until the held
    ones are written. When the failure begins, the gap record's number and place are taken:
    after the records held so far, before any appended later, so it precedes every record it
    may be missing; it is written, naming everything lost until then, once the file takes
    writes again. After a failed fdatasync the kernel may have dropped the dirty pages and
    reports the error only once, so the records since the last good fdatasync are listed as
    unsure (not rewritten: they may well be in the file, and would then be there twice), and
    the file is closed and opened again on recovery: a fresh descriptor on whatever file is at
    ``path`` (a new one if a rotation failed half-way). ``close()`` on a disk that still
    refuses counts what it holds as lost; no gap record can say so then.
    """

    def __init__(self, path: str, node: str, *, durability: str = "transition",
                 rotate_bytes: int = EventLogConfig.rotate_bytes, keep: int = EventLogConfig.keep,
                 params: Callable[[], dict[str, Any]] | None = None,
                 snapshot: Callable[[], dict[str, Any]] | None = None,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
                 retry_interval_ns: int = DEFAULT_RETRY_INTERVAL_NS,
                 on_health: OnHealth | None = None,
                 ops: FileOps | None = None,
                 mono_ns: Callable[[], int] = time.monotonic_ns,
                 wall_ns: Callable[[], int] = time.time_ns):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}; got {durability!r}")
        if keep < 1 or rotate_bytes < 1:
            raise ValueError("keep and rotate_bytes must be positive")
        if max_pending_bytes < buffer_bytes:
            raise ValueError("max_pending_bytes must be at least buffer_bytes")
        self.path, self.node = path, node
        self.durability, self.rotate_bytes, self.keep = durability, rotate_bytes, keep
        self._params, self._snapshot = params, snapshot
        self._buffer_bytes, self._max_pending = buffer_bytes, max_pending_bytes
        self._retry_interval = retry_interval_ns
        self._on_health = on_health
        self._ops = ops if ops is not None else FileOps()
        self._write = self._ops.write
        self._mono_ns, self._wall_ns = mono_ns, wall_ns
        self._packb = msgpack.Packer(use_bin_type=True).pack
        self._pending = bytearray()
        self._skip = 0  # bytes at the head of _pending that finish a frame cut by a short write
        self._sync_each = durability == "every"
        self._sync_durable = durability != "none"
        self.counters = Counters()
        self._failure: _Failure | None = None
        self._gap_at: tuple[int, int] | None = None  # (offset in _pending, number) of the gap due
        self._synced_n = 0   # the last record known to be on disk (or handed over, for "none")
        self._fd = -1
        self._size = 0
        try:
            self._n = _last_number(path)
        except OSError as exc:  # an unreadable log: numbering restarts, and the gap says why
            self._n = 0
            self._fail("read", exc)
        self._synced_n = self._n
        if self._failure is None:
            try:
                self._ops.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                self._open()
            except OSError as exc:
                self.counters.open_errors += 1
                self._fail("open", exc)
        if params is not None:
            self.config(params(), durable=True)

    @classmethod
    def from_config(cls, cfg: EventLogConfig, node: str, **kwargs) -> "Writer":
        return cls(cfg.path, node, durability=cfg.durability, rotate_bytes=cfg.rotate_bytes,
                   keep=cfg.keep, **kwargs)

    @property
    def n(self) -> int:
        """The number of the last record appended (0 if the log is new), written or not."""
        return self._n

    @property
    def degraded(self) -> Degradation | None:
        """None while the log is written; else why not, since when, and what was lost."""
        failure = self._failure
        return None if failure is None else failure.snapshot()

    # ------------------------------------------------------------------ records
    # ``stamps``: (CLOCK_MONOTONIC, CLOCK_REALTIME) ns of when the record was made, if not now
    # (records handed over from another thread keep the times they were made at).
    def event(self, event: model.Event, stamps: Stamps | None = None) -> int:
        """Append an input event; returns its record number (the ``cause`` of its transition)."""
        if self._size >= self.rotate_bytes and self._failure is None:
            self._rotate()
        return self.append(schema.EVENT, model.to_dict(event), stamps=stamps)

    def transition(self, step, cause: int, stamps: Stamps | None = None) -> int:
        """Append a machine.Step caused by record ``cause``; durable on return unless "none"."""
        return self.append(schema.TRANSITION, schema.transition_body(step, cause), durable=True, stamps=stamps)

    def config(self, params: dict[str, Any], durable: bool = False, stamps: Stamps | None = None) -> int:
        return self.append(schema.CONFIG, params, durable, stamps)

    def snapshot(self, state: dict[str, Any], durable: bool = False) -> int:
        return self.append(schema.SNAPSHOT, state, durable)

    def append(self, kind: str, body: Any, durable: bool = False, stamps: Stamps | None = None) -> int:
        """Append one record of ``kind``; fdatasync per the policy. Returns its number."""
        if self._failure is not None and not self._retry_due():
            return self._hold(kind, body, stamps)
        n = self._n + 1
        mono, wall = stamps or (self._mono_ns(), self._wall_ns())
        data = framing.frame(self._packb(schema.record(self.node, n, mono, wall, kind, body)))
        self._n = n  # only once encoded: a body msgpack cannot encode leaves no gap in the numbers
        self._pending += data
        self._size += len(data)
        if self._sync_each or durable and self._sync_durable:
            self.sync()
        elif len(self._pending) >= self._buffer_bytes:
            self.flush()
        return n

    # ------------------------------------------------------------------ failure and recovery
    def retry(self) -> bool:
        """Try to write the log again now; True if it is healthy (then this costs nothing)."""
        if self._failure is None:
            return True
        return self._recover()

    def _retry_due(self) -> bool:
        """While degraded: recover if an append-triggered retry is due and works."""
        failure = self._failure
        if self._mono_ns() < failure.next_retry_ns:
            return False
        return self._recover()

    def _hold(self, kind: str, body: Any, stamps: Stamps | None = None) -> int:
        """Append while degraded: keep the record if there is room, else count it lost."""
        n = self._n + 1
        mono, wall = stamps or (self._mono_ns(), self._wall_ns())
        data = framing.frame(self._packb(schema.record(self.node, n, mono, wall, kind, body)))
        self._n = n
        failure = self._failure
        if not failure.drop_from and len(self._pending) + len(data) <= self._max_pending:
            self._pending += data
            self._size += len(data)
        else:
            failure.drop_from = failure.drop_from or n
            _add(failure.lost, n, n)
            self.counters.records_lost += 1
        return n

    def note_lost(self, count: int, why: str) -> None:
        """``count`` records were made but never reached this writer (dropped on the way): their
        numbers are taken and listed as lost, and the gap record names them, in this place."""
        if count <= 0:
            return
        if self._failure is None:
            self._fail("hand over to", OSError(errno_names.ETIMEDOUT, why))
            self._failure.next_retry_ns = 0  # the disk may well answer again at once
        first, self._n = self._n + 1, self._n + count
        _add(self._failure.lost, first, self._n)
        self.counters.records_lost += count

    def _fail(self, what: str, exc: OSError) -> None:
        """Enter (or stay in) the degraded state because ``what`` failed with ``exc``."""
        name = errno_names.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else "EIO"
        reason = f"{what} {exc.filename or self.path}: {exc.strerror or exc}"
        now = self._mono_ns()
        if self._gap_at is None:
            # The gap record's place and number are taken now: it will sit after the records
            # held so far and before any appended from here on, which it may be missing.
            self._n += 1
            self._gap_at = (len(self._pending), self._n)
        failure = self._failure
        if failure is None:
            failure = self._failure = _Failure(reason, name, now)
            failure.next_retry_ns = now + self._retry_interval
            if self._on_health is not None:
                self._on_health(True, failure.snapshot())
        else:
            failure.reason, failure.errno = reason, name
            failure.next_retry_ns = now + self._retry_interval

    def _sync_failed(self, exc: OSError) -> None:
        """fdatasync failed: what it covered may be gone, and the error is reported only once."""
        self.counters.sync_errors += 1
        first, last = self._synced_n + 1, self._n_in_file()
        self._fail("fdatasync", exc)
        if first <= last:
            _add(self._failure.unsure, first, last)
            self.counters.records_unsure += last - first + 1
        self._synced_n = last  # reported once: a later failure names only newer records
        self._close_quietly()

    def _held_last(self) -> int:
        """The number of the newest record in ``_pending``."""
        failure = self._failure
        return failure.drop_from - 1 if failure is not None and failure.drop_from else self._n

    def _held_count(self) -> int:
        """Records in ``_pending``, counting one cut by a short write."""
        buf, pos = self._pending, self._skip
        count = 1 if pos else 0
        while pos < len(buf):
            count += 1
            pos += framing.HEADER_SIZE + framing.HEADER.unpack_from(buf, pos)[1]
        return count

    def _n_in_file(self) -> int:
        """The last record number handed whole to the kernel (no gap is reserved here)."""
        return self._held_last() - self._held_count()

    def _first_held(self) -> int:
        """The number of the oldest record in ``_pending`` (which holds at least one)."""
        buf, pos = self._pending, self._skip
        if pos or len(buf) < framing.HEADER_SIZE:
            return self._held_last() - self._held_count() + 1
        length = framing.HEADER.unpack_from(buf, 0)[1]
        return msgpack.unpackb(buf[framing.HEADER_SIZE:framing.HEADER_SIZE + length])["n"]

    def _recover(self) -> bool:
        """Reopen if needed, write what is held, then the gap record, and sync; True if healthy."""
        failure = self._failure
        failure.next_retry_ns = self._mono_ns() + self._retry_interval
        if self._fd < 0:
            try:
                self._ops.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self._open()
            except OSError as exc:
                self.counters.open_errors += 1
                self._fail("open", exc)
                return False
        gap = failure.snapshot()
        if self._gap_at is not None and not self._write_gap(gap):
            return False
        if not self._drain():
            return False
        failure.drop_from = 0  # the held records are out: later ones may be held again
        if self._sync_durable and not self._fdatasync():
            return False
        self.counters.gaps_written += 1
        self._failure = None
        if self._on_health is not None:
            self._on_health(False, gap)
        # The parameters and the state now: a replay can check again from here on.
        self._top_of_file()
        return True

    def _write_gap(self, gap: Degradation) -> bool:
        """Write the records held before the failure, then the gap record, naming all lost so
        far. A gap that could not be started stays due (one in memory, however long this lasts)."""
        offset, n = self._gap_at
        if offset and not self._drain(offset):
            return False
        body = {"lost": [list(r) for r in gap.lost], "unsure": [list(r) for r in gap.unsure],
                "reason": gap.reason, "errno": gap.errno, "since": gap.since_ns}
        data = framing.frame(self._packb(
            schema.record(self.node, n, self._mono_ns(), self._wall_ns(), schema.GAP, body)))
        done = 0
        try:
            while done < len(data):
                done += self._write(self._fd, data[done:])
        except OSError as exc:
            if done:  # cut short: the rest must follow in this file, before anything else
                self._gap_at = None
                self._pending[0:0] = data[done:]
                self._skip = len(data) - done
            self.counters.write_errors += 1
            self._fail("write", exc)
            return False
        self._gap_at = None
        self._size += len(data)
        return True

    # ------------------------------------------------------------------ file handling
    def flush(self) -> None:
        """Hand every buffered record to the kernel (while degraded: try to recover)."""
        if self._failure is not None:
            self._recover()
            return
        pending = self._pending
        if pending:
            try:
                written = self._write(self._fd, pending)
            except OSError as exc:
                self.counters.write_errors += 1
                self._fail("write", exc)
                return
            if written == len(pending):
                pending.clear()
                self._skip = 0
            else:
                self._consumed(written)
                self._drain()  # a short write: the rest, or the reason it cannot go

    def _drain(self, limit: int | None = None) -> bool:
        """Write everything pending (or its first ``limit`` bytes); False (and degraded) if the
        kernel refuses."""
        pending = self._pending
        try:
            while pending and (limit is None or limit > 0):
                # Bytes leave the buffer only once written: a failed write loses nothing held,
                # and a short write (a record cut in the middle) is continued in the same file.
                chunk = pending if limit is None or limit >= len(pending) else pending[:limit]
                written = self._write(self._fd, chunk)
                if limit is not None:
                    limit -= written
                if self._gap_at is not None:  # the gap's place moves with the buffer's head
                    self._gap_at = (self._gap_at[0] - written, self._gap_at[1])
                if written == len(pending):
                    pending.clear()
                    self._skip = 0
                else:
                    self._consumed(written)
        except OSError as exc:
            self.counters.write_errors += 1
            self._fail("write", exc)
            return False
        return True

    def _consumed(self, written: int) -> None:
        """Drop ``written`` bytes from the head of ``_pending``, noting where its frames begin."""
        buf, pos = self._pending, self._skip
        while pos < written:
            pos += framing.HEADER_SIZE + framing.HEADER.unpack_from(buf, pos)[1]
        self._skip = pos - written
        del buf[:written]

    def _fdatasync(self) -> bool:
        try:
            self._ops.fdatasync(self._fd)
        except OSError as exc:
            self._sync_failed(exc)
            return False
        self._synced_n = self._n
        return True

    def sync(self) -> None:
        """Flush and fdatasync: everything appended so far survives a crash (or is reported)."""
        if self._failure is not None:
            self._recover()
            return
        if self._drain():
            self._fdatasync()

    def close(self) -> None:
        """Write what can be written and close; records that cannot be written count as lost."""
        if self._failure is not None:
            self._recover()
        if self._failure is None and self._fd >= 0:
            if self._drain() and self._sync_durable:
                self._fdatasync()
        if self._pending:
            held, first, last = self._held_count(), self._first_held(), self._held_last()
            self.counters.records_lost += held
            if self._failure is not None:
                _add(self._failure.lost, first, last)
            self._pending.clear()
            self._skip = 0
        self._close_quietly()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _close_quietly(self) -> None:
        """Close the descriptor; an error here has already been reported (or cannot matter)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                self._ops.close(fd)
            except OSError:
                self.counters.open_errors += 1

    def _open(self) -> int:
        """Open ``path`` for appending; returns its size."""
        self._fd = self._ops.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                  FILE_MODE)
        self._size = self._ops.fstat(self._fd).st_size + len(self._pending)
        return self._size

    def _rotate(self) -> None:
        """path -> path.1 -> path.2 ...; files past ``keep`` are deleted; the new file starts
        with the config and snapshot records so it replays alone. A failure leaves the writer
        degraded; it reopens ``path`` (whichever file is there) when it recovers."""
        if not self._drain() or self._sync_durable and not self._fdatasync():
            return
        ops = self._ops
        try:
            fd, self._fd = self._fd, -1
            ops.close(fd)
            excess = self.keep + 1
            while os.path.exists(f"{self.path}.{excess}"):  # left over from a larger ``keep``
                ops.unlink(f"{self.path}.{excess}")
                excess += 1
            for i in range(self.keep, 0, -1):
                older = self.path if i == 1 else f"{self.path}.{i - 1}"
                if os.path.exists(older):
                    ops.replace(older, f"{self.path}.{i}")
            self._open()
            if self._sync_durable:
                self._sync_directory(os.path.dirname(os.path.abspath(self.path)))
        except OSError as exc:
            self.counters.open_errors += 1
            self._close_quietly()
            self._fail("rotate", exc)
            return
        self._top_of_file()

    def _top_of_file(self) -> None:
        if self._params is not None:
            self.config(self._params())
        if self._snapshot is not None:
            self.snapshot(self._snapshot())

    def _sync_directory(self, directory: str) -> None:
        """Make renames and file creation in ``directory`` durable."""
        fd = self._ops.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self._ops.fsync(fd)
        finally:
            self._ops.close(fd)


def _add(ranges: list[list[int]], first: int, last: int) -> None:
    """Add first..last to ``ranges`` (ascending), merging with the last range if adjacent, and
    keeping at most MAX_RANGES by merging the newest two."""
    if ranges and ranges[-1][1] + 1 >= first:
        ranges[-1][1] = max(ranges[-1][1], last)
    else:
        ranges.append([first, last])
    if len(ranges) > MAX_RANGES:
        tail = ranges.pop()
        ranges[-1][1] = tail[1]


def _ranges_text(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def _last_number(path: str) -> int:
    """The last record number in the log at ``path`` (the live file, else the newest rotated)."""
    for candidate in (path, f"{path}.1"):
        try:
            last = reader.last_record(candidate)
        except FileNotFoundError:
            continue
        if last is not None:
            return int(last["n"])
    return 0
