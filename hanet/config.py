"""TOML configuration -> frozen dataclasses.

Every error names the file, the key path and the reason. Parsing goes on past a bad key, so one
``ConfigError`` reports every problem in the file at once, before anything touches an interface.
The CLI turns it into exit status 2.
"""
from __future__ import annotations

import contextvars
import dataclasses
import grp
import ipaddress
import os
import pwd
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from . import keyfile

NODE_ID_MAX = 16  # bytes; the heartbeat frame carries node ids in a fixed 16-byte field
KEY_MIN_BYTES = keyfile.KEY_MIN_BYTES  # of key material; the format is described in keyfile.py
CARRY_KINDS = ("ipv4", "broadcast", "mac", "vips", "ipv6", "routes")
DURABILITY = ("transition", "every", "none")
FAILBACK_POLICIES = ("auto", "manual")
LOG_FAILURE_POLICIES = ("continue", "stop")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")


@dataclass(frozen=True)
class Problem:
    """One mistake in a configuration file."""
    file: str
    key: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.reason}"


class ConfigError(Exception):
    """A bad configuration: every ``Problem`` found; ``file``, ``key``, ``reason`` are the first's."""

    def __init__(self, file: str, key: str, reason: str, *more: Problem):
        self.problems: tuple[Problem, ...] = (Problem(file, key, reason), *more)
        self.file, self.key, self.reason = file, key, reason
        super().__init__("; ".join(str(p) for p in self.problems))

    @classmethod
    def of(cls, problems: list[Problem]) -> "ConfigError":
        first, *more = problems
        return cls(first.file, first.key, first.reason, *more)


#: The problems found so far by the ``parse`` in progress: set for its duration, so every section
#: and check reports into one list and parsing goes on past a bad key. Outside a parse, a problem
#: raises at once.
_collecting: contextvars.ContextVar[list[Problem] | None] = contextvars.ContextVar("hanet_config_problems", default=None)


def _report(file: str, key: str, reason: str) -> None:
    """Record a problem in the parse in progress, or raise it when there is none."""
    problems = _collecting.get()
    if problems is None:
        raise ConfigError(file, key, reason)
    problems.append(Problem(file, key, reason))


@dataclass(frozen=True)
class PathConfig:
    name: str
    interface: str
    peer_mac: str = ""  # the peer NIC's MAC on this link; "" = any (the peer is known by node id)


@dataclass(frozen=True)
class HeartbeatConfig:
    interval_ms: float = 10.0
    multiplier: int = 3
    recover_count: int = 3
    reply_timeout_ms: float = 0.0  # last miss's wait; 0 = auto: from the RTT (RFC 6298), 0.25 ms to interval_ms
    ethertype: int = 0x88B5
    key_file: str = "/etc/hanet/heartbeat.key"
    replay_window: int = 64
    key: bytes = field(default=b"", repr=False)  # read from key_file at load time
    rcvbuf_kb: int = 4096  # receive ring of each path socket: room for bursts of junk frames
    rt_priority: int = 0  # SCHED_FIFO priority of the probe thread (needs CAP_SYS_NICE); 0 = normal
    # Confirmation probing's floor: no path is lost before this long after its first silence.
    # 0 = off: BFD's rule alone (see conf/hanet.toml for when to turn it on).
    confirm_ms: float = 0.0


@dataclass(frozen=True)
class LinkConfig:
    poll_interval_ms: float = 1.0
    down_hold_ms: float = 0.0
    up_hold_ms: float = 0.0
    netlink: bool = True


@dataclass(frozen=True)
class FailoverConfig:
    enable_delay_ms: float = 0.0
    admin_down_failed: bool = False
    announce_count: int = 3
    announce_interval_ms: float = 50.0
    carry: tuple[str, ...] = CARRY_KINDS
    coordinate: bool = True
    move_timeout_ms: float = 5000.0  # a move not done this long after it started is retried, then given up


@dataclass(frozen=True)
class FailbackConfig:
    policy: str = "auto"
    hold_down_ms: float = 2000.0


