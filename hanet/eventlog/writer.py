"""Append records to a node's event log: framing, the durability policy, size-based rotation.

The shell writes an event's record, steps the machine, then writes the transition; the writer
makes the transition durable (``os.fdatasync``) before ``transition()`` returns, so no action is
carried out that the log could lose. Durability policies (config ``eventlog.durability``):

    "transition"  fdatasync after each transition record and each record asked durable
    "every"       fdatasync after every record
    "none"        never fdatasync (the page cache decides)

Records go out through one buffer in order, and the buffer is written before every fdatasync,
so an event record always reaches the file before the transition it caused is made durable.

Rotation happens only before an event record, once the file has reached ``rotate_bytes``: a
transition then always sits in the file of the event that caused it, and the snapshot at the top
of the new file is the state that the file's first event folds into.
"""
from __future__ import annotations

import os
import time
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


class Writer:
    """One node's append-only log at ``path`` (rotated files are path.1 ... path.keep).

    ``params`` and ``snapshot`` return the machine's parameters and state; ``params`` is written
    when the writer opens (a daemon start) and both at the top of every rotated-in file.
    Record numbers continue from the last record already in the log. Not thread-safe: one
    writer per log, used from the event loop.
    """

    def __init__(self, path: str, node: str, *, durability: str = "transition",
                 rotate_bytes: int = EventLogConfig.rotate_bytes, keep: int = EventLogConfig.keep,
                 params: Callable[[], dict[str, Any]] | None = None,
                 snapshot: Callable[[], dict[str, Any]] | None = None,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES,
                 mono_ns: Callable[[], int] = time.monotonic_ns,
                 wall_ns: Callable[[], int] = time.time_ns):
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {', '.join(DURABILITY)}; got {durability!r}")
        if keep < 1 or rotate_bytes < 1:
            raise ValueError("keep and rotate_bytes must be positive")
        self.path, self.node = path, node
        self.durability, self.rotate_bytes, self.keep = durability, rotate_bytes, keep
        self._params, self._snapshot = params, snapshot
        self._buffer_bytes = buffer_bytes
        self._mono_ns, self._wall_ns = mono_ns, wall_ns
        self._packb = msgpack.Packer(use_bin_type=True).pack
        self._pending = bytearray()
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._n = _last_number(path)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        if params is not None:
            self.config(params(), durable=True)

    @classmethod
    def from_config(cls, cfg: EventLogConfig, node: str, **kwargs) -> "Writer":
        return cls(cfg.path, node, durability=cfg.durability, rotate_bytes=cfg.rotate_bytes,
                   keep=cfg.keep, **kwargs)

    @property
    def n(self) -> int:
        """The number of the last record written (0 if the log is new)."""
        return self._n

    # ------------------------------------------------------------------ records
    def event(self, event: model.Event) -> int:
        """Append an input event; returns its record number (the ``cause`` of its transition)."""
        if self._size >= self.rotate_bytes:
            self._rotate()
        return self.append(schema.EVENT, model.to_dict(event))

    def transition(self, step, cause: int) -> int:
        """Append a machine.Step caused by record ``cause``; durable on return unless "none"."""
        return self.append(schema.TRANSITION, schema.transition_body(step, cause), durable=True)

    def config(self, params: dict[str, Any], durable: bool = False) -> int:
        return self.append(schema.CONFIG, params, durable)

    def snapshot(self, state: dict[str, Any], durable: bool = False) -> int:
        return self.append(schema.SNAPSHOT, state, durable)

    def append(self, kind: str, body: Any, durable: bool = False) -> int:
        """Append one record of ``kind``; fdatasync per the policy. Returns its number."""
        n = self._n + 1
        data = framing.frame(self._packb(
            schema.record(self.node, n, self._mono_ns(), self._wall_ns(), kind, body)))
        self._n = n  # only once encoded: a body msgpack cannot encode leaves no gap in the numbers
        self._pending += data
        self._size += len(data)
        if self.durability == "every" or durable and self.durability == "transition":
            self.sync()
        elif len(self._pending) >= self._buffer_bytes:
            self.flush()
        return n

    # ------------------------------------------------------------------ file handling
    def flush(self) -> None:
        """Hand every buffered record to the kernel."""
        # Bytes leave the buffer only once written: a failed write (a full disk) loses nothing
        # already appended, and a short write is continued.
        while self._pending:
            del self._pending[:os.write(self._fd, self._pending)]

    def sync(self) -> None:
        """Flush and fdatasync: everything appended so far survives a crash."""
        self.flush()
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd < 0:
            return
        self.flush()
        if self.durability != "none":
            os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)

    def _rotate(self) -> None:
        """path -> path.1 -> path.2 ...; files past ``keep`` are deleted; the new file starts
        with the config and snapshot records so it replays alone."""
        self.flush()
        if self.durability != "none":
            os.fdatasync(self._fd)
        os.close(self._fd)
        excess = self.keep + 1
        while os.path.exists(f"{self.path}.{excess}"):  # left over from a larger ``keep``
            os.unlink(f"{self.path}.{excess}")
            excess += 1
        for i in range(self.keep, 0, -1):
            older = self.path if i == 1 else f"{self.path}.{i - 1}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{i}")
        self._fd = self._open()
        self._size = 0
        if self.durability != "none":
            _sync_directory(os.path.dirname(os.path.abspath(self.path)))
        if self._params is not None:
            self.config(self._params())
        if self._snapshot is not None:
            self.snapshot(self._snapshot())


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


def _sync_directory(directory: str) -> None:
    """Make renames and file creation in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
