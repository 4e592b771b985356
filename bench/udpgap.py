"""A 1 kHz UDP stream and its gap meter: how long traffic stopped around a fault.

The sender (in node a) sends a datagram carrying a sequence number and its CLOCK_MONOTONIC send
time every period, on absolute deadlines (a late tick is sent at once and the schedule kept; ticks
more than one period behind are skipped, not burst). The receiver (in node b) records the arrival
time of every datagram and answers queries on stdin: the gap around time T is the interval between
the last arrival at or before T and the first arrival after T, i.e. the longest interval without
arrivals spanning T. Both run as processes under ``ip netns exec``; both stop on stdin EOF or after
``--duration`` seconds, whichever comes first.

    python bench/udpgap.py send --dst 192.0.2.2 --port 7999 [--src 192.0.2.1] [--period-us 1000]
    python bench/udpgap.py recv --bind 192.0.2.2 --port 7999
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

DATAGRAM = struct.Struct("!QQ")  # sequence number, send time (CLOCK_MONOTONIC ns)
MAX_DURATION_S = 4 * 3600.0


# --------------------------------------------------------------------------- in the namespaces
def run_sender(dst: str, port: int, src: str, period_ns: int, duration_s: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if src:
        sock.bind((src, 0))
    sock.setblocking(False)  # a full send buffer (frames parked on an unresolved neighbour) drops the tick
    sent = skipped = errors = 0
    start = time.monotonic_ns()
    end = start + int(duration_s * 1e9)
    deadline = start
    seq = 0
    while True:
        now = time.monotonic_ns()
        if now >= end or select.select([sys.stdin], [], [], 0)[0]:
            break  # stdin readable means EOF (nothing else is ever written to it)
        if now < deadline:
            time.sleep((deadline - now) / 1e9)
            now = time.monotonic_ns()
        if now - deadline > period_ns:
            missed = (now - deadline) // period_ns
            skipped += missed
            seq += missed
            deadline += missed * period_ns
        try:
            sock.sendto(DATAGRAM.pack(seq, time.monotonic_ns()), (dst, port))
            sent += 1
        except OSError:
            errors += 1  # no route, or a full buffer, while the fault lasts: the tick is lost
        seq += 1
        deadline += period_ns
    print(json.dumps({"sent": sent, "skipped": skipped, "errors": errors}), flush=True)


class _Arrivals:
    def __init__(self) -> None:
        self.times = array("q")
        self.seqs = array("q")
        self.lock = threading.Lock()

    def add(self, t_ns: int, seq: int) -> None:
        with self.lock:
            self.times.append(t_ns)
            self.seqs.append(seq)

    def gap(self, t_ns: int) -> dict:
        """The interval without arrivals spanning ``t_ns``, or {"pending": True} before traffic resumed."""
        with self.lock:
            i = bisect.bisect_right(self.times, t_ns)
            if i == 0:
                return {"error": "no arrival before the fault"}
            if i == len(self.times):
                return {"pending": True, "last_ns": self.times[-1]}
            return {"start_ns": self.times[i - 1], "end_ns": self.times[i],
                    "gap_ns": self.times[i] - self.times[i - 1],
                    "lost": self.seqs[i] - self.seqs[i - 1] - 1}


CMSG_SPACE = socket.CMSG_SPACE(16)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux asm-generic; the socket module may lack it


def kernel_arrival_ns(ancdata) -> int:
    """The kernel's receive stamp of a datagram on CLOCK_MONOTONIC.

    Stamping in user space would date a datagram when this process got to read it: a receiver
    scheduled late moves arrivals past the fault time and the gap meter measures the wrong gap.
    SO_TIMESTAMPNS stamps CLOCK_REALTIME; the offset to CLOCK_MONOTONIC is read right after.
    """
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.monotonic_ns()
            return sec * 1_000_000_000 + nsec - offset
    return time.monotonic_ns()


def run_receiver(bind: str, port: int, duration_s: float) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((bind, port))
    sock.settimeout(0.1)
    arrivals = _Arrivals()
    stop = threading.Event()

    def receive() -> None:
        end = time.monotonic() + duration_s
        while not stop.is_set() and time.monotonic() < end:
            try:
                data, ancdata, _, _ = sock.recvmsg(64, CMSG_SPACE)
            except TimeoutError:
                continue
            t = kernel_arrival_ns(ancdata)
            if len(data) == DATAGRAM.size:
                arrivals.add(t, DATAGRAM.unpack(data)[0])
        stop.set()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "gap" in req:
            reply = arrivals.gap(int(req["gap"]))
        else:
            with arrivals.lock:
                reply = {"count": len(arrivals.times), "last_ns": arrivals.times[-1] if arrivals.times else None}
        print(json.dumps(reply), flush=True)
        if stop.is_set():
            break
    stop.set()
    thread.join(1.0)


# --------------------------------------------------------------------------- controller side
class StreamError(RuntimeError):
    pass


class UdpStream:
    """Sender in ``ns_src``, receiver in ``ns_dst``; ask ``gap_around(t_fault_ns, timeout)``."""

    def __init__(self, ns_src: str, ns_dst: str, src: str, dst: str, port: int = 7999,
                 period_us: int = 1000, duration_s: float = 3600.0) -> None:
        script = str(Path(__file__).resolve())
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.receiver = subprocess.Popen(
            ["ip", "netns", "exec", ns_dst, sys.executable, script, "recv", "--bind", dst, "--port", str(port),
             "--duration", str(duration_s)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.sender = None
        try:
            if not self._reply():
                raise StreamError("udpgap receiver did not start")
            self.sender = subprocess.Popen(
                ["ip", "netns", "exec", ns_src, sys.executable, script, "send", "--dst", dst, "--src", src,
                 "--port", str(port), "--period-us", str(period_us), "--duration", str(duration_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        except BaseException:
            self.close()
            raise

    def _ask(self, req: dict) -> dict:
        self.receiver.stdin.write(json.dumps(req) + "\n")
        self.receiver.stdin.flush()
        return self._reply()

    def _reply(self) -> dict:
        line = self.receiver.stdout.readline()
        if not line:
            raise StreamError(f"udpgap receiver exited ({self.receiver.poll()})")
        return json.loads(line)

    def wait_flowing(self, timeout: float, poll_s: float = 0.01) -> bool:
        """True once datagrams arrive (one within the last 10 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self._ask({"count": True})["last_ns"]
            if last is not None and time.monotonic_ns() - last < 10_000_000:
                return True
            time.sleep(poll_s)
        return False

    def gap_around(self, t_ns: int, timeout: float, poll_s: float = 0.005) -> dict | None:
        """The gap spanning ``t_ns`` once traffic flows again; None if it did not within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self._ask({"gap": t_ns})
            if "error" in reply:
                raise StreamError(reply["error"])
            if not reply.get("pending"):
                return reply
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll_s)

    def close(self) -> dict:
        """Stops both ends; returns the sender's counters (sent, skipped, errors) when it had any."""
        counters: dict = {}
        for proc in (self.sender, self.receiver):
            if proc is None or proc.poll() is not None:
                continue
            try:
                out, _ = proc.communicate(timeout=5)  # closes stdin: EOF stops the process
                if proc is self.sender and out.strip():
                    counters = json.loads(out.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, BrokenPipeError, ValueError):
                proc.kill()
                proc.wait(5)
        return counters


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role", required=True)
    send = sub.add_parser("send")
    send.add_argument("--dst", required=True)
    send.add_argument("--src", default="")
    send.add_argument("--port", type=int, default=7999)
    send.add_argument("--period-us", type=int, default=1000)
    send.add_argument("--duration", type=float, default=3600.0)
    recv = sub.add_parser("recv")
    recv.add_argument("--bind", required=True)
    recv.add_argument("--port", type=int, default=7999)
    recv.add_argument("--duration", type=float, default=3600.0)
    args = parser.parse_args(argv)
    duration = min(args.duration, MAX_DURATION_S)
    if args.role == "send":
        run_sender(args.dst, args.port, args.src, args.period_us * 1000, duration)
    else:
        run_receiver(args.bind, args.port, duration)


if __name__ == "__main__":
    main()