@dataclass(frozen=True)
class DampingConfig:
    enabled: bool = True
    penalty: float = 1000.0
    suppress: float = 3000.0
    reuse: float = 750.0
    half_life_ms: float = 15000.0
    max_penalty: float = 12000.0


@dataclass(frozen=True)
class QualityConfig:
    enabled: bool = False
    max_loss_percent: float = 20.0
    window_ms: float = 1000.0


@dataclass(frozen=True)
class RouteConfig:
    to: str
    via: str = ""


@dataclass(frozen=True)
class IdentityConfig:
    address: str  # "192.0.2.1/24"
    broadcast: str = ""  # "" = derived from address and prefix
    ipv6: tuple[str, ...] = ()
    vips: tuple[str, ...] = ()
    mac: str = ""  # "" = the primary NIC's own MAC, learned at first start
    routes: tuple[RouteConfig, ...] = ()

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.address)

    @property
    def broadcast_address(self) -> str:
        return self.broadcast or str(self.interface.network.broadcast_address)


@dataclass(frozen=True)
class EventLogConfig:
    path: str = "/var/lib/hanet/events.hlog"
    durability: str = "transition"
    rotate_bytes: int = 64 * 1024 * 1024
    keep: int = 8
    on_failure: str = "continue"  # the log cannot be written: "continue" acting (degraded) or "stop"
    wait_ms: float = 20.0         # the longest a transition waits for its fdatasync before acting


@dataclass(frozen=True)
class ControlConfig:
    socket: str = "/run/hanet/control.sock"
    mode: int = 0o600
    # Who may do what (root and the daemon's own user may do everything): names from the user and
    # group databases, checked against each caller's SO_PEERCRED credentials.
    admin_users: tuple[str, ...] = ()   # every command
    admin_groups: tuple[str, ...] = ()
    read_users: tuple[str, ...] = ()    # status only
    read_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = ""  # "host:port"; "" = off


@dataclass(frozen=True)
class Config:
    file: str
    node_id: str
    peer_id: str
    paths: tuple[PathConfig, ...]
    identity: IdentityConfig
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    link: LinkConfig = LinkConfig()
    failover: FailoverConfig = FailoverConfig()
    failback: FailbackConfig = FailbackConfig()
    damping: DampingConfig = DampingConfig()
    quality: QualityConfig = QualityConfig()
    eventlog: EventLogConfig = EventLogConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()

    def carries(self, kind: str) -> bool:
        return kind in self.failover.carry


# --------------------------------------------------------------------------- validation
class _Section:
    """Reads typed keys from one TOML table and rejects keys it was never asked for.

    A bad key is reported (``_report``) and read as its default, or None when it has none, so the
    rest of the file is still checked. ``table=None`` is a table already reported as missing or
    wrong: its keys read as defaults and report nothing more.
    """

    def __init__(self, file: str, prefix: str, table: Any):
        self.file, self.prefix = file, prefix
        self.quiet = table is None
        if not self.quiet and not isinstance(table, dict):
            _report(file, prefix, f"must be a table, not {type(table).__name__}")
            self.quiet = True
        self.table = table if not self.quiet else {}
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, reason: str) -> ConfigError:
        """The error for key ``name``, for a check that cannot read on past it (``raise`` it)."""
        return ConfigError(self.file, self.key(name), reason)

    def report(self, name: str, reason: str) -> None:
        if not self.quiet:
            _report(self.file, self.key(name), reason)

    def get(self, name: str, kind: type | tuple, default: Any = ..., check: Callable | None = None):
        """The value of key ``name``; on a problem, reported, ``default`` (None if required)."""
        self.seen.add(name)
        fallback = None if default is ... else default
        if name not in self.table:
            if default is ...:
                self.report(name, "is required")
            return fallback
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a config that says `multiplier = true` is still wrong.
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.report(name, f"must be {names}, not {type(value).__name__} ({_short(value)})")
            return fallback
        if check is not None:
            reason = check(value)
            if reason:
                self.report(name, reason)
                return fallback
        return value

    def number(self, name: str, default: Any, lo: float, hi: float, integer: bool = False):
        kind = int if integer else (int, float)
        return self.get(name, kind, default, lambda v: _range(v, lo, hi))

    def done(self) -> None:
        for name in self.table:
            if name not in self.seen:
                self.report(name, "unknown key")


