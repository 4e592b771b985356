"""Carries out the machine's kernel actions with pyroute2, idempotently, and reads the kernel back.

Each action becomes a short plan of netlink operations. ``execute`` runs the plan and ``describe``
prints it, so a dry run shows exactly what a real run would do. Every operation may be repeated:
adding uses RTM_NEWADDR with NLM_F_REPLACE, deleting an address that is already gone is not an
error, MAC and link state are set to a value. Running a whole move sequence again therefore
repairs any partial layout left by a crash in the middle of it.

NetOps acts on the network namespace it was created in (the IPRoute socket and the AF_PACKET
socket of the announcer are both opened there).
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import ipaddress
import itertools
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from pyroute2 import IPBatch, IPRoute
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from . import model
from .announce import Announcer, frames_for
from .config import Config

IFF_UP = 0x1
NLMSG_ERROR = 2
NLMSG_HDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
ACK_TIMEOUT_S = 1.0  # the kernel acks at once; this only bounds a wait on a broken socket


@dataclass(frozen=True)
class Carried:
    """One address that moves with the identity."""
    address: str         # "192.0.2.1/24", as in the configuration
    broadcast: str = ""  # IPv4 broadcast to set with it, when "broadcast" is carried

    @property
    def interface(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(self.address)


def carried_addresses(cfg: Config) -> tuple[Carried, ...]:
    """The carried addresses in the order they are added: main IPv4 first, so VIPs in its subnet
    become its secondaries, never the other way round."""
    ident = cfg.identity
    out = []
    if cfg.carries("ipv4"):
        brd = ident.broadcast_address if cfg.carries("broadcast") else ""
        out.append(Carried(ident.address, brd))
    if cfg.carries("ipv6"):
        out.extend(Carried(a) for a in ident.ipv6)
    if cfg.carries("vips"):
        out.extend(Carried(a) for a in ident.vips)
    return tuple(out)


def main_address(cfg: Config) -> str:
    """The address whose NIC is the holder: the main IPv4 one, or the first carried one."""
    carried = carried_addresses(cfg)
    return cfg.identity.address if cfg.carries("ipv4") or not carried else carried[0].address


@dataclass(frozen=True)
class Reconciled:
    """Where the carried parameters are, as read from the kernel."""
    holder: int | None                 # lowest path whose NIC has the main address
    carrier: tuple[bool, ...]          # per path: exists, admin up and carrier
    macs: tuple[str, ...]              # per path: current MAC ("" if the NIC is missing)
    found: dict[int, list[str]]        # path -> carried addresses on its NIC
    routes: dict[int, list[str]] = field(default_factory=dict)  # path -> carried routes via its NIC
    hw_macs: tuple[str, ...] = ()      # per path: permanent MAC where the driver reports one, else ""
    present: tuple[bool, ...] = ()     # per path: the NIC exists

    @property
    def split(self) -> dict[str, list[int]]:
        """Carried addresses present on more than one NIC."""
        where: dict[str, list[int]] = {}
        for path, addrs in self.found.items():
            for a in addrs:
                where.setdefault(a, []).append(path)
        return {a: paths for a, paths in where.items() if len(paths) > 1}

    @property
    def shared_macs(self) -> dict[str, list[int]]:
        """MACs held by more than one path NIC: a torn MAC swap."""
        where: dict[str, list[int]] = {}
        for path, mac in enumerate(self.macs):
            if mac:
                where.setdefault(mac, []).append(path)
        return {m: paths for m, paths in where.items() if len(paths) > 1}


@dataclass(frozen=True)
class _Op:
    """One idempotent step of a plan: its dry-run text, and either a netlink request (encoded for
    an ifindex) or a local step. Errnos in ``tolerate`` mean the goal is already reached."""
    text: str
    encode: Callable[[IPBatch, int], object] | None = None
    tolerate: frozenset[int] = frozenset()
    if_busy: tuple["_Op", ...] = ()   # run these instead when the kernel answers EBUSY
    local: Callable[[], object] | None = None   # a str it returns goes into ActionDone.detail


class NetOps:
    """Executes kernel actions. Requests are encoded once per (operation, ifindex) and each
    action's requests go to the kernel as one batch on the IPRoute socket: a failover costs a
    few netlink round trips, not one per address."""

    def __init__(self, cfg: Config, ipr: IPRoute | None = None):
        self.cfg = cfg
        self.carried = carried_addresses(cfg)
        self.ipr = ipr if ipr is not None else IPRoute()
        # Also resolves names to ifindexes, in the namespace NetOps was created in.
        self.announcer = Announcer()
        self._encoder = IPBatch()
        self._encoded: dict[tuple[str, int], bytes] = {}
        self._seq = itertools.count(1 << 20)
        self._frames: dict[str, list[bytes]] = {}  # announcement frames by source MAC

    def close(self) -> None:
        self.announcer.close()
        self._encoder.close()
        self.ipr.close()

    # ------------------------------------------------------------------ actions
    def prepare(self, actions: Iterable[model.Action]) -> None:
        """Encode the requests of ``actions`` ahead of time, so the first failover is not slower
        than the others. Touches nothing; interfaces that do not exist are skipped."""
        for act in actions:
            try:
                ifname, ops = self._plan(act)
                ifindex = self.announcer.ifindex(ifname)
            except (KeyError, OSError):
                continue
            for op in ops:
                for each in (op, *op.if_busy):
                    if each.encode is not None:
                        self._request(each, ifindex)

    def execute(self, act: model.Action) -> model.ActionDone | model.ActionFailed:
        """Carry out one kernel action; the outcome is an event stamped at completion."""
        try:
            ifname, ops = self._plan(act)
        except KeyError as exc:
            return self._failed(act, f"{act.type}: {exc.args[0]}")
        where = self._where(act, ifname)
        try:
            ifindex = self.announcer.ifindex(ifname)
        except OSError as exc:
            if exc.errno == errno.ENODEV and isinstance(act, model.DisableNic):
                # A NIC that is gone holds no address: clearing it is done.
                return model.ActionDone(time.monotonic_ns(), action_id=act.id, kind=act.type,
                                        detail=f"{ifname} absent: holds nothing")
            return self._failed(act, f"{where}: {_errname(exc.errno)} ({exc.strerror}) looking up the interface")
        notes: list[str] = []
        try:
            error = self._run(ops, ifindex, notes)
        except OSError as exc:
            error = f"{_errname(exc.errno)} ({exc.strerror})"
        if error:
            return self._failed(act, f"{where}: {error}")
        detail = "; ".join(notes) or f"ops={len(ops)}"
        return model.ActionDone(time.monotonic_ns(), action_id=act.id, kind=act.type, detail=detail)

    def describe(self, act: model.Action) -> str:
        """The exact change ``execute(act)`` would make, in iproute2 words. Touches nothing."""
        try:
            ifname, ops = self._plan(act)
        except KeyError as exc:
            return f"{act.type}: {exc.args[0]}"
        body = "; ".join(op.text for op in ops) or "nothing to do"
        return f"{self._where(act, ifname)}: {body}"

    def _run(self, ops: list[_Op], ifindex: int, notes: list[str]) -> str:
        """Run ``ops`` in order, consecutive netlink ones as one batch; stop at a batch or step that
        failed and return its error ("" if all went well)."""
        pending: list[_Op] = []
        for op in [*ops, None]:
            if op is not None and op.encode is not None:
                pending.append(op)
                continue
            if pending:
                error = self._send_batch(pending, ifindex)
                pending = []
                if error:
                    return error
            if op is not None:
                try:
                    note = op.local()
                except OSError as exc:
                    return f"{_errname(exc.errno)} ({exc.strerror}) at: {op.text}"
                if isinstance(note, str):
                    notes.append(note)
        return ""

    def _send_batch(self, ops: list[_Op], ifindex: int) -> str:
        """Send all requests in one datagram (the kernel runs them in order and acks each one)."""
        chunks, by_seq = [], {}
        for op in ops:
            seq = next(self._seq)
            chunk = bytearray(self._request(op, ifindex))
            struct.pack_into("=II", chunk, 8, seq, 0)
            chunks.append(chunk)
            by_seq[seq] = op
        self.ipr.sendto(b"".join(chunks), (0, 0))  # the kernel; IPRoute.send is not in pyroute2 0.7
        errors = []
        for seq, code in self._acks(set(by_seq)):
            op = by_seq[seq]
            if code == errno.EBUSY and op.if_busy:
                errors.append(self._send_batch(list(op.if_busy), ifindex))
            elif code and code not in op.tolerate:
                errors.append(f"RTNETLINK {_errname(code)} ({os.strerror(code)}) at: {op.text}")
        return "; ".join(e for e in errors if e)

    def _acks(self, seqs: set[int]) -> list[tuple[int, int]]:
        """Read NLMSG_ERROR acks until every request in ``seqs`` has one: [(seq, errno)]."""
        out: list[tuple[int, int]] = []
        fd = self.ipr.fileno()
        # One read per ack at most; anything else on the socket (late replies) is skipped.
        for _ in range(4 * len(seqs) + 4):
            if len(out) == len(seqs):
                return out
            if not select.select([fd], [], [], ACK_TIMEOUT_S)[0]:
                break
            buf = self.ipr.recv(65536)
            offset = 0
            while offset + NLMSG_HDR.size <= len(buf):
                length, msg_type, _flags, seq, _pid = NLMSG_HDR.unpack_from(buf, offset)
                if msg_type == NLMSG_ERROR and seq in seqs:
                    out.append((seq, -struct.unpack_from("=i", buf, offset + NLMSG_HDR.size)[0]))
                offset += max(length, NLMSG_HDR.size) + 3 & ~3
        if len(out) == len(seqs):
            return out
        raise OSError(errno.ETIMEDOUT, f"{len(seqs) - len(out)} of {len(seqs)} requests not acknowledged")

    def _request(self, op: _Op, ifindex: int) -> bytes:
        key = (op.text, ifindex)
        data = self._encoded.get(key)
        if data is None:
            self._encoder.reset()
            op.encode(self._encoder, ifindex)
            data = self._encoded[key] = bytes(self._encoder.batch)
        return data

    def _where(self, act: model.Action, ifname: str) -> str:
        return f"{act.type} path={act.path} {ifname}"

    def _failed(self, act: model.Action, error: str) -> model.ActionFailed:
        return model.ActionFailed(time.monotonic_ns(), action_id=act.id, kind=act.type, error=error)

    def _plan(self, act: model.Action) -> tuple[str, list[_Op]]:
        builders = {
            model.DisableNic: self._plan_disable,
            model.PlumbNic: self._plan_plumb,
            model.ConfigureNic: self._plan_configure,
            model.EnableNic: self._plan_enable,
            model.Announce: self._plan_announce,
            model.MoveRoutes: self._plan_routes,
        }
        build = builders.get(type(act))
        if build is None:
            raise KeyError(f"not a kernel action: {act.type}")
        if not 0 <= act.path < len(self.cfg.paths):
            raise KeyError(f"no path {act.path} (the configuration has {len(self.cfg.paths)})")
        ifname = self.cfg.paths[act.path].interface
        return ifname, build(act, ifname)

    def _plan_disable(self, act: model.DisableNic, ifname: str) -> list[_Op]:
        # Announcing addresses this NIC no longer has would mislead the peer.
        ops = [_Op("stop pending announcements", local=self.announcer.cancel)]
        # Secondaries (VIPs) first: deleting a primary address flushes its secondaries too.
        ops += [self._addr_del(c, ifname) for c in reversed(self.carried)]
        if act.admin_down:
            ops.append(self._link_state(ifname, "down"))
        return ops

    def _plan_plumb(self, act: model.PlumbNic, ifname: str) -> list[_Op]:
        return [self._link_state(ifname, "up")]

    def _plan_configure(self, act: model.ConfigureNic, ifname: str) -> list[_Op]:
        if not act.layout:
            return []
        text = "MAC layout " + " ".join(
            f"{self.cfg.paths[p].interface}={mac}" for p, mac in enumerate(act.layout) if mac)
        return [_Op(f"{text} (a permutation, through temporary locally administered MACs)",
                    local=lambda: self._apply_layout(act.layout, act.path))]

    # ------------------------------------------------------------------ MAC layout
    def park_mac(self, path: int) -> str:
        """A locally administered MAC of this node's NIC on ``path``, unique to node and NIC, that
        the NIC holds for a moment while MACs change places."""
        seed = f"{self.cfg.node_id}/{self.cfg.paths[path].interface}".encode()
        b = bytearray(hashlib.blake2s(seed, digest_size=6).digest())
        b[0] = (b[0] & 0xFC) | 0x02
        return b.hex(":")

    def _apply_layout(self, layout: tuple[str, ...], first: int) -> str:
        """Give every present path NIC its MAC in ``layout``, one NIC at a time, never setting a
        MAC that another path NIC holds at that moment: a cycle (a swap) is broken by parking one
        NIC on its temporary MAC. ``first`` (the target) gets its MAC as early as it can."""
        current: dict[int, str] = {}
        for p, pc in enumerate(self.cfg.paths):
            try:
                current[p] = self.announcer.hwaddr(pc.interface)
            except OSError as exc:
                if exc.errno != errno.ENODEV:
                    raise
        pending = [p for p in sorted(current, key=lambda p: p != first)
                   if p < len(layout) and layout[p] and current[p] != layout[p]]
        steps = []
        for _ in range(2 * len(self.cfg.paths) + 1):  # each NIC moves at most twice
            if not pending:
                break
            held = set(current.values())
            free = [p for p in pending if layout[p] not in held]
            if free:
                p, mac = free[0], layout[free[0]]
                pending.remove(p)
            else:  # every wanted MAC is held: a cycle; park one NIC that is not the target
                p = next((q for q in pending if q != first), pending[0])
                mac = self.park_mac(p)
            ifname = self.cfg.paths[p].interface
            error = self._send_batch([self._link_mac(ifname, mac, keep_up=True)], self.announcer.ifindex(ifname))
            if error:
                raise OSError(errno.EIO, f"{ifname}: {error}")
            current[p] = mac
            steps.append(f"{ifname}={mac}")
        return "macs " + (" ".join(steps) or "already in place")

    def _plan_enable(self, act: model.EnableNic, ifname: str) -> list[_Op]:
        return [self._addr_add(c, ifname) for c in self.carried]

    def _plan_announce(self, act: model.Announce, ifname: str) -> list[_Op]:
        addrs = [c.address for c in self.carried]
        interval_ms = self.cfg.failover.announce_interval_ms
        if act.count < 1 or not addrs:
            return []

        def send() -> str:
            mac = self.announcer.hwaddr(ifname)
            frames = self._frames.get(mac)
            if frames is None:
                frames = self._frames[mac] = frames_for(mac, addrs)
            sent = self.announcer.announce(ifname, frames, act.count, interval_ms / 1000)
            return f"sent {sent} frames from {mac}; {act.count - 1} more rounds every {interval_ms:g} ms"

        text = (f"announce {' '.join(addrs)} dev {ifname} count {act.count} "
                f"interval {interval_ms:g}ms (gratuitous ARP / unsolicited NA)")
        return [_Op(text, local=send)]

    def _plan_routes(self, act: model.MoveRoutes, ifname: str) -> list[_Op]:
        if not self.cfg.carries("routes"):
            return []
        ops = []
        for r in self.cfg.identity.routes:
            spec = {"dst": r.to, "family": _family(r.to)}
            if r.via:
                spec["gateway"] = r.via
            via = f" via {r.via}" if r.via else ""
            ops.append(_Op(f"ip route replace {r.to}{via} dev {ifname}",
                           lambda ipb, ix, spec=spec: ipb.route("replace", oif=ix, **spec)))
        return ops

    # ------------------------------------------------------------------ operations
    @staticmethod
    def _addr_spec(c: Carried) -> dict:
        iface = c.interface
        return {"address": str(iface.ip), "prefixlen": iface.network.prefixlen,
                "family": socket.AF_INET if iface.version == 4 else socket.AF_INET6}

    def _addr_add(self, c: Carried, ifname: str) -> _Op:
        spec = self._addr_spec(c)
        text = f"ip addr replace {c.address}"
        if c.broadcast:
            spec["broadcast"] = c.broadcast
            text += f" brd {c.broadcast}"
        if spec["family"] == socket.AF_INET6:
            # No duplicate address detection: the address is usable the moment it lands.
            spec["flags"] = IFA_F_NODAD
            text += " nodad"
        return _Op(f"{text} dev {ifname}", lambda ipb, ix: ipb.addr("replace", index=ix, **spec))

    def _addr_del(self, c: Carried, ifname: str) -> _Op:
        spec = self._addr_spec(c)
        return _Op(f"ip addr del {c.address} dev {ifname}",
                   lambda ipb, ix: ipb.addr("del", index=ix, **spec),
                   tolerate=frozenset({errno.EADDRNOTAVAIL}))

    def _link_state(self, ifname: str, state: str) -> _Op:
        return _Op(f"ip link set {ifname} {state}",
                   lambda ipb, ix: ipb.link("set", index=ix, state=state))

    def _link_mac(self, ifname: str, mac: str, keep_up: bool) -> _Op:
        set_mac = _Op(f"ip link set {ifname} address {mac}",
                      lambda ipb, ix: ipb.link("set", index=ix, address=mac))
        # Many drivers refuse a MAC change while the NIC is up: down, change, up again.
        busy = (self._link_state(ifname, "down"), set_mac) + ((self._link_state(ifname, "up"),) if keep_up else ())
        return dataclasses.replace(set_mac, if_busy=busy)

    # ------------------------------------------------------------------ reading back
    def reconcile(self) -> Reconciled:
        """Read which path NIC carries which carried addresses and routes, carrier and MAC per path."""
        by_name = {}
        for link in self.ipr.get_links():
            by_name[link.get_attr("IFLA_IFNAME")] = link
        index_to_path: dict[int, int] = {}
        carrier, macs, hw_macs = [], [], []
        for i, p in enumerate(self.cfg.paths):
            link = by_name.get(p.interface)
            if link is None:
                carrier.append(False)
                macs.append("")
                hw_macs.append("")
                continue
            index_to_path[link["index"]] = i
            carrier.append(bool(link["flags"] & IFF_UP) and link.get_attr("IFLA_CARRIER") == 1)
            macs.append(link.get_attr("IFLA_ADDRESS") or "")
            perm = link.get_attr("IFLA_PERM_ADDRESS") or ""
            hw_macs.append("" if perm in ("", "00:00:00:00:00:00") else perm)

        wanted = {self._key(c.address): c.address for c in self.carried}
        found: dict[int, list[str]] = {}
        for msg in self.ipr.get_addr():
            path = index_to_path.get(msg["index"])
            ip = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            key = (ipaddress.ip_address(ip), msg["prefixlen"]) if ip else None
            if path is not None and key in wanted:
                found.setdefault(path, []).append(wanted[key])

        main = main_address(self.cfg)
        holders = sorted(p for p, addrs in found.items() if main in addrs)
        return Reconciled(holder=holders[0] if holders else None, carrier=tuple(carrier),
                          macs=tuple(macs), found={p: sorted(a) for p, a in sorted(found.items())},
                          routes=self._carried_routes(index_to_path), hw_macs=tuple(hw_macs),
                          present=tuple(bool(mac) or by_name.get(p.interface) is not None
                                        for mac, p in zip(macs, self.cfg.paths)))

    def _carried_routes(self, index_to_path: dict[int, int]) -> dict[int, list[str]]:
        if not self.cfg.carries("routes") or not self.cfg.identity.routes:
            return {}
        wanted = {ipaddress.ip_network(r.to, strict=False): r.to for r in self.cfg.identity.routes}
        out: dict[int, list[str]] = {}
        for family in {_family(r.to) for r in self.cfg.identity.routes}:
            for msg in self.ipr.get_routes(family=family):
                dst = msg.get_attr("RTA_DST")
                if dst is None:
                    continue
                net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False)
                path = index_to_path.get(msg.get_attr("RTA_OIF"))
                if net in wanted and path is not None:
                    out.setdefault(path, []).append(wanted[net])
        return out

    @staticmethod
    def _key(address: str) -> tuple:
        iface = ipaddress.ip_interface(address)
        return iface.ip, iface.network.prefixlen


def _family(address: str) -> int:
    return socket.AF_INET if ipaddress.ip_interface(address).version == 4 else socket.AF_INET6


def _errname(code: int | None) -> str:
    return errno.errorcode.get(code or 0, f"errno {code}")
