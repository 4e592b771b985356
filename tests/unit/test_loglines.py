"""The daemon's log lines never wait for their reader: a pipe nobody drains costs no caller any
time; the lines it could not hold are counted, and the count is written once lines flow again."""
from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time

from hanet.loglines import LineWriter

F_SETPIPE_SZ = 1031


def test_a_reader_that_stops_reading_holds_up_no_caller_and_learns_what_was_dropped():
    r, w = os.pipe()
    fcntl.fcntl(w, F_SETPIPE_SZ, 4096)
    stream = os.fdopen(w, "w", buffering=1)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    writer = LineWriter(stream, logging.INFO, "hanet: %(levelname)s %(message)s", max_waiting=50)
    try:
        t0 = time.monotonic()
        for i in range(2000):  # ~100 KiB of lines into a pipe of 4 KiB that nobody reads
            logging.getLogger("hanet").info("line %d %s", i, "x" * 40)
        assert time.monotonic() - t0 < 1.0
        assert writer.handler.dropped > 0
        got = bytearray()
        reading = threading.Thread(target=lambda: got.extend(_read_all(r)), daemon=True)
        reading.start()
        deadline = time.monotonic() + 5
        while writer._lines.qsize() and time.monotonic() < deadline:  # the reader catches up
            time.sleep(0.01)
        logging.getLogger("hanet").warning("after")
        writer.stop()
        stream.close()
        reading.join(5)
        text = got.decode()
        assert text.startswith("hanet: INFO line 0 ")
        notes = re.findall(r"^hanet: WARNING (\d+) log lines dropped", text, re.M)
        assert notes and sum(map(int, notes)) == writer.handler.dropped  # each where it happened
        kept = [int(n) for n in re.findall(r"^hanet: INFO line (\d+) ", text, re.M)]
        assert kept == sorted(kept) and len(kept) + writer.handler.dropped == 2000
        assert text.rstrip().endswith("hanet: WARNING after")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        os.close(r)


def _read_all(fd: int) -> bytes:
    out = bytearray()
    while chunk := os.read(fd, 65536):
        out += chunk
    return bytes(out)
