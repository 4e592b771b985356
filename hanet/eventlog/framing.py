"""Record framing: magic, length, CRC32, then the msgpack payload.

A frame is ``MAGIC (2) | length (u32 LE) | crc32(payload) (u32 LE) | payload``. msgpack's own
streaming reader stops silently at a torn tail and cannot tell a flipped byte from data, so every
record carries its own length and checksum, and the magic lets a reader find the next intact
frame after damage.

Finding that frame means trying every later magic as a frame start. Checking a candidate's CRC
directly costs its claimed length, so a file crafted with many headers that claim long payloads
(or plain bad luck in a large damaged file) made the search quadratic: n candidates times up to
n bytes each. ``Scanner`` checks a long candidate in constant time instead, from CRC32s of the
buffer's prefixes (kept every ``BLOCK`` bytes) and the CRC's linearity:
``crc(A + B) = shift(crc(A), len(B)) ^ crc(B)``, so ``crc(buf[s:e]) = P(e) ^ shift(P(s), e - s)``
with ``P(x) = crc32(buf[:x])``. The whole search is then linear in the buffer's size.
"""
from __future__ import annotations

import re
import struct
import zlib

MAGIC = b"\xa7\x4c"
HEADER = struct.Struct("<2sII")
HEADER_SIZE = HEADER.size
#: No record comes near this; a larger length field is damage, not a record.
MAX_PAYLOAD = 16 * 1024 * 1024
#: Payloads up to this size are checked with one crc32 call (cheaper than the prefix method).
DIRECT_MAX = 4096
#: Distance between the prefix CRCs a Scanner keeps.
BLOCK = 256
#: A whole header whose length is at most MAX_PAYLOAD (u32 LE): the only frame starts worth
#: looking at, found by the regex engine without a Python step per impossible one.
_CANDIDATE = re.compile(re.escape(MAGIC) + rb"(?=(?:[\x00-\xff]{3}\x00|\x00\x00\x00\x01)[\x00-\xff]{4})")
assert MAX_PAYLOAD == 1 << 24  # what _CANDIDATE's length test spells out


def frame(payload: bytes) -> bytes:
    """One frame around ``payload``."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def is_truncation(reason: str) -> bool:
    """A frame cut short by the end of the file: a torn tail if no intact frame follows."""
    return reason in ("truncated header", "truncated payload")


def check(buf: bytes, pos: int) -> str:
    """Why the frame at ``pos`` is not intact ("" if it is): the framing half of a damage report."""
    return Scanner(buf).reason(pos)


def resync(buf: bytes, pos: int) -> int:
    """Offset of the next intact frame after ``pos``, or ``len(buf)`` if there is none."""
    return Scanner(buf).next_intact(pos)


class Scanner:
    """Frame checks on one buffer; any sequence of them costs time linear in its size."""

    def __init__(self, buf: bytes):
        self.buf = buf
        self.view = memoryview(buf)
        self.end = len(buf)
        self._marks = [0]  # _marks[i] = crc32(buf[:i * BLOCK])

    def crc(self, start: int, stop: int) -> int:
        """crc32(buf[start:stop]) in time independent of ``stop - start``."""
        if stop - start <= DIRECT_MAX:
            return zlib.crc32(self.view[start:stop])
        return self._prefix(stop) ^ shift(self._prefix(start), stop - start)

    def _prefix(self, x: int) -> int:
        """crc32(buf[:x]), from the nearest mark below ``x``."""
        i = x // BLOCK
        marks, view = self._marks, self.view
        while len(marks) <= i:
            j = len(marks)
            marks.append(zlib.crc32(view[(j - 1) * BLOCK:j * BLOCK], marks[-1]))
        return zlib.crc32(view[i * BLOCK:x], marks[i])

    def reason(self, pos: int) -> str:
        """Why the frame at ``pos`` is not intact ("" if it is)."""
        buf, end = self.buf, self.end
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
        if self.crc(start, start + length) != crc:
            return "crc mismatch"
        return ""

    def next_intact(self, pos: int) -> int:
        """Offset of the next intact frame after ``pos``, or the buffer's end if there is none."""
        buf, end, view = self.buf, self.end, self.view
        unpack = HEADER.unpack_from
        search = _CANDIDATE.search
        crc32 = zlib.crc32
        here = here_crc = -1  # a running prefix CRC: candidates come in order, often close
        found = search(buf, pos + 1)
        while found is not None:
            candidate = found.start()
            _magic, length, crc = unpack(buf, candidate)
            start = candidate + HEADER_SIZE
            stop = start + length
            if stop <= end:
                if length <= DIRECT_MAX:
                    if crc32(view[start:stop]) == crc:
                        return candidate
                else:
                    if here < 0:
                        here, here_crc = start, self._prefix(start)
                    else:
                        here_crc = crc32(view[here:start], here_crc)
                        here = start
                    if self._prefix(stop) ^ shift(here_crc, length) == crc:
                        return candidate
            found = search(buf, candidate + 1)
        return end


# --------------------------------------------------------------------------- CRC32 shifts
# shift(c, n) is the CRC register ``c`` carried over n zero bytes, without its constant part:
# crc32(zeros(n), c) ^ crc32(zeros(n), 0). It is linear in c, so each shift is a 32x32 bit
# matrix, kept as four 256-entry tables (one per byte of c). Any n is a sum of hex digits times
# powers of 16, so at most 7 tables (n <= 2**24) are applied; each is built once, when needed.
_Tables = tuple[list[int], list[int], list[int], list[int]]
_SHIFTS: dict[tuple[int, int], _Tables] = {}


def _apply(tables: _Tables, c: int) -> int:
    t0, t1, t2, t3 = tables
    return t0[c & 255] ^ t1[(c >> 8) & 255] ^ t2[(c >> 16) & 255] ^ t3[c >> 24]


def _tables(columns: list[int]) -> _Tables:
    """The tables of the linear map whose image of bit i is ``columns[i]``."""
    out = []
    for lane in range(4):
        table = [0] * 256
        for b in range(1, 256):
            low = b & -b
            table[b] = table[b ^ low] ^ columns[8 * lane + low.bit_length() - 1]
        out.append(table)
    return tuple(out)  # type: ignore[return-value]


def _compose(outer: _Tables, inner: _Tables) -> _Tables:
    return _tables([_apply(outer, _apply(inner, 1 << i)) for i in range(32)])


def _shift_tables(power: int, digit: int) -> _Tables:
    """The tables of the shift by ``digit * 16**power`` bytes."""
    key = (power, digit)
    tables = _SHIFTS.get(key)
    if tables is None:
        if power == 0 and digit == 1:
            zero = zlib.crc32(b"\0")
            tables = _tables([zlib.crc32(b"\0", 1 << i) ^ zero for i in range(32)])
        elif digit == 1:
            tables = _compose(_shift_tables(power - 1, 15), _shift_tables(power - 1, 1))
        else:
            tables = _compose(_shift_tables(power, 1), _shift_tables(power, digit - 1))
        _SHIFTS[key] = tables
    return tables


def shift(c: int, n: int) -> int:
    """``c`` shifted over ``n`` bytes: crc32(A + B) == shift(crc32(A), len(B)) ^ crc32(B)."""
    power = 0
    while n:
        digit = n & 15
        if digit:
            t0, t1, t2, t3 = _SHIFTS.get((power, digit)) or _shift_tables(power, digit)
            c = t0[c & 255] ^ t1[(c >> 8) & 255] ^ t2[(c >> 16) & 255] ^ t3[c >> 24]
        n >>= 4
        power += 1
    return c
