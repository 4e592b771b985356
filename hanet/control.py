"""The Unix control socket: ``hanet status`` and the operator commands.

Protocol: a Unix stream socket (owner-only, mode 0600, by default), one JSON object per line each
way. A connection may carry several requests; each gets exactly one response line, in order.

    request   {"cmd": "offline", "args": {"interface": "nic3", "force": false}}
    response  {"ok": true, ...}            or   {"ok": false, "error": "reason"}

Commands and their ``args`` (all optional unless marked):

    status                                         -> {"ok": true, **STATUS}
    failover   to: str (path name or interface), force: bool
    failback   force: bool
    offline    interface: str (required), force: bool
    online     interface: str (required)

Who may do what is decided per request from the caller's credentials when it connected
(SO_PEERCRED uid, gid, pid; SO_PEERGROUPS, else the group database, for supplementary groups):
root and the daemon's own user may do everything; ``[control] admin_users`` / ``admin_groups``
every command; ``read_users`` / ``read_groups`` ``status`` only (``Access``). A refusal is
``{"ok": false, "error": "not allowed: ..."}`` and one log line naming who asked for what.

A line that is not UTF-8 JSON, nests deeper than MAX_DEPTH, is longer than MAX_LINE (4 KiB), names
an unknown command or unknown or mistyped args gets ``{"ok": false, "error": ...}`` and the
connection stays usable. A request line must arrive whole within READ_TIMEOUT_S (2 s) and its
answer be read within WRITE_TIMEOUT_S, or the connection is closed. No one is ever turned away:
at MAX_CLIENTS connections, or a user's MAX_CLIENTS_PER_UID, a newcomer closes the oldest
connection of whoever holds the most (its own user first), so idle connections cannot lock an
operator out.

The daemon's handler ``handler(cmd, args, who) -> dict`` runs on the event loop, only for
requests the caller is allowed; ``who`` names the peer ("uid=0 pid=1234 comm=hanet") and goes into
the operator event. The keys it returns are merged into the ``{"ok": true}`` response; it refuses a
command by raising ``CommandError(reason)``.

STATUS, the shape ``render_status`` reads (keys marked ? may be absent):

    node         str      this node's id
    state        str      the machine's state
    active       int|None index of the path whose NIC holds the identity (None: none does)
    active_name  str|None that path's name
    uptime_s     float    seconds since the daemon started
    paths        list of, per configured path in priority order:
        index int, name str, interface str,
        health str          "up", "suspect", "down", ... as the heartbeat session sees it
        carrier bool, offline bool (operator), damped bool, penalty float (flap damping)
        rtt_p50_us, rtt_p99_us  float|None   heartbeat round trip over the quality window
        sent int, received int               heartbeat requests sent, replies received
        drops {reason: count}                frames dropped on this path, by reason
    transitions  list, oldest first, of the last few:
        wall str (ISO 8601 UTC), src str, dst str, trigger str (event type), reason? str
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import grp
import json
import logging
import os
import pwd
import re
import socket
import stat
import struct
import time
from typing import Any, Callable, Iterable

from .keyfile import unsafe_directories

log = logging.getLogger(__name__)

MAX_LINE = 4096               # bytes per request line, newline excluded; a request needs < 200
MAX_DEPTH = 4                 # JSON nesting a request may have; a request needs 2
MAX_RESPONSE = 16 * 1024 * 1024
MAX_CLIENTS = 32              # connections at once; at the limit the biggest holder's oldest goes
MAX_CLIENTS_PER_UID = 8       # one user's limit; its next connection closes its oldest
READ_TIMEOUT_S = 2.0          # a whole request line must arrive within this, or the connection closes
WRITE_TIMEOUT_S = 2.0         # a client that does not read its answers for this long is dropped
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; not named by Python 3.11

# cmd -> {arg: (type, required)}
COMMANDS: dict[str, dict[str, tuple[type, bool]]] = {
    "status": {},
    "failover": {"to": (str, False), "force": (bool, False)},
    "failback": {"force": (bool, False)},
    "offline": {"interface": (str, True), "force": (bool, False)},
    "online": {"interface": (str, True)},
}
READ_COMMANDS = frozenset({"status"})  # every other command changes state

Handler = Callable[[str, dict, str], dict]


class ControlError(Exception):
    """The control socket cannot be served, or a request could not be carried out."""


class CommandError(Exception):
    """Raised by a handler to refuse a command; the text goes back to the operator."""


class _LineTooLong(Exception):
    pass


# --------------------------------------------------------------------------- who may do what
@dataclasses.dataclass(frozen=True)
class Peer:
    """The connecting process, from SO_PEERCRED and SO_PEERGROUPS at connect time."""
    uid: int
    gid: int
    pid: int
    groups: frozenset[int]  # primary and supplementary
    comm: str = "?"

    def __str__(self) -> str:
        return f"uid={self.uid} pid={self.pid} comm={self.comm}"


@dataclasses.dataclass(frozen=True)
class Access:
    """Root and the daemon's own user may do everything; admin_* every command; read_* status."""
    admin_uids: frozenset[int] = frozenset()
    admin_gids: frozenset[int] = frozenset()
    read_uids: frozenset[int] = frozenset()
    read_gids: frozenset[int] = frozenset()
    owner_uid: int = dataclasses.field(default_factory=os.geteuid)

    @classmethod
    def from_names(cls, admin_users: Iterable[str] = (), admin_groups: Iterable[str] = (),
                   read_users: Iterable[str] = (), read_groups: Iterable[str] = ()) -> "Access":
        """Resolve names with the user and group databases; ControlError names an unknown one."""
        def uids(names):
            return frozenset(_lookup(pwd.getpwnam, name, "user").pw_uid for name in names)

        def gids(names):
            return frozenset(_lookup(grp.getgrnam, name, "group").gr_gid for name in names)
        return cls(admin_uids=uids(admin_users), admin_gids=gids(admin_groups),
                   read_uids=uids(read_users), read_gids=gids(read_groups))

    @classmethod
    def from_config(cls, control_config: Any) -> "Access":
        """From a config.ControlConfig (its admin_users, admin_groups, read_users, read_groups)."""
        return cls.from_names(control_config.admin_users, control_config.admin_groups,
                              control_config.read_users, control_config.read_groups)

    def grants(self, peer: Peer, cmd: str) -> bool:
        if peer.uid in (0, self.owner_uid):
            return True
        if peer.uid in self.admin_uids or peer.groups & self.admin_gids:
            return True
        return cmd in READ_COMMANDS and (peer.uid in self.read_uids or bool(peer.groups & self.read_gids))

    def refusal(self, peer: Peer, cmd: str) -> str:
        needs = ("read_users, read_groups, admin_users or admin_groups" if cmd in READ_COMMANDS
                 else "admin_users or admin_groups")
        has = "status only" if self.grants(peer, "status") else "no access"
        return (f"not allowed: {cmd} needs [control] {needs} to include the caller; "
                f"uid {peer.uid} ({_user_name(peer.uid)}) has {has}")


