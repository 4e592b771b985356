"""Record framing: magic, length, CRC32, then the msgpack payload.

A frame is ``MAGIC (2) | length (u32 LE) | crc32(payload) (u32 LE) | payload``. msgpack's own
streaming reader stops silently at a torn tail and cannot tell a flipped byte from data, so every
record carries its own length and checksum, and the magic lets a reader find the next intact
frame after damage.
"""
from __future__ import annotations

import struct
import zlib

MAGIC = b"\xa7\x4c"
HEADER = struct.Struct("<2sII")
HEADER_SIZE = HEADER.size
#: No record comes near this; a larger length field is damage, not a record.
MAX_PAYLOAD = 16 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    """One frame around ``payload``."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def check(buf: bytes, pos: int) -> str:
    """Why the frame at ``pos`` is not intact ("" if it is): the framing half of a damage report."""
    end = len(buf)
    if end - pos < HEADER_SIZE:
        return "truncated header" if buf.startswith(MAGIC[: end - pos], pos) else "garbage"
    magic, length, crc = HEADER.unpack_from(buf, pos)
    if magic != MAGIC:
        return "garbage"
    if length > MAX_PAYLOAD:
        return "bad length"
    start = pos + HEADER_SIZE
    if start + length > end:
        return "truncated payload"
    if zlib.crc32(memoryview(buf)[start:start + length]) != crc:
        return "crc mismatch"
    return ""


def is_truncation(reason: str) -> bool:
    """A frame cut short by the end of the file: a torn tail if no intact frame follows."""
    return reason in ("truncated header", "truncated payload")


def resync(buf: bytes, pos: int) -> int:
    """Offset of the next intact frame after ``pos``, or ``len(buf)`` if there is none."""
    find = buf.find
    candidate = find(MAGIC, pos + 1)
    while candidate != -1:
        if not check(buf, candidate):
            return candidate
        candidate = find(MAGIC, candidate + 1)
    return len(buf)
