"""Heartbeat sequence numbers that never go backwards across restarts.

The peer drops a frame whose sequence number is older than its replay window ("stale"). The prober
starts counting at the wall clock in nanoseconds, which runs far ahead of any send rate, so a
restart normally starts above everything the peer has seen. But after the wall clock stepped back
(an NTP correction, a reboot with the RTC behind) a restart would start below it, and every frame
would be dropped as stale until the clock caught up: both nodes would see every path dead for as
long as the step.

So each start reserves a block: it begins at the larger of the wall clock and the end of the last
block, and writes the end of its own block to a small file (beside the event log) before the first
frame is sent. The block is far larger than any run sends (2**40 frames: years at 10,000 a second).
If the file is missing, the wall clock alone decides, as before it existed.
"""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("hanet")

BLOCK = 1 << 40
MAX_SEQ = (1 << 64) - 1
#: A floor above this (the wall clock in the year 2262) was not written by a run: reading it
#: would start every run at the end of the space, so it is set aside as damaged.
PLAUSIBLE_MAX = 1 << 63
#: The longest a start waits for the floor to reach the disk.
SAVE_WAIT_S = 2.0


def path_for(eventlog_path: str) -> str:
    return eventlog_path + ".seq"


def read_floor(path: str) -> int:
    """The end of the last reserved block, 0 when there is none (or it cannot be read)."""
    try:
        with open(path, encoding="ascii") as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return 0
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("seqfloor unreadable path=%s error=%r: starting from the wall clock", path, str(exc))
        return 0
    if not text.isdigit() or int(text) > PLAUSIBLE_MAX:
        log.error("seqfloor damaged path=%s content=%r: starting from the wall clock", path, text[:40])
        return 0
    return int(text)


def reserve(path: str, wall_ns: int) -> int:
    """The first sequence number of this run; its block's end is durable before this returns
    (or SAVE_WAIT_S has passed).

    A failed write is logged, not raised: heartbeats must start even on a read-only disk, and
    they then depend on the wall clock alone.
    """
    start = max(wall_ns, read_floor(path))
    if start > MAX_SEQ - BLOCK:
        # Only a wall clock past the year 2554 gets here; clamping alone would hand every later
        # run the same start, so say it each time.
        log.error("seqfloor exhausted path=%s start=%d: heartbeat sequence numbers may repeat "
                  "the last run's", path, start)
        start = MAX_SEQ - BLOCK
    # A disk that does not answer (frozen, hung) would hold the start up for as long as it lasts:
    # past SAVE_WAIT_S the run starts as on a disk that refused, and the save lands when it can.
    saving = threading.Thread(target=_save, args=(path, start + BLOCK), name="hanet-seqfloor", daemon=True)
    saving.start()
    saving.join(SAVE_WAIT_S)
    if saving.is_alive():
        log.error("seqfloor not saved within %.0f s path=%s: the disk does not answer; a restart "
                  "after the wall clock steps back may start below what the peer has seen", SAVE_WAIT_S, path)
    return start


def _save(path: str, end: int) -> None:
    """Write ``end`` to ``path`` durably (a new file renamed over the old one); errors are logged."""
    tmp = f"{path}.tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{end}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        log.error("seqfloor not saved path=%s error=%r: a restart after the wall clock steps back "
                  "may start below what the peer has seen", path, exc.strerror)
