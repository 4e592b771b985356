"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid

import pytest

from hanet.notify import Notifier, WatchdogPinger


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Never talk to a real service manager, even when the suite itself runs under systemd."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    """A bound datagram socket at a temp path, exported as NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield sock
    sock.close()


@pytest.fixture
def notifier(notify_socket):
    n = Notifier()
    yield n
    n.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_watchdog_stopping_arrive(notify_socket, notifier):
    assert notifier.enabled
    notifier.ready("monitoring 2 paths")
    assert receive(notify_socket) == "READY=1\nSTATUS=monitoring 2 paths"
    notifier.status("failover to alternate")
    assert receive(notify_socket) == "STATUS=failover to alternate"
    notifier.watchdog()
    assert receive(notify_socket) == "WATCHDOG=1"
    notifier.stopping()
    assert receive(notify_socket) == "STOPPING=1"


def test_reloading_carries_monotonic_usec(notify_socket, notifier):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    lines = receive(notify_socket).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_status_text_cannot_inject_assignments(notify_socket, notifier):
    notifier.status("line one\nREADY=1\tmore  é")
    assert receive(notify_socket) == "STATUS=line one READY=1 more \\xe9"


def test_abstract_socket_name(monkeypatch):
    name = f"hanet-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier()
        notifier.ready("up")
        notifier.close()
        assert receive(sock) == "READY=1\nSTATUS=up"


def test_silent_without_notify_socket():
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()


# sdnotify leaves its socket to the garbage collector when connect fails.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_missing_socket_file_is_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")


def test_receiver_gone_after_connect_is_not_an_error(tmp_path, monkeypatch, caplog):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    notifier = Notifier()
    sock.close()
    notifier.watchdog()  # ECONNREFUSED from the kernel, logged, not raised
    notifier.watchdog()
    notifier.close()
    failures = [r for r in caplog.records if r.getMessage().startswith("sd_notify failed")]
    assert len(failures) == 1  # once per run of failures, not per ping


@pytest.mark.parametrize("usec, pid, expected", [
    ("2000000", None, 1.0),
    ("500000", "self", 0.25),
    ("2000000", "1", None),       # inherited from a watched parent
    (None, None, None),
    ("0", None, None),
    ("garbage", None, None),
])
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert Notifier().watchdog_interval() == expected


class PingRecorder:
    """Receives datagrams on a thread and stamps each with CLOCK_MONOTONIC on arrival."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.stamps: list[float] = []
        self.done = threading.Event()
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if data == b"WATCHDOG=1":
                self.stamps.append(time.monotonic())

    def between(self, start: float, end: float) -> list[float]:
        return [t for t in self.stamps if start < t < end]

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)


def test_close_is_idempotent(notifier):
    notifier.close()
    notifier.close()
    assert not notifier.enabled
    notifier.watchdog()


def test_watchdog_pinger_rate_and_stall(notify_socket, notifier):
    interval = 0.02
    recorder = PingRecorder(notify_socket)
    block = {}

    def block_loop():
        block["start"] = time.monotonic()
        time.sleep(0.3)  # the stuck loop under test, not a wait for a condition
        block["end"] = time.monotonic()

    async def scenario():
        pinger = WatchdogPinger(notifier, interval)
        pinger.start()
        window_start = time.monotonic()
        await asyncio.sleep(0.4)
        window_end = time.monotonic()
        asyncio.get_running_loop().call_soon(block_loop)
        await asyncio.sleep(0)
        deadline = time.monotonic() + 5
        while not recorder.between(block.get("end", deadline), deadline) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await pinger.stop()
        return window_start, window_end

    try:
        window_start, window_end = asyncio.run(scenario())
    finally:
        recorder.stop()

    healthy = recorder.between(window_start, window_end)
    expected = (window_end - window_start) / interval
    assert expected * 0.5 <= len(healthy) <= expected * 1.5 + 1, (len(healthy), expected)
    # A ping already in flight when the loop stalled may land just after it started.
    assert recorder.between(block["start"] + 0.01, block["end"]) == []
    assert recorder.between(block["end"], block["end"] + 1.0), "pings did not resume"


def test_watchdog_pinger_stop_ends_pings(notify_socket, notifier):
    recorder = PingRecorder(notify_socket)

    async def scenario():
        pinger = WatchdogPinger(notifier, 0.01)
        pinger.start()
        deadline = time.monotonic() + 5
        while len(recorder.stamps) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await pinger.stop()
        await pinger.stop()  # idempotent
        return time.monotonic()

    try:
        stopped = asyncio.run(scenario())
        assert len(recorder.stamps) >= 3
        time.sleep(0.1)  # a window in which no ping may arrive
        assert recorder.between(stopped + 0.005, time.monotonic()) == []
    finally:
        recorder.stop()


def test_watchdog_pinger_rejects_non_positive_interval():
    with pytest.raises(ValueError):
        WatchdogPinger(Notifier(), 0)


def test_a_manager_that_does_not_read_never_holds_up_the_daemon(notify_socket, notifier, caplog):
    # Nobody reads notify_socket: its queue fills, and each message after that is lost, at once.
    sending = threading.Thread(target=lambda: [notifier.status(f"Monitoring active=primary {i}")
                                               for i in range(2000)], daemon=True)
    sending.start()
    sending.join(2.0)
    assert not sending.is_alive(), "a send waited for the manager"
    assert sum("sd_notify failed" in r.getMessage() for r in caplog.records) == 1  # once per run of failures