def _short(value: Any, limit: int = 60) -> str:
    """repr() cut short: a wrong value may be a whole nested table."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _range(value: float, lo: float, hi: float) -> str:
    return "" if lo <= value <= hi else f"out of range: {value} not in [{lo}, {hi}]"


def _one_of(options: tuple[str, ...]) -> Callable[[str], str]:
    return lambda v: "" if v in options else f"must be one of {', '.join(options)}; got {v!r}"


def _node_id(value: str) -> str:
    raw = value.encode("utf-8")
    if not raw or len(raw) > NODE_ID_MAX:
        return f"must be 1 to {NODE_ID_MAX} bytes"
    if not value.isprintable() or " " in value:
        return "must be printable with no spaces"
    return ""


def _mac(value: str) -> str:
    return "" if value == "" or MAC_RE.match(value.lower()) else f"not a MAC address: {value!r}"


def _ifname(value: str) -> str:
    return "" if IFNAME_RE.match(value) else f"not a valid interface name: {value!r}"


def _ip_interface(version: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            iface = ipaddress.ip_interface(value)
        except ValueError as exc:
            return str(exc)
        if iface.version != version:
            return f"must be an IPv{version} address with prefix, got {value!r}"
        if "/" not in value:
            return f"needs a prefix length, e.g. {value}/24"
        return ""
    return check


def _any_ip_interface(value: str) -> str:
    reason = _ip_interface(4)(value)
    return "" if not reason else _ip_interface(6)(value)


def _ip_list(sec: _Section, name: str, check: Callable[[str], str]) -> tuple[str, ...]:
    good = []
    for i, item in enumerate(sec.get(name, list, [])):
        reason = check(item) if isinstance(item, str) else f"must be str, not {type(item).__name__}"
        if reason:
            sec.report(f"{name}[{i}]", reason)
        else:
            good.append(item)
    return tuple(good)


def _auto_or_ms(hb: _Section, name: str, lo: float, auto: float | None) -> float | None:
    """``"auto"`` (``auto``) or a time in ms."""
    def check(v) -> str:
        if isinstance(v, str):
            return "" if v == "auto" else f"must be \"auto\" or a number of ms; got {v!r}"
        return _range(v, lo, 60000)
    value = hb.get(name, (str, int, float), "auto", check)
    return auto if value == "auto" else float(value)


def _read_key(file: str, key_file: str, base_dir: str) -> bytes:
    path = key_file if os.path.isabs(key_file) else os.path.join(base_dir, key_file)
    try:
        return keyfile.read_key(path)
    except keyfile.KeyFileError as exc:
        raise ConfigError(file, "heartbeat.key_file", str(exc)) from None


def _socket_mode(value: int) -> str:
    if not 0 <= value <= 0o777:
        return f"must be a file mode from 0o000 to 0o777, e.g. 0o600; got {value:#o}"
    if value & 0o002:
        return (f"{value:#o} lets every local user connect to the control socket; use 0o600 (owner only) "
                f"or 0o660 and name who may do what in admin_groups / read_groups")
    return ""


def _socket_path(value: str) -> str:
    if not value:
        return "must not be empty"
    if len(value.encode()) >= 108:
        return "path too long for a Unix socket"
    return keyfile.unsafe_directories(os.path.dirname(os.path.abspath(value)))


def _names(sec: _Section, name: str, lookup: Callable[[str], Any], what: str) -> tuple[str, ...]:
    """A list of user or group names, each of which must exist here."""
    items = sec.get(name, list, [])
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise sec.fail(f"{name}[{i}]", f"must be str, not {type(item).__name__}")
        try:
            lookup(item)
        except KeyError:
            raise sec.fail(f"{name}[{i}]", f"no {what} named {item!r} on this host") from None
    return tuple(items)


def _toml(text: str, file: str) -> dict:
    """The TOML document; every way the decoder can fail is a ConfigError."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "(syntax)", str(exc)) from None
    except RecursionError:
        # tomllib descends once per nested array or inline table.
        raise ConfigError(file, "(syntax)", "arrays or inline tables nested too deeply") from None
    except (ValueError, MemoryError) as exc:  # e.g. an integer past Python's digit limit
        raise ConfigError(file, "(syntax)", f"cannot decode: {exc}") from None


