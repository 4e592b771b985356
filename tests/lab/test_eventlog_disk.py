"""The event log on a real file system that fills up: a 64 KiB tmpfs, mounted for the test and
unmounted after it even when it fails."""
from __future__ import annotations

import errno
import os
import subprocess
import tempfile

import pytest

from hanet import machine, model, replay
from hanet.eventlog import Writer, read_file

pytestmark = pytest.mark.lab

FS_BYTES = 64 * 1024
STEP = machine.Step(src="Monitoring", dst="Failing-Over", trigger="link.down",
                    reason="carrier lost on the active path", active=1,
                    actions=(model.PauseMonitoring(id=1, path=0), model.EnableNic(id=2, path=1)))


@pytest.fixture
def small_fs():
    """A fresh directory with a 64 KiB tmpfs on it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    directory = tempfile.mkdtemp(prefix="hanet-fulldisk-")
    mounted = False
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0700", "tmpfs", directory],
                       check=True, capture_output=True, timeout=30)
        mounted = True
        yield directory
    finally:
        if mounted:
            done = subprocess.run(["umount", directory], capture_output=True, timeout=30)
            if done.returncode != 0:  # still busy: detach it, so the directory can go
                subprocess.run(["umount", "-l", directory], capture_output=True, timeout=30)
        os.rmdir(directory)


def fill(directory: str) -> str:
    """Write a file until the file system is full; returns its path."""
    filler = os.path.join(directory, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(2 * FS_BYTES // 512):  # bounded: the disk is full long before
            try:
                os.write(fd, b"\0" * 512)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return filler
    finally:
        os.close(fd)
    raise AssertionError("the tmpfs never filled up")


def test_full_disk_degrades_the_log_and_space_again_resumes_it_with_a_gap(small_fs, capsys):
    path = os.path.join(small_fs, "events.hlog")
    health = []
    state = {"state": "Monitoring", "active": 0}
    w = Writer(path, "alpha", params=lambda: {"multiplier": 3}, snapshot=lambda: dict(state),
               retry_interval_ns=0, max_pending_bytes=4096,
               on_health=lambda degraded, detail: health.append((degraded, detail)))
    written = [w.event(model.HeartbeatSuspect(t_ns=i, path=0, misses=1)) for i in range(20)]
    filler = fill(small_fs)

    appended = []
    for i in range(2000):  # bounded: the log turns degraded within a few records
        appended.append(w.event(model.HeartbeatSuspect(t_ns=100 + i, path=0, misses=1)))
        if w.degraded is not None:
            break
    assert w.degraded is not None and w.degraded.errno == "ENOSPC"
    for i in range(200):  # more than max_pending_bytes: some are held, the rest dropped
        appended.append(w.event(model.LinkDown(t_ns=10_000 + i, path=0)))
        if i % 20 == 19:
            appended.append(w.transition(STEP, appended[-1]))
    assert w.degraded.lost and w.counters.records_lost > 0
    assert len(w._pending) <= 4096
    assert [h[0] for h in health] == [True]

    os.unlink(filler)
    assert w.retry() and w.degraded is None
    assert [h[0] for h in health] == [True, False]
    after = [w.event(model.LinkUp(t_ns=20_000 + i, path=0)) for i in range(5)]
    w.close()

    damage = []
    entries = list(read_file(path, damage.append))
    numbers = [e.record["n"] for e in entries]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    gaps = [e.record for e in entries if e.record["k"] == "gap"]
    assert len(gaps) == 1 and len(damage) == 1 and damage[0].gap  # no torn or garbled record
    lost = {n for first, last in gaps[0]["g"]["lost"] for n in range(first, last + 1)}
    assert lost and gaps[0]["g"]["errno"] == "ENOSPC"
    # Every record appended is in the file, whole, or named lost by the gap; none is both.
    for n in written + appended + after:
        assert (n in numbers) != (n in lost), n
    assert numbers[-5:] == after

    assert replay.main([path]) == replay.EXIT_DAMAGE
    err = capsys.readouterr().err
    assert f"alpha events.hlog @ offset {damage[0].offset}: gap (n={gaps[0]['n']}): records " in err
    assert "lost (ENOSPC" in err