def _lookup(fn: Callable[[str], Any], name: str, what: str) -> Any:
    try:
        return fn(name)
    except KeyError:
        raise ControlError(f"no {what} named {name!r} on this host") from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"


def peer_credentials(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(uid=uid, gid=gid, pid=pid, groups=frozenset({gid, *_peer_groups(sock, uid, gid)}),
                comm=_comm(pid))


def _peer_groups(sock: socket.socket, uid: int, gid: int) -> tuple[int, ...]:
    """The peer's supplementary groups when it connected; where the kernel cannot say, those the
    group database gives its user."""
    for count in (64, 65536):  # NGROUPS_MAX is 65536; ERANGE says the buffer was too small
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * count)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            break
        return struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    try:
        return tuple(os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
    except KeyError:
        return ()


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return "_".join(fh.read().split()) or "?"
    except OSError:
        return "?"  # the client has already exited


def peer_identity(sock: socket.socket) -> str:
    """"uid=0 pid=1234 comm=hanet" from the connecting process's SO_PEERCRED."""
    return str(peer_credentials(sock))


# --------------------------------------------------------------------------- server
class _Connection:
    def __init__(self, peer: Peer, writer: asyncio.StreamWriter):
        self.peer, self.writer = peer, writer
        self.evicted = False

    def evict(self, reason: str) -> None:
        """Close at once: a client that is not reading must not hold the slot."""
        self.evicted = True
        with contextlib.suppress(Exception):
            self.writer.write(_encode({"ok": False, "error": reason}))
        self.writer.transport.abort()


class ControlServer:
    """``ControlServer(path, mode, handler, access=None)``: ``access`` is an ``Access``, or a
    ``config.ControlConfig`` whose user and group lists are resolved now; None lets only root and
    the daemon's own user in."""

    def __init__(self, path: str, mode: int, handler: Handler, access: Any = None):
        if not 0 <= mode <= 0o777 or mode & 0o002:
            raise ControlError(f"control socket mode {mode:#o} refused: 0o000 to 0o777 without o+w")
        self.path = path
        self.mode = mode
        self.handler = handler
        if access is None:
            access = Access()
        elif not isinstance(access, Access):
            access = Access.from_config(access)
        self.access = access
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._clients: dict[asyncio.Task, _Connection] = {}  # in order of arrival

    async def start(self) -> None:
        _claim_path(self.path)
        problem = unsafe_directories(os.path.dirname(os.path.abspath(self.path)))
        if problem:  # whoever can write there can put their own socket in front of operators
            raise ControlError(f"cannot serve control socket {self.path}: {problem}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # bind(2) creates the file with the socket inode's mode less the umask: setting it first
            # means the file is never, even for an instant, wider than `mode`.
            os.fchmod(sock.fileno(), self.mode)
            sock.bind(self.path)
            os.chmod(self.path, self.mode)  # give back bits the umask took away
            self._inode = os.stat(self.path).st_ino
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot serve control socket {self.path}: {exc.strerror or exc}") from None
        log.info("control socket listening path=%s mode=%04o", self.path, self.mode)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in self._clients.values():
            conn.evicted = True   # a half-sent request is dropped, not taken for a last one
            conn.writer.close()   # each connection's task then sees end of stream and returns
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=5.0)
        await server.wait_closed()
        # Unlink only our own socket file, not one a successor has bound since.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    def _make_room(self, uid: int) -> None:
        """Close one connection if the newcomer would pass a limit: the newcomer's own oldest if
        its user is at the per-user limit, else the oldest of whoever holds the most. A user with
        one connection is never the one to lose it while another holds more."""
        conns = list(self._clients.values())
        mine = [c for c in conns if c.peer.uid == uid]
        if len(mine) >= MAX_CLIENTS_PER_UID:
            victim = mine[0]
        elif len(conns) >= MAX_CLIENTS:
            counts = collections.Counter(c.peer.uid for c in conns)
            hog = max(counts, key=counts.__getitem__)
            victim = next(c for c in conns if c.peer.uid == hog)
        else:
            return
        log.info("control connection dropped to make room who=%s", victim.peer)
        victim.evict("closed: too many control connections, and this was the oldest")
        for task, conn in list(self._clients.items()):
            if conn is victim:
                del self._clients[task]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_credentials(writer.get_extra_info("socket"))
        except OSError:
            writer.transport.abort()
            return
        self._make_room(peer.uid)
        conn = _Connection(peer, writer)
        task = asyncio.current_task()
        self._clients[task] = conn
        try:
            while not conn.evicted:
                try:
                    line = await asyncio.wait_for(_read_line(reader), READ_TIMEOUT_S)
                except _LineTooLong:
                    response = {"ok": False, "error": f"request line longer than {MAX_LINE} bytes"}
                except TimeoutError:
                    response = {"ok": False, "error": f"closed: no whole request within {READ_TIMEOUT_S:g} s"}
                    writer.write(_encode(response))
                    break
                else:
                    if line is None or conn.evicted:
                        break
                    response = self._respond(line, peer)
                writer.write(_encode(response))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass  # the client went away, or stopped reading its answers
        finally:
            self._clients.pop(task, None)
        if conn.evicted:
            return  # already closed by whoever evicted it
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            writer.transport.abort()  # answers it will never read must not keep the socket open

    def _respond(self, line: bytes, peer: Peer) -> dict:
        who = str(peer)
        try:
            cmd, args = parse_request(line)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        if not self.access.grants(peer, cmd):
            log.warning("control command denied cmd=%s who=%s", cmd, who)
            return {"ok": False, "error": self.access.refusal(peer, cmd)}
        try:
            result = self.handler(cmd, args, who)
            if not isinstance(result, dict):
                raise TypeError(f"handler returned {type(result).__name__}, not dict")
        except CommandError as exc:
            log.info("control command refused cmd=%s who=%s reason=%s", cmd, who, exc)
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # one request's bug must not take the control socket down
            log.exception("control handler failed cmd=%s who=%s", cmd, who)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        if cmd != "status":
            log.info("control command cmd=%s args=%s who=%s", cmd, json.dumps(args, sort_keys=True), who)
        return {"ok": True, **{k: v for k, v in result.items() if k != "ok"}}


def _claim_path(path: str) -> None:
    """Remove a stale socket left by a dead daemon; refuse if a live one still answers there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; not removing it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # nobody listens: stale
        except TimeoutError:
            raise ControlError(f"another server is listening on {path} (its backlog is full)") from None
        else:
            raise ControlError(f"another server is listening on {path}")
    os.unlink(path)
    log.info("removed stale control socket path=%s", path)


async def _read_line(reader: asyncio.StreamReader) -> bytes | None:
    """One request line without its newline; None at end of stream. Raises _LineTooLong after
    discarding the whole oversize line, so the next line is read cleanly."""
    try:
        return (await reader.readuntil(b"\n"))[:-1]
    except asyncio.IncompleteReadError as exc:
        return exc.partial or None  # a last request without a newline still counts
    except asyncio.LimitOverrunError as exc:
        consumed = exc.consumed
    while True:
        await reader.readexactly(consumed)
        try:
            await reader.readuntil(b"\n")
            raise _LineTooLong
        except asyncio.IncompleteReadError:
            raise _LineTooLong from None
        except asyncio.LimitOverrunError as exc:
            consumed = exc.consumed


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """Validate one request line: (cmd, args), or ValueError saying what is wrong."""
    if len(line) > MAX_LINE:
        raise ValueError(f"request line longer than {MAX_LINE} bytes")
    depth = json_depth(line)
    if depth > MAX_DEPTH:
        raise ValueError(f"request nested {depth} deep; at most {MAX_DEPTH}")
    try:
        request = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("request is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"request is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ValueError(f"request must be a JSON object, not {type(request).__name__}")
    unknown = set(request) - {"cmd", "args"}
    if unknown:
        raise ValueError(f"unknown request keys: {', '.join(sorted(unknown))}")
    cmd = request.get("cmd")
    if not isinstance(cmd, str):
        raise ValueError('request needs "cmd", a string')
    if cmd not in COMMANDS:
        raise ValueError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    args = request.get("args", {})
    if not isinstance(args, dict):
        raise ValueError('"args" must be a JSON object')
    schema = COMMANDS[cmd]
    for name, value in args.items():
        if name not in schema:
            raise ValueError(f"{cmd}: unknown argument {name!r}")
        kind = schema[name][0]
        if not isinstance(value, kind):
            raise ValueError(f"{cmd}: {name} must be {_json_type(kind)}, not {_json_type(type(value))}")
    for name, (_, required) in schema.items():
        if required and name not in args:
            raise ValueError(f"{cmd}: argument {name!r} is required")
    return cmd, args


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(data: bytes) -> int:
    """How deep the arrays and objects of ``data`` nest, counted before parsing so that deep input
    is refused instead of exhausting the parser's recursion. Brackets inside strings do not count."""
    depth = deepest = 0
    for byte in _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKET):
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _json_type(kind: type) -> str:
    return {str: "a string", bool: "true or false", int: "a number", float: "a number",
            dict: "an object", list: "an array", type(None): "null"}.get(kind, kind.__name__)


