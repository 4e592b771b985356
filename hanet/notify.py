"""sd_notify: READY, STATUS, WATCHDOG, RELOADING and STOPPING to the service manager.

Datagrams go through the ``sdnotify`` package to ``$NOTIFY_SOCKET`` (a path, or an abstract name
written "@name", which ``sdnotify`` maps to the leading NUL byte itself). Without NOTIFY_SOCKET
every call is a silent no-op, so the daemon runs the same outside systemd.

The watchdog is fed from the asyncio loop itself (``WatchdogPinger``): a loop that is stuck stops
feeding it, and systemd restarts the daemon, which is the whole point of ``WatchdogSec=``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

import sdnotify

log = logging.getLogger(__name__)


class Notifier:
    """One connected notification socket, read from the environment at construction."""

    def __init__(self) -> None:
        self._socket_name = os.environ.get("NOTIFY_SOCKET", "")
        self._systemd: sdnotify.SystemdNotifier | None = None
        self._failing = False  # warn once per run of failures, not every watchdog ping
        if not self._socket_name:
            return
        try:
            # debug=True makes sdnotify raise instead of swallowing every error itself.
            self._systemd = sdnotify.SystemdNotifier(debug=True)
            # A manager that does not read (hung) must cost a message, never the daemon's thread.
            self._systemd.socket.setblocking(False)
        except OSError as exc:
            log.warning("sd_notify unavailable notify_socket=%s error=%s", self._socket_name, exc)

    @property
    def enabled(self) -> bool:
        return self._systemd is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        """Start of a SIGHUP reload; send ``ready()`` when done. MONOTONIC_USEC is what systemd
        (>= 253) uses to match the RELOADING=1 to the reload request."""
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
        advises. None when no watchdog is asked for, or when WATCHDOG_PID names another process
        (the variables were inherited from a parent that systemd watches, not this one)."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        pid = os.environ.get("WATCHDOG_PID", "")
        if pid and pid != str(os.getpid()):
            return None
        return int(usec) / 2 / 1e6

    def close(self) -> None:
        if self._systemd is not None:
            self._systemd.socket.close()
            self._systemd = None

    def _send(self, message: str) -> None:
        if self._systemd is None:
            return
        try:
            self._systemd.notify(message)
        except OSError as exc:
            if not self._failing:
                log.warning("sd_notify failed notify_socket=%s error=%s", self._socket_name, exc)
            self._failing = True
        else:
            self._failing = False


def _one_line(text: str) -> str:
    # Newlines would start a new assignment in the datagram; sdnotify encodes as Latin-1.
    return " ".join(text.split()).encode("ascii", "backslashreplace").decode("ascii")


class WatchdogPinger:
    """Sends WATCHDOG=1 every ``interval`` seconds from a task on the running asyncio loop."""

    def __init__(self, notifier: Notifier, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"watchdog interval must be positive, got {interval}")
        self.notifier = notifier
        self.interval = interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sd-watchdog")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            self.notifier.watchdog()
            # Keep to the schedule, but never send a burst to make up for time the loop lost.
            deadline = max(deadline + self.interval, loop.time())
            await asyncio.sleep(deadline - loop.time())