def parse(text: str, file: str = "<config>", base_dir: str = ".",
          interface_exists: Callable[[str], bool] | None = None) -> Config:
    """Parse and validate TOML ``text``; one ConfigError names every problem found.

    ``interface_exists`` checks each path's NIC if given.
    """
    doc = _toml(text, file)
    problems: list[Problem] = []
    token = _collecting.set(problems)
    try:
        cfg = _parse(doc, file, base_dir, interface_exists)
    except ConfigError as exc:  # a check that cannot go on raises; what came before still counts
        problems.extend(exc.problems)
    finally:
        _collecting.reset(token)
    if problems:
        raise ConfigError.of(problems)
    return cfg


def _parse(doc: dict, file: str, base_dir: str, interface_exists: Callable[[str], bool] | None) -> Config:
    top = _Section(file, "", doc)

    node = _Section(file, "node", top.get("node", dict))
    node_id = node.get("id", str, check=_node_id)
    peer_id = node.get("peer", str, check=_node_id)
    node.done()
    if peer_id is not None and peer_id == node_id:
        _report(file, "node.peer", "must differ from node.id")

    raw_paths = top.get("path", list)
    if raw_paths is not None and len(raw_paths) < 2:
        _report(file, "path", f"needs at least 2 paths (primary first), found {len(raw_paths)}")
    if raw_paths is not None and len(raw_paths) > 8:
        _report(file, "path", "at most 8 paths are supported")
    paths = []
    for i, raw in enumerate(raw_paths or []):
        sec = _Section(file, f"path[{i}]", raw)
        paths.append(PathConfig(
            name=sec.get("name", str, f"path{i}", check=lambda v: "" if v else "must not be empty"),
            interface=sec.get("interface", str, check=_ifname),
            peer_mac=sec.get("peer_mac", str, "", check=_mac).lower(),
        ))
        sec.done()
    for field_name in ("name", "interface"):
        values = [getattr(p, field_name) for p in paths]
        for i, v in enumerate(values):
            if v is not None and values.index(v) != i:
                _report(file, f"path[{i}].{field_name}", f"{v!r} is used by path[{values.index(v)}] too")
    if interface_exists is not None:
        for i, p in enumerate(paths):
            if p.interface is not None and not interface_exists(p.interface):
                _report(file, f"path[{i}].interface", f"no interface named {p.interface!r} here")

    hb = _Section(file, "heartbeat", top.get("heartbeat", dict, {}))
    d = HeartbeatConfig()
    heartbeat = HeartbeatConfig(
        interval_ms=float(hb.number("interval_ms", d.interval_ms, 0.5, 60000)),
        multiplier=hb.number("multiplier", d.multiplier, 1, 255, integer=True),
        recover_count=hb.number("recover_count", d.recover_count, 1, 1000, integer=True),
        reply_timeout_ms=_auto_or_ms(hb, "reply_timeout_ms", 0.01, 0.0),
        ethertype=hb.number("ethertype", d.ethertype, 0x0600, 0xFFFF, integer=True),
        key_file=hb.get("key_file", str, d.key_file),
        replay_window=hb.number("replay_window", d.replay_window, 1, 1024, integer=True),
        rcvbuf_kb=hb.number("rcvbuf_kb", d.rcvbuf_kb, 64, 1 << 20, integer=True),
        rt_priority=hb.number("rt_priority", d.rt_priority, 0, 99, integer=True),
        confirm_ms=float(hb.number("confirm_ms", d.confirm_ms, 0, 60000)),
    )
    hb.done()
    if heartbeat.reply_timeout_ms > heartbeat.interval_ms:
        _report(file, "heartbeat.reply_timeout_ms",
                f"{heartbeat.reply_timeout_ms} ms is longer than interval_ms ({heartbeat.interval_ms} ms)")
    if heartbeat.confirm_ms > heartbeat.interval_ms:
        _report(file, "heartbeat.confirm_ms",
                f"{heartbeat.confirm_ms} ms is longer than interval_ms ({heartbeat.interval_ms} ms)")
    if heartbeat.ethertype in (0x0800, 0x0806, 0x86DD, 0x8100, 0x88A8, 0x88CC):
        _report(file, "heartbeat.ethertype", f"0x{heartbeat.ethertype:04X} belongs to another protocol")
    try:
        heartbeat = dataclasses.replace(heartbeat, key=_read_key(file, heartbeat.key_file, base_dir))
    except ConfigError as exc:
        _report(exc.file, exc.key, exc.reason)

    ln = _Section(file, "link", top.get("link", dict, {}))
    d2 = LinkConfig()
    link = LinkConfig(
        poll_interval_ms=float(ln.number("poll_interval_ms", d2.poll_interval_ms, 0.1, 60000)),
        down_hold_ms=float(ln.number("down_hold_ms", d2.down_hold_ms, 0, 600000)),
        up_hold_ms=float(ln.number("up_hold_ms", d2.up_hold_ms, 0, 600000)),
        netlink=ln.get("netlink", bool, d2.netlink),
    )
    ln.done()

    fo = _Section(file, "failover", top.get("failover", dict, {}))
    d3 = FailoverConfig()
    carry = []
    for i, kind in enumerate(fo.get("carry", list, list(d3.carry))):
        if kind in CARRY_KINDS:
            carry.append(kind)
        else:
            _report(file, f"failover.carry[{i}]", f"must be one of {', '.join(CARRY_KINDS)}; got {_short(kind)}")
    failover = FailoverConfig(
        enable_delay_ms=float(fo.number("enable_delay_ms", d3.enable_delay_ms, 0, 600000)),
        admin_down_failed=fo.get("admin_down_failed", bool, d3.admin_down_failed),
        announce_count=fo.number("announce_count", d3.announce_count, 0, 255, integer=True),
        announce_interval_ms=float(fo.number("announce_interval_ms", d3.announce_interval_ms, 0, 10000)),
        carry=tuple(carry),
        coordinate=fo.get("coordinate", bool, d3.coordinate),
        move_timeout_ms=float(fo.number("move_timeout_ms", d3.move_timeout_ms, 100, 600000)),
    )
    fo.done()

    fb = _Section(file, "failback", top.get("failback", dict, {}))
    failback = FailbackConfig(
        policy=fb.get("policy", str, "auto", check=_one_of(FAILBACK_POLICIES)),
        hold_down_ms=float(fb.number("hold_down_ms", FailbackConfig.hold_down_ms, 0, 86400000)),
    )
    fb.done()

    dm = _Section(file, "damping", top.get("damping", dict, {}))
    d4 = DampingConfig()
    damping = DampingConfig(
        enabled=dm.get("enabled", bool, d4.enabled),
        penalty=float(dm.number("penalty", d4.penalty, 1, 1e6)),
        suppress=float(dm.number("suppress", d4.suppress, 1, 1e7)),
        reuse=float(dm.number("reuse", d4.reuse, 1, 1e7)),
        half_life_ms=float(dm.number("half_life_ms", d4.half_life_ms, 1, 86400000)),
        max_penalty=float(dm.number("max_penalty", d4.max_penalty, 1, 1e8)),
    )
    dm.done()
    if damping.reuse >= damping.suppress:
        _report(file, "damping.reuse", "must be below damping.suppress")
    if damping.max_penalty < damping.suppress:
        _report(file, "damping.max_penalty", "must be at least damping.suppress")

    qu = _Section(file, "quality", top.get("quality", dict, {}))
    quality = QualityConfig(
        enabled=qu.get("enabled", bool, False),
        max_loss_percent=float(qu.number("max_loss_percent", QualityConfig.max_loss_percent, 0.1, 100)),
        window_ms=float(qu.number("window_ms", QualityConfig.window_ms, 10, 600000)),
    )
    qu.done()

    idn = _Section(file, "identity", top.get("identity", dict))
    routes = []
    for i, raw in enumerate(idn.get("routes", list, [])):
        rs = _Section(file, f"identity.routes[{i}]", raw)
        to = rs.get("to", str, check=_any_ip_interface)
        via = rs.get("via", str, "", check=lambda v: "" if v == "" or _is_ip(v) else f"not an IP address: {v!r}")
        rs.done()
        routes.append(RouteConfig(to=to, via=via))
    identity = IdentityConfig(
        address=idn.get("address", str, check=_ip_interface(4)),
        broadcast=idn.get("broadcast", str, "", check=lambda v: "" if v == "" or _is_ip(v, 4) else f"not an IPv4 address: {v!r}"),
        ipv6=_ip_list(idn, "ipv6", _ip_interface(6)),
        vips=_ip_list(idn, "vips", _any_ip_interface),
        mac=idn.get("mac", str, "", check=_mac).lower(),
        routes=tuple(routes),
    )
    idn.done()

    el = _Section(file, "eventlog", top.get("eventlog", dict, {}))
    d5 = EventLogConfig()
    eventlog = EventLogConfig(
        path=el.get("path", str, d5.path, check=lambda v: "" if v else "must not be empty"),
        durability=el.get("durability", str, d5.durability, check=_one_of(DURABILITY)),
        rotate_bytes=el.number("rotate_bytes", d5.rotate_bytes, 4096, 1 << 40, integer=True),
        keep=el.number("keep", d5.keep, 1, 10000, integer=True),
        on_failure=el.get("on_failure", str, d5.on_failure, check=_one_of(LOG_FAILURE_POLICIES)),
        wait_ms=float(el.number("wait_ms", d5.wait_ms, 0, 10000)),
    )
    el.done()

    ct = _Section(file, "control", top.get("control", dict, {}))
    control = ControlConfig(
        socket=ct.get("socket", str, ControlConfig.socket, check=_socket_path),
        mode=ct.get("mode", int, ControlConfig.mode, check=_socket_mode),
        admin_users=_names(ct, "admin_users", pwd.getpwnam, "user"),
        admin_groups=_names(ct, "admin_groups", grp.getgrnam, "group"),
        read_users=_names(ct, "read_users", pwd.getpwnam, "user"),
        read_groups=_names(ct, "read_groups", grp.getgrnam, "group"),
    )
    ct.done()

    mt = _Section(file, "metrics", top.get("metrics", dict, {}))
    metrics = MetricsConfig(listen=mt.get("listen", str, "", check=_hostport))
    mt.done()
    top.done()

    return Config(file=file, node_id=node_id, peer_id=peer_id, paths=tuple(paths), identity=identity,
                  heartbeat=heartbeat, link=link, failover=failover, failback=failback,
                  damping=damping, quality=quality, eventlog=eventlog, control=control, metrics=metrics)


def _is_ip(value: str, version: int | None = None) -> bool:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return False
    return version is None or addr.version == version


def _hostport(value: str) -> str:
    if value == "":
        return ""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"must be HOST:PORT, got {value!r}"
    return ""


def load(path: str, interface_exists: Callable[[str], bool] | None = None) -> Config:
    """Read and validate the file at ``path``."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(path, "(file)", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "(file)", f"not UTF-8 at byte {exc.start}") from None
    return parse(text, file=path, base_dir=os.path.dirname(os.path.abspath(path)),
                 interface_exists=interface_exists)
