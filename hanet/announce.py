"""Gratuitous ARP and unsolicited neighbour advertisements after an identity move.

Frames are built whole and sent on an AF_PACKET socket, so they leave with the NIC's MAC even
while an IPv6 address is still being set up. The first round goes out at once; the remaining
rounds run on a timer thread so the caller never waits for the spacing. A new announcement, or
``cancel()``, stops the rounds still pending: the identity has moved again.
"""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import threading
import time

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARPOP_REQUEST = 1
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LINKADDR = 2
NA_FLAG_OVERRIDE = 0x20000000
SIOCGIFHWADDR = 0x8927
SIOCGIFINDEX = 0x8933
BROADCAST_MAC = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def gratuitous_arp(mac: str, address: str) -> bytes:
    """An ARP request for our own ``address`` (sender = target), broadcast (RFC 5227 §3)."""
    hw, ip = mac_bytes(mac), ipaddress.IPv4Address(address).packed
    eth = BROADCAST_MAC + hw + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, ARPOP_REQUEST) + hw + ip + b"\x00" * 6 + ip
    return eth + arp


def unsolicited_na(mac: str, address: str) -> bytes:
    """A neighbour advertisement to all-nodes with the override flag (RFC 4861 §7.2.6)."""
    hw, target = mac_bytes(mac), ipaddress.IPv6Address(address).packed
    body = struct.pack("!BBHI", ND_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE) + target
    body += struct.pack("!BB", ND_OPT_TARGET_LINKADDR, 1) + hw
    pseudo = target + ALL_NODES.packed + struct.pack("!I3xB", len(body), socket.IPPROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    # Hop limit 255: receivers drop neighbour discovery that crossed a router.
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), socket.IPPROTO_ICMPV6, 255) + target + ALL_NODES.packed
    return ALL_NODES_MAC + hw + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def frames_for(mac: str, addresses: list[str]) -> list[bytes]:
    """One announcement frame per address ("ip" or "ip/prefix"), ARP for IPv4, NA for IPv6."""
    out = []
    for item in addresses:
        ip = ipaddress.ip_interface(item).ip
        out.append(gratuitous_arp(mac, str(ip)) if ip.version == 4 else unsolicited_na(mac, str(ip)))
    return out


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Announcer:
    """Sends announcement rounds on one AF_PACKET socket opened in the caller's namespace.

    Later rounds are kept as one schedule served by a single worker thread, started on first use.
    """

    def __init__(self) -> None:
        # Protocol 0: a send-only socket that is never handed received frames.
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self._wake = threading.Condition()
        self._schedule: tuple[str, list[bytes], int] | None = None  # ifname, frames, rounds left
        self._interval_s = 0.0
        self._worker: threading.Thread | None = None
        self._closed = False
        self.sent = 0
        self.send_errors = 0

    def ifindex(self, ifname: str) -> int:
        """The NIC's ifindex in this socket's namespace (SIOCGIFINDEX; OSError ENODEV if none)."""
        res = fcntl.ioctl(self._sock.fileno(), SIOCGIFINDEX, struct.pack("16s16x", ifname.encode()))
        return struct.unpack_from("=i", res, 16)[0]

    def hwaddr(self, ifname: str) -> str:
        """The NIC's current MAC (SIOCGIFHWADDR: microseconds, no netlink round trip)."""
        res = fcntl.ioctl(self._sock.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", ifname.encode()))
        return res[18:24].hex(":")

    def announce(self, ifname: str, frames: list[bytes], count: int, interval_s: float) -> int:
        """Send round 1 now (errors raise OSError); schedule rounds 2..count. Returns frames sent."""
        self.cancel()
        if count < 1 or not frames:
            return 0
        self._send_round(ifname, frames)
        if count > 1:
            with self._wake:
                self._schedule, self._interval_s = (ifname, frames, count - 1), interval_s
                if self._worker is None:
                    self._worker = threading.Thread(target=self._serve, name="announce", daemon=True)
                    self._worker.start()
                self._wake.notify()
        return len(frames)

    def cancel(self) -> None:
        with self._wake:
            self._schedule = None
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._schedule, self._closed = None, True
            self._wake.notify()
        if self._worker is not None:
            self._worker.join(timeout=1.0)
        self._sock.close()

    def _send_round(self, ifname: str, frames: list[bytes]) -> None:
        for frame in frames:
            self._sock.sendto(frame, (ifname, 0))
            self.sent += 1

    def _serve(self) -> None:
        with self._wake:
            while not self._closed:
                if self._schedule is None:
                    self._wake.wait()
                    continue
                current = self._schedule
                due = time.monotonic() + self._interval_s
                # Woken early by a cancel or a newer announcement: the schedule is no longer ours.
                while self._schedule is current and time.monotonic() < due:
                    self._wake.wait(due - time.monotonic())
                if self._schedule is not current:
                    continue
                ifname, frames, left = current
                self._schedule = (ifname, frames, left - 1) if left > 1 else None
                try:
                    self._send_round(ifname, frames)
                except OSError:
                    # The NIC went away or down meanwhile; later rounds would fail the same way.
                    self.send_errors += 1
                    self._schedule = None