def _encode(response: dict) -> bytes:
    try:
        return json.dumps(response, separators=(",", ":")).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        log.error("control response not serialisable error=%s", exc)
        return _encode({"ok": False, "error": f"internal error: response not serialisable: {exc}"})


# --------------------------------------------------------------------------- client
def request(path: str, cmd: str, timeout: float = 5.0, **args: Any) -> dict:
    """Send one command to the daemon at ``path`` and return its response dict (which may say
    ``"ok": false``). Raises ControlError when the daemon cannot be reached or answers garbage."""
    deadline = time.monotonic() + timeout
    payload = json.dumps({"cmd": cmd, "args": args}).encode() + b"\n"
    buf = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(payload)
            while not buf.endswith(b"\n"):
                if len(buf) > MAX_RESPONSE:
                    raise ControlError(f"response from {path} exceeds {MAX_RESPONSE} bytes")
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    raise ControlError(f"{path} closed the connection without an answer")
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ControlError(f"hanet is not running (no control socket at {path}: {exc.strerror})") from None
    except PermissionError:
        raise ControlError(f"permission denied on {path}: [control] mode and the socket's group "
                           f"decide who may connect") from None
    except TimeoutError:
        raise ControlError(f"no answer from {path} within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        response = json.loads(buf)
    except ValueError:
        raise ControlError(f"{path} answered something that is not JSON") from None
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise ControlError(f"{path} answered without an \"ok\" field")
    return response


# --------------------------------------------------------------------------- rendering
def render_status(status: dict) -> str:
    """The human view of a STATUS dict (see the module docstring) for ``hanet status``."""
    active = status.get("active")
    if active is None:
        holder = "none"
    else:
        holder = f"{status.get('active_name') or '?'} (path {active})"
    lines = [
        f"node {status.get('node', '?')}   state {status.get('state', '?')}   "
        f"active {holder}   uptime {_duration(status.get('uptime_s'))}",
        "",
    ]
    if status.get("eventlog_degraded"):
        lines.insert(1, f"eventlog DEGRADED: {status['eventlog_degraded']} (acting without a durable record)")
    if status.get("config_changes"):
        lines.insert(1, f"configuration changed since the last run: {'; '.join(status['config_changes'])}")
    header = ["", "#", "name", "interface", "health", "carrier", "flags", "penalty",
              "rtt p50", "rtt p99", "sent", "received", "drops", "peer path"]
    rows = [header]
    for p in status.get("paths", []):
        flags = [f for f in ("offline", "damped") if p.get(f)] + (["gone"] if p.get("present") is False else [])
        rows.append([
            "*" if p.get("index") == active and active is not None else "",
            str(p.get("index", "?")),
            str(p.get("name", "?")),
            str(p.get("interface", "?")),
            str(p.get("health", "?")),
            {True: "yes", False: "no"}.get(p.get("carrier"), "?"),
            ",".join(flags) or "-",
            f"{p.get('penalty', 0.0):.0f}",
            _rtt(p.get("rtt_p50_us")),
            _rtt(p.get("rtt_p99_us")),
            str(p.get("sent", 0)),
            str(p.get("received", 0)),
            _drops(p.get("drops") or {}),
            "-" if p.get("peer_path") in (None, -1) else str(p["peer_path"]),
        ])
    lines.extend(_table(rows))
    transitions = status.get("transitions", [])
    lines.append("")
    if not transitions:
        lines.append("no transitions yet")
    else:
        lines.append("last transitions (oldest first):")
        for t in transitions:
            line = f"  {t.get('wall', '?')}  {t.get('src', '?')} -> {t.get('dst', '?')}  trigger={t.get('trigger', '?')}"
            if t.get("reason"):
                line += f"  reason={t['reason']}"
            lines.append(line)
    return "\n".join(lines) + "\n"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _rtt(us: float | None) -> str:
    if us is None:
        return "-"
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} us"


def _drops(drops: dict) -> str:
    parts = [f"{reason}={count}" for reason, count in sorted(drops.items()) if count]
    return ",".join(parts) or "-"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock
