"""Read event logs: one file, a node's rotated set, or several nodes' logs merged by time.

Every intact record is yielded as an ``Entry(file, offset, record)``. Damage (a bad CRC, a bad
length, bytes that are not a frame, a well-framed payload that is not a record of the schema:
not a map, a field of the wrong type, an unknown kind, an event or action the model does not
know) is reported through ``on_damage`` with its file and byte offset, and reading resumes at the
next intact frame; a frame cut short by the end of the file with nothing intact after it is
reported as a torn tail. A "gap" record (the writer could not keep some records) is yielded like
any record and also reported as damage, with the record numbers it names. Reading never raises
on a file's contents, and costs time linear in its size however it was made.
"""
from __future__ import annotations

import heapq
import os
import zlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import msgpack

from . import framing, schema

CLOCKS = ("wall", "mono")
_PEEK_BYTES = 1 << 20


class Entry(NamedTuple):
    file: str
    offset: int
    record: dict[str, Any]


@dataclass(frozen=True)
class Damage:
    """``skipped`` bytes from ``offset`` in ``file`` held no intact record."""
    file: str
    offset: int
    skipped: int
    reason: str
    torn: bool = False  # a frame cut short by the end of the file, nothing intact after it
    node: str = ""      # the node whose log this is, when open_logs knows it
    # A gap record (intact, and also yielded): its writer could not keep these record numbers.
    gap: bool = False
    lost: tuple[tuple[int, int], ...] = ()    # never written
    unsure: tuple[tuple[int, int], ...] = ()  # written, but a failed fdatasync may have dropped them
    gap_n: int = 0                            # the gap record's own number

    def __str__(self) -> str:
        where = f"{self.node or '?'} {os.path.basename(self.file)} @ offset {self.offset}"
        if self.gap:
            parts = []
            if self.lost:
                parts.append(f"records {_ranges_text(self.lost)} lost")
            if self.unsure:
                parts.append(f"records {_ranges_text(self.unsure)} may be lost (fdatasync failed)")
            what = ", ".join(parts) or "no record lost"
            return f"{where}: gap (n={self.gap_n}): {what} ({self.reason})"
        if self.torn:
            return f"{where}: torn tail ({self.reason}), {self.skipped} bytes"
        if not self.skipped:  # found in an intact record by a later check (replay --verify)
            return f"{where}: corrupt record ({self.reason})"
        return f"{where}: corrupt record ({self.reason}), skipped {self.skipped} bytes"


OnDamage = Callable[[Damage], None]


def _ranges_text(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def _ignore(_damage: Damage) -> None:
    """For look-ups that only want the intact records (the writer's restart, a file's node)."""


def decode(path: str, buf: bytes, on_damage: OnDamage,
           upcasters: Mapping[int, schema.Upcaster] = schema.UPCASTERS) -> Iterator[Entry]:
    """The records framed in ``buf`` (the contents of ``path``), in time linear in its size."""
    # The hot loop: locals only, a memoryview so payload slices are not copied.
    unpack_header = framing.HEADER.unpack_from
    header_size = framing.HEADER_SIZE
    direct_max = framing.DIRECT_MAX
    magic_ok = framing.MAGIC
    crc32 = zlib.crc32
    unpackb = msgpack.unpackb
    problem = schema.problem
    version = schema.VERSION
    gap = schema.GAP
    new_tuple = tuple.__new__  # Entry(...) without NamedTuple's Python-level __new__
    scanner = framing.Scanner(buf)
    view = scanner.view
    end = len(buf)
    pos = 0
    while pos < end:
        if end - pos >= header_size:
            magic, length, crc = unpack_header(buf, pos)
            start = pos + header_size
            stop = start + length
            if magic == magic_ok and stop <= end and (
                    crc32(view[start:stop]) if length <= direct_max else scanner.crc(start, stop)) == crc:
                # The frame is intact, so its bounds are trusted even if its payload is not a record.
                try:
                    rec = unpackb(view[start:stop])
                    if rec.__class__ is not dict or rec.get("v") != version:
                        rec = schema.upcast(rec, upcasters)
                    wrong = problem(rec)
                except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
                    wrong = str(exc) or type(exc).__name__
                if wrong:
                    on_damage(Damage(path, pos, stop - pos, f"bad record: {wrong}"))
                else:
                    if rec["k"] == gap:
                        on_damage(gap_damage(path, pos, stop - pos, rec))
                    yield new_tuple(Entry, (path, pos, rec))
                pos = stop
                continue
        reason = scanner.reason(pos)
        following = scanner.next_intact(pos)
        torn = following == end and framing.is_truncation(reason)
        on_damage(Damage(path, pos, following - pos, reason, torn))
        pos = following


def gap_damage(path: str, offset: int, size: int, rec: dict[str, Any]) -> Damage:
    """A gap record as damage: the records its writer could not keep."""
    body = rec["g"]
    lost = tuple(tuple(r) for r in body["lost"])
    unsure = tuple(tuple(r) for r in body["unsure"])
    return Damage(path, offset, size, f"{body['errno']}: {body['reason']}", gap=True,
                  lost=lost, unsure=unsure, gap_n=rec["n"])


def read_file(path: str, on_damage: OnDamage,
              upcasters: Mapping[int, schema.Upcaster] = schema.UPCASTERS) -> Iterator[Entry]:
    """The records of one file. Raises OSError at once if it cannot be read."""
    with open(path, "rb") as fh:
        buf = fh.read()
    return decode(path, buf, on_damage, upcasters)


def read_files(paths: Iterable[str], on_damage: OnDamage,
               upcasters: Mapping[int, schema.Upcaster] = schema.UPCASTERS) -> Iterator[Entry]:
    """The records of several files, one after the other (a node's rotated set, oldest first)."""
    for path in paths:
        yield from read_file(path, on_damage, upcasters)


def rotated_set(path: str) -> list[str]:
    """The existing files of the log at ``path``, oldest first: path.N, ..., path.1, path."""
    older = []
    i = 1
    while os.path.exists(f"{path}.{i}"):
        older.append(f"{path}.{i}")
        i += 1
    files = older[::-1]
    if os.path.exists(path):
        files.append(path)
    return files


def first_record(path: str) -> dict[str, Any] | None:
    """The first intact record of ``path`` (None if it holds none), reading little of the file."""
    with open(path, "rb") as fh:
        head = fh.read(_PEEK_BYTES)
        rest_exists = bool(fh.read(1))
    found = next(decode(path, head, _ignore), None)
    if found is None and rest_exists:
        found = next(read_file(path, _ignore), None)
    return found.record if found else None


def last_record(path: str) -> dict[str, Any] | None:
    """The last intact record of ``path`` (None if it holds none), reading its tail first."""
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - _PEEK_BYTES))
        tail = fh.read()
    # The tail may begin inside a frame: start at the first intact frame in it.
    scanner = framing.Scanner(tail)
    start = scanner.next_intact(0) if scanner.reason(0) else 0
    last = None
    for last in decode(path, tail[start:], _ignore):
        pass
    if last is None and size > len(tail):
        for last in read_file(path, _ignore):
            pass
    return last.record if last else None


def merge(streams: Iterable[Iterable[Entry]], clock: str = "wall") -> Iterator[Entry]:
    """Entries of several time-ordered streams in one order by ``clock`` ("wall" or "mono").

    All network namespaces on one host share CLOCK_MONOTONIC, so "mono" orders their logs even
    if the wall clock was stepped; across hosts only "wall" compares.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}; got {clock!r}")
    return heapq.merge(*streams, key=lambda entry: entry.record[clock])


def open_logs(paths: Iterable[str], on_damage: OnDamage, clock: str = "wall",
              upcasters: Mapping[int, schema.Upcaster] = schema.UPCASTERS) -> Iterator[Entry]:
    """Records of any mix of files: each node's files chained by record number, nodes merged.

    Damage reports carry the node of the file they were found in. Raises OSError at once if a
    file cannot be read.
    """
    by_node: dict[str, list[tuple[int, str]]] = {}
    orphans = []  # files without one intact record: read only for their damage reports
    for path in dict.fromkeys(paths):
        first = first_record(path)
        if first is None:
            orphans.append(path)
        else:
            by_node.setdefault(first["node"], []).append((first["n"], path))

    def stream(node: str, files: list[str]) -> Iterator[Entry]:
        def tagged(damage: Damage) -> None:
            on_damage(replace(damage, node=node))
        return read_files(files, tagged, upcasters)

    streams = [stream(node, [path for _, path in sorted(files)]) for node, files in by_node.items()]
    streams.extend(stream("", [path]) for path in orphans)
    return merge(streams, clock)
