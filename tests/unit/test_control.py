"""The control socket over a real Unix stream socket, with the server on its own asyncio loop."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from hanet import config, control
from hanet.control import CommandError, ControlError, ControlServer, render_status, request

SAMPLE_STATUS = {
    "node": "alpha", "state": "Monitoring", "active": 0, "active_name": "primary", "uptime_s": 12.3,
    "paths": [
        {"index": 0, "name": "primary", "interface": "nic1", "health": "up", "carrier": True,
         "offline": False, "damped": False, "penalty": 0.0, "rtt_p50_us": 23.1, "rtt_p99_us": 60.2,
         "sent": 100, "received": 99, "drops": {"bad_mac": 1, "replay": 0}},
        {"index": 1, "name": "alternate", "interface": "nic3", "health": "down", "carrier": False,
         "offline": True, "damped": True, "penalty": 2500.0, "rtt_p50_us": None, "rtt_p99_us": 1500.0,
         "sent": 100, "received": 0, "drops": {}},
    ],
    "transitions": [
        {"wall": "2026-11-25T18:00:00.000001Z", "src": "Starting", "dst": "Monitoring",
         "trigger": "daemon.started", "reason": "primary holds the identity"},
    ],
}


class Recorder:
    """A handler that records every call and answers like the daemon would."""

    def __init__(self):
        self.calls: list[tuple[str, dict, str]] = []

    def __call__(self, cmd: str, args: dict, who: str) -> dict:
        self.calls.append((cmd, args, who))
        if cmd == "status":
            return dict(SAMPLE_STATUS)  # as the daemon answers: STATUS keys beside "ok"
        if args.get("interface") == "nic9":
            raise CommandError("no path uses interface 'nic9'")
        if args.get("interface") == "boom":
            raise RuntimeError("handler bug")
        return {"detail": f"{cmd} queued"}


class ServerThread:
    """A ControlServer on an event loop in a background thread, so tests use the blocking client."""

    def __init__(self, path: str, handler, mode: int = 0o600):
        self.server = ControlServer(path, mode, handler)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def start(self) -> "ServerThread":
        self.run(self.server.start())
        return self

    def stop(self) -> None:
        try:
            self.run(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
            self.loop.close()


@pytest.fixture
def sock_path(tmp_path):
    return str(tmp_path / "control.sock")


@pytest.fixture
def handler():
    return Recorder()


@pytest.fixture
def served(sock_path, handler):
    srv = ServerThread(sock_path, handler).start()
    yield srv
    srv.stop()


def own_identity() -> str:
    with open("/proc/self/comm") as fh:
        comm = fh.read().strip()
    return f"uid={os.getuid()} pid={os.getpid()} comm={comm}"


def exchange(path: str, lines: list[bytes], timeout: float = 5.0) -> list[dict]:
    """Send raw request lines on one connection; read one response line per request."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"".join(lines))
        reader = sock.makefile("rb")
        return [json.loads(reader.readline()) for _ in lines]


# --------------------------------------------------------------------------- commands
def test_status_round_trip(served, sock_path, handler):
    response = request(sock_path, "status")
    assert response == {"ok": True, **SAMPLE_STATUS}
    assert handler.calls == [("status", {}, own_identity())]


@pytest.mark.parametrize("cmd, args", [
    ("failover", {}),
    ("failover", {"to": "alternate", "force": True}),
    ("failback", {}),
    ("failback", {"force": True}),
    ("offline", {"interface": "nic3"}),
    ("offline", {"interface": "nic3", "force": True}),
    ("online", {"interface": "nic3"}),
])
def test_operator_commands_round_trip(served, sock_path, handler, cmd, args):
    response = request(sock_path, cmd, **args)
    assert response == {"ok": True, "detail": f"{cmd} queued"}
    assert handler.calls == [(cmd, args, own_identity())]


def test_handler_refusal_becomes_error(served, sock_path, handler):
    response = request(sock_path, "offline", interface="nic9")
    assert response == {"ok": False, "error": "no path uses interface 'nic9'"}


def test_handler_bug_does_not_break_server(served, sock_path):
    response = request(sock_path, "online", interface="boom")
    assert response["ok"] is False
    assert "RuntimeError: handler bug" in response["error"]
    assert request(sock_path, "status")["ok"] is True


def test_handler_returning_non_dict_is_an_error(sock_path):
    srv = ServerThread(sock_path, lambda cmd, args, who: None).start()
    try:
        response = request(sock_path, "failback")
        assert response["ok"] is False and "not dict" in response["error"]
    finally:
        srv.stop()


def test_several_requests_on_one_connection_answered_in_order(served, sock_path, handler):
    lines = [b'{"cmd":"status"}\n', b'{"cmd":"failback","args":{}}\n', b'{"cmd":"status"}\n']
    responses = exchange(sock_path, lines)
    assert [("paths" in r, r.get("detail")) for r in responses] == [
        (True, None), (False, "failback queued"), (True, None)]


def test_last_request_without_newline_is_answered(served, sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(sock_path)
        sock.sendall(b'{"cmd":"failback"}')
        sock.shutdown(socket.SHUT_WR)
        assert json.loads(sock.makefile("rb").readline()) == {"ok": True, "detail": "failback queued"}


# --------------------------------------------------------------------------- bad input
BAD_REQUESTS = [
    (b"not json\n", "not JSON"),
    (b"\xff\xfe\n", "not UTF-8"),
    (b"[1, 2]\n", "must be a JSON object"),
    (b'{"args": {}}\n', '"cmd"'),
    (b'{"cmd": 7}\n', '"cmd"'),
    (b'{"cmd": "reboot"}\n', "unknown command 'reboot'"),
    (b'{"cmd": "status", "extra": 1}\n', "unknown request keys: extra"),
    (b'{"cmd": "status", "args": []}\n', '"args" must be a JSON object'),
    (b'{"cmd": "status", "args": {"x": 1}}\n', "unknown argument 'x'"),
    (b'{"cmd": "offline", "args": {}}\n', "'interface' is required"),
    (b'{"cmd": "offline", "args": {"interface": 3}}\n', "interface must be a string"),
    (b'{"cmd": "failback", "args": {"force": 1}}\n', "force must be true or false"),
    (b'{"cmd": "online", "args": {"interface": "nic3", "force": true}}\n', "unknown argument 'force'"),
    (b"\n", "not JSON"),
    (b"[" * 1000 + b"\n", "nested 1000 deep"),
    (b'{"cmd": "status", "args": {"a": {"b": {"c": {"d": 1}}}}}\n', "nested 5 deep"),
]


def test_malformed_requests_get_errors_and_connection_survives(served, sock_path, handler):
    lines = [line for line, _ in BAD_REQUESTS] + [b'{"cmd":"status"}\n']
    responses = exchange(sock_path, lines)
    for (line, expected), response in zip(BAD_REQUESTS, responses):
        assert response["ok"] is False, line
        assert expected in response["error"], (line, response)
    assert responses[-1]["ok"] is True
    assert [c[0] for c in handler.calls] == ["status"]  # nothing malformed reached the handler


@pytest.mark.parametrize("size", [control.MAX_LINE + 1, 3 * control.MAX_LINE + 17])
def test_oversize_line_is_discarded_whole(served, sock_path, handler, size):
    big = b'{"cmd":"status","args":{"x":"' + b"a" * size + b'"}}\n'
    responses = exchange(sock_path, [big, b'{"cmd":"failback"}\n'])
    assert responses[0]["ok"] is False and "longer than" in responses[0]["error"]
    assert responses[1] == {"ok": True, "detail": "failback queued"}
    assert [c[0] for c in handler.calls] == ["failback"]


def test_sixty_thousand_brackets_get_an_error_and_the_server_keeps_serving(served, sock_path, handler):
    responses = exchange(sock_path, [b"[" * 60000 + b"\n", b'{"cmd":"status"}\n'])
    assert responses[0]["ok"] is False and "longer than" in responses[0]["error"]
    assert responses[1]["ok"] is True
    assert request(sock_path, "status")["ok"] is True


def test_deep_nesting_within_the_size_limit_never_reaches_the_parser(sock_path, handler, monkeypatch):
    monkeypatch.setattr(control, "MAX_LINE", 200_000)  # past the size check, onto the depth check
    srv = ServerThread(sock_path, handler).start()
    try:
        responses = exchange(sock_path, [b"[" * 100_000 + b"\n", b'{"cmd":"status"}\n'])
        assert responses[0] == {"ok": False, "error": "request nested 100000 deep; at most 4"}
        assert responses[1]["ok"] is True
    finally:
        srv.stop()


@pytest.mark.parametrize("data, depth", [
    (b"", 0), (b"1", 0), (b"{}", 1), (b'{"a": [1, {"b": 2}]}', 3), (b"[][][]", 1),
    (b'{"interface": "[[[{{{"}', 1), (b'{"x": "\\"[[[["}', 1), (b'["\\\\", [[]]]', 3),
])
def test_json_depth_ignores_brackets_in_strings(data, depth):
    assert control.json_depth(data) == depth


def test_brackets_inside_a_string_argument_are_not_nesting(served, sock_path, handler):
    line = b'{"cmd":"offline","args":{"interface":"[[[[[[[[{{{{"}}\n'
    assert exchange(sock_path, [line])[0] == {"ok": True, "detail": "offline queued"}
    assert handler.calls[0][1] == {"interface": "[[[[[[[[{{{{"}


def test_line_of_exactly_the_limit_is_accepted(served, sock_path):
    head, tail = b'{"cmd":"offline","args":{"interface":"', b'"}}'
    line = head + b"n" * (control.MAX_LINE - len(head) - len(tail)) + tail
    assert len(line) == control.MAX_LINE
    assert exchange(sock_path, [line + b"\n"])[0]["ok"] is True


def test_client_disconnecting_mid_request_leaves_server_serving(served, sock_path):
    for partial in (b'{"cmd": "sta', b"x" * (control.MAX_LINE + 10)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(sock_path)
            sock.sendall(partial)
    assert request(sock_path, "status")["ok"] is True


def test_idle_connection_is_closed_with_a_reason(sock_path, handler, monkeypatch):
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 0.2)
    srv = ServerThread(sock_path, handler).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(sock_path)
            reader = sock.makefile("rb")
            assert "no whole request within 0.2 s" in json.loads(reader.readline())["error"]
            assert reader.read() == b""  # end of stream: the server hung up
    finally:
        srv.stop()


def test_a_request_trickled_slowly_is_cut_off(sock_path, handler, monkeypatch):
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 0.3)
    srv = ServerThread(sock_path, handler).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(sock_path)
            with pytest.raises(OSError):  # the deadline is for the whole line, not each byte
                for byte in b'{"cmd":"status"}':
                    sock.sendall(bytes([byte]))
                    time.sleep(0.05)
                sock.sendall(b"\n")
                sock.makefile("rb").read()  # only the timeout notice and end of stream came
                raise OSError("no request answered")
        assert handler.calls == []
    finally:
        srv.stop()


def idle_connections(path: str, count: int) -> list[socket.socket]:
    conns = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        conns.append(sock)
    return conns


def test_idle_connections_never_lock_out_the_operator(sock_path, handler, monkeypatch):
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 60.0)  # the idle ones would stay for a minute
    srv = ServerThread(sock_path, handler).start()
    idle = idle_connections(sock_path, 64)
    try:
        # Answered now, not after the idle connections time out (the client gives up after 5 s).
        assert request(sock_path, "status", timeout=5.0) == {"ok": True, **SAMPLE_STATUS}
        held = srv.run(_count(srv.server))
        assert held <= control.MAX_CLIENTS_PER_UID
    finally:
        for sock in idle:
            sock.close()
        srv.stop()


async def _count(server) -> int:
    return len(server._clients)


def test_a_users_oldest_connection_makes_room_for_its_newest(sock_path, handler, monkeypatch):
    monkeypatch.setattr(control, "MAX_CLIENTS_PER_UID", 2)
    srv = ServerThread(sock_path, handler).start()
    first, second = idle_connections(sock_path, 2)
    try:
        assert request(sock_path, "status")["ok"] is True  # a third connection of the same user
        first.settimeout(5)
        reader = first.makefile("rb")
        assert "too many control connections" in json.loads(reader.readline())["error"]
        assert reader.read() == b""
        second.sendall(b'{"cmd":"failback"}\n')  # the second was not touched: still served
        second.settimeout(5)
        assert json.loads(second.makefile("rb").readline()) == {"ok": True, "detail": "failback queued"}
    finally:
        first.close()
        second.close()
        srv.stop()


def test_a_client_that_never_reads_is_dropped(sock_path, handler, monkeypatch):
    monkeypatch.setattr(control, "WRITE_TIMEOUT_S", 0.3)
    srv = ServerThread(sock_path, handler).start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as hog:
            hog.connect(sock_path)
            hog.settimeout(0.5)
            with contextlib.suppress(OSError):  # the server stops reading once its answers back up
                for _ in range(20000):
                    hog.sendall(b'{"cmd":"status"}\n')
            deadline = time.monotonic() + 10
            while srv.run(_count(srv.server)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.run(_count(srv.server)) == 0
            assert request(sock_path, "status")["ok"] is True
            # The server's end is closed, not lingering with answers nobody reads.
            hog.settimeout(5)
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                hog.send(b"x")
    finally:
        srv.stop()


# --------------------------------------------------------------------------- the socket file
def test_socket_is_owner_only_by_default(served, sock_path):
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_configured_mode_survives_umask(sock_path, handler):
    old = os.umask(0o077)
    try:
        srv = ServerThread(sock_path, handler, mode=0o660).start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
    finally:
        srv.stop()


def test_missing_parent_directory_is_created(tmp_path, handler):
    path = str(tmp_path / "run" / "hanet" / "control.sock")
    srv = ServerThread(path, handler).start()
    try:
        assert request(path, "status")["ok"] is True
    finally:
        srv.stop()


def test_close_removes_socket_file(sock_path, handler):
    srv = ServerThread(sock_path, handler).start()
    srv.stop()
    assert not os.path.exists(sock_path)


def test_close_keeps_a_successors_socket(sock_path, handler):
    srv = ServerThread(sock_path, handler).start()
    os.unlink(sock_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as successor:
        successor.bind(sock_path)
        srv.stop()
        assert os.path.exists(sock_path)


def test_stale_socket_is_replaced(sock_path, handler):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()  # the file stays, nobody listens
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    srv = ServerThread(sock_path, handler).start()
    try:
        assert request(sock_path, "status")["ok"] is True
    finally:
        srv.stop()


def test_refuses_path_where_a_live_server_answers(served, sock_path, handler):
    second = ServerThread(sock_path, Recorder())
    try:
        with pytest.raises(ControlError, match="another server is listening"):
            second.run(second.server.start())
    finally:
        second.stop()
    assert request(sock_path, "status")["ok"] is True
    assert len(handler.calls) == 1


def test_refuses_to_remove_a_non_socket(sock_path, handler):
    with open(sock_path, "w") as fh:
        fh.write("precious")
    srv = ServerThread(sock_path, handler)
    try:
        with pytest.raises(ControlError, match="not a socket"):
            srv.run(srv.server.start())
    finally:
        srv.stop()
    with open(sock_path) as fh:
        assert fh.read() == "precious"


# --------------------------------------------------------------------------- client errors
def test_client_reports_daemon_not_running(sock_path):
    with pytest.raises(ControlError, match="not running"):
        request(sock_path, "status")


def test_client_times_out_on_a_silent_server(sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(sock_path)
        silent.listen(1)
        started = time.monotonic()
        with pytest.raises(ControlError, match="no answer"):
            request(sock_path, "status", timeout=0.2)
        assert time.monotonic() - started < 3


def test_client_rejects_non_json_answer(sock_path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as fake:
        fake.bind(sock_path)
        fake.listen(1)

        def answer():
            conn, _ = fake.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"hello\n")

        t = threading.Thread(target=answer)
        t.start()
        try:
            with pytest.raises(ControlError, match="not JSON"):
                request(sock_path, "status")
        finally:
            t.join(timeout=5)


# --------------------------------------------------------------------------- rendering
def test_render_status_shows_every_path_and_transition():
    text = render_status(SAMPLE_STATUS)
    assert "node alpha" in text and "state Monitoring" in text and "active primary (path 0)" in text
    assert "uptime 12.3 s" in text
    lines = text.splitlines()
    primary = next(line for line in lines if " primary " in line and "nic1" in line)
    assert primary.startswith("*")
    for cell in ("up", "yes", "23.1 us", "60.2 us", "100", "99", "bad_mac=1"):
        assert cell in primary
    assert "replay" not in primary  # zero counters are left out
    alternate = next(line for line in lines if "alternate" in line)
    assert not alternate.startswith("*")
    for cell in ("down", "no", "offline,damped", "2500", "1.50 ms", "-"):
        assert cell in alternate
    assert "Starting -> Monitoring  trigger=daemon.started" in text
    assert "reason=primary holds the identity" in text


def test_render_status_tolerates_a_sparse_dict():
    text = render_status({"state": "Starting", "active": None})
    assert "active none" in text and "no transitions yet" in text


def test_render_long_uptime():
    assert "uptime 1d 01:01:01" in render_status({"uptime_s": 90061.5})


# --------------------------------------------------------------------------- who may do what
def peer(uid: int, gid: int | None = None, groups: tuple[int, ...] = ()) -> control.Peer:
    gid = uid if gid is None else gid
    return control.Peer(uid=uid, gid=gid, pid=1, groups=frozenset({gid, *groups}))


ACCESS = control.Access(admin_uids=frozenset({1001}), admin_gids=frozenset({2001}),
                        read_uids=frozenset({1002}), read_gids=frozenset({2002}), owner_uid=999)
STATE_CHANGING = ["failover", "failback", "offline", "online"]


@pytest.mark.parametrize("who, reads, changes", [
    (peer(0, 5000), True, True),                        # root, whatever its groups
    (peer(999), True, True),                            # the daemon's own user
    (peer(1001), True, True),                           # admin_users
    (peer(1003, 2001), True, True),                     # admin_groups, as primary group
    (peer(1003, 1003, (7, 2001)), True, True),          # admin_groups, as supplementary group
    (peer(1002), True, False),                          # read_users
    (peer(1003, 2002), True, False),                    # read_groups
    (peer(1003, 1003, (2002,)), True, False),           # read_groups, supplementary
    (peer(1003), False, False),                         # nobody listed
    (peer(1003, 1003, (2003,)), False, False),
])
def test_access_matrix(who, reads, changes):
    assert ACCESS.grants(who, "status") is reads
    for cmd in STATE_CHANGING:
        assert ACCESS.grants(who, cmd) is changes


def test_default_access_is_root_and_the_daemons_own_user():
    access = control.Access()
    assert access.owner_uid == os.geteuid()
    assert access.grants(peer(0), "failover") and access.grants(peer(os.geteuid()), "failover")
    assert not access.grants(peer(54321), "status")


def test_refusal_says_what_is_needed_and_what_the_caller_has():
    text = ACCESS.refusal(peer(1002), "failover")
    assert text.startswith("not allowed: failover needs [control] admin_users or admin_groups")
    assert "uid 1002" in text and "has status only" in text
    assert "has no access" in ACCESS.refusal(peer(1003), "status")


def test_access_from_names_resolves_users_and_groups():
    access = control.Access.from_names(admin_users=["root"], admin_groups=["root"],
                                       read_users=["nobody"], read_groups=["nogroup"])
    assert access.admin_uids == {0} and access.admin_gids == {0}
    assert access.read_uids == {65534} and access.read_gids == {65534}
    with pytest.raises(ControlError, match="no user named 'no-such-user-here'"):
        control.Access.from_names(read_users=["no-such-user-here"])
    with pytest.raises(ControlError, match="no group named 'no-such-group-here'"):
        control.Access.from_names(admin_groups=["no-such-group-here"])


def test_server_takes_a_control_config(sock_path, handler):
    srv = ControlServer(sock_path, 0o660, handler, config.ControlConfig(read_groups=("nogroup",)))
    assert srv.access.read_gids == {65534}
    with pytest.raises(ControlError, match="no user named"):
        ControlServer(sock_path, 0o600, handler, config.ControlConfig(admin_users=("no-such-user-here",)))


@pytest.mark.parametrize("mode", [0o666, 0o602, 0o1600, -1, 0o7777])
def test_server_refuses_a_mode_others_could_write_or_that_is_no_mode(sock_path, handler, mode):
    with pytest.raises(ControlError, match="mode"):
        ControlServer(sock_path, mode, handler)


def test_own_credentials_are_read_from_the_socket():
    left, right = socket.socketpair()
    with left, right:
        creds = control.peer_credentials(left)
    assert (creds.uid, creds.gid, creds.pid) == (os.getuid(), os.getgid(), os.getpid())
    assert creds.groups == {os.getgid(), *os.getgroups()}
    assert str(creds) == own_identity()


def test_server_refuses_a_directory_others_can_write(tmp_path, handler):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    srv = ServerThread(str(shared / "control.sock"), handler)
    try:
        with pytest.raises(ControlError, match="writable by group or others"):
            srv.run(srv.server.start())
    finally:
        srv.stop()
    shared.chmod(0o1777)  # sticky, like /tmp: others cannot remove or rename what is not theirs
    srv = ServerThread(str(shared / "control.sock"), handler).start()
    try:
        assert request(str(shared / "control.sock"), "status")["ok"] is True
    finally:
        srv.stop()


# --------------------------------------------------------------------------- [control] configuration
def control_config(tmp_path, section: str):
    """conf/hanet.toml with its [control] section replaced by ``section``."""
    example = (pathlib.Path(__file__).resolve().parents[2] / "conf" / "hanet.toml").read_text()
    key = tmp_path / "heartbeat.key"
    if not key.exists():
        key.write_text("0123456789abcdef" * 4 + "\n")
        key.chmod(0o600)
    text = example.replace("/etc/hanet/heartbeat.key", str(key))
    text = re.sub(r"\[control\]\n(?:(?!\n\[).)*\n", "[control]\n" + section + "\n", text, flags=re.S)
    assert "[metrics]" in text
    return config.parse(text, file="hanet.toml")


def test_control_keys_are_read_and_names_resolve(tmp_path):
    cfg = control_config(tmp_path, f'socket = "{tmp_path}/c.sock"\nmode = 0o660\n'
                                   'admin_users = ["root"]\nadmin_groups = ["root"]\n'
                                   'read_users = ["nobody"]\nread_groups = ["nogroup"]')
    c = cfg.control
    assert (c.mode, c.admin_users, c.admin_groups, c.read_users, c.read_groups) == (
        0o660, ("root",), ("root",), ("nobody",), ("nogroup",))
    access = control.Access.from_config(c)
    assert access.read_uids == {65534} and access.admin_gids == {0}


def test_control_defaults_let_only_root_and_the_daemons_user_in(tmp_path):
    c = control_config(tmp_path, "").control
    assert (c.mode, c.admin_users, c.admin_groups, c.read_users, c.read_groups) == (0o600, (), (), (), ())


@pytest.mark.parametrize("section, key, reason", [
    ("mode = 0o666", "control.mode", "lets every local user connect"),
    ("mode = 0o602", "control.mode", "lets every local user connect"),
    ("mode = 0o1600", "control.mode", "from 0o000 to 0o777"),
    ("mode = -1", "control.mode", "from 0o000 to 0o777"),
    ('mode = "0600"', "control.mode", "must be int"),
    ("mode = 384.0", "control.mode", "must be int"),
    ("mode = true", "control.mode", "must be int"),
    ('admin_users = ["root", "no-such-user-here"]', "control.admin_users[1]", "no user named 'no-such-user-here'"),
    ('admin_groups = ["no-such-group-here"]', "control.admin_groups[0]", "no group named 'no-such-group-here'"),
    ('read_users = ["no-such-user-here"]', "control.read_users[0]", "no user named"),
    ('read_groups = ["no-such-group-here"]', "control.read_groups[0]", "no group named"),
    ("read_groups = [7]", "control.read_groups[0]", "must be str"),
    ('read_groups = "nogroup"', "control.read_groups", "must be list"),
    ('socket = ""', "control.socket", "must not be empty"),
    ("admins = []", "control.admins", "unknown key"),
])
def test_bad_control_keys_name_the_key(tmp_path, section, key, reason):
    with pytest.raises(config.ConfigError) as info:
        control_config(tmp_path, section)
    assert info.value.key == key and reason in info.value.reason, info.value


def test_a_socket_directory_others_can_write_is_a_config_error(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(config.ConfigError) as info:
        control_config(tmp_path, f'socket = "{shared}/control.sock"')
    assert info.value.key == "control.socket" and "writable by group or others" in info.value.reason
    # A directory that does not exist yet is judged by the nearest one that does.
    assert control_config(tmp_path, f'socket = "{tmp_path}/run/hanet/control.sock"').control.socket


def test_cli_check_exits_2_for_a_mode_others_could_write(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[2]
    control_config(tmp_path, "")  # writes the key file
    text = (root / "conf" / "hanet.toml").read_text().replace("/etc/hanet/heartbeat.key", str(tmp_path / "heartbeat.key"))
    conf = tmp_path / "bad.toml"
    conf.write_text(text.replace("mode = 0o600", "mode = 0o666"))
    proc = subprocess.run([sys.executable, "-m", "hanet", "check", "--no-interfaces", "-c", str(conf)],
                          capture_output=True, text=True, cwd=root, timeout=30)
    assert proc.returncode == 2 and f"{conf}: control.mode: 0o666 lets every local user connect" in proc.stderr


# --------------------------------------------------------------------------- the hanet command's client side
def hanet(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hanet", *argv], capture_output=True, text=True, timeout=30,
                          cwd=pathlib.Path(__file__).resolve().parents[2])


def test_cli_failover_without_a_target_sends_no_target(served, sock_path, handler):
    proc = hanet("failover", "-s", sock_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("failover done:")
    assert handler.calls[0][:2] == ("failover", {"force": False})


def test_cli_prints_a_refusal_on_stderr_and_exits_1(served, sock_path):
    proc = hanet("offline", "nic9", "-s", sock_path)
    assert proc.returncode == 1 and proc.stderr == "hanet: offline refused: no path uses interface 'nic9'\n"


def test_cli_reads_only_the_socket_path_from_the_config(served, sock_path, tmp_path):
    # No key file, no NICs: an operator who may run status need not be able to read either.
    conf = tmp_path / "op.toml"
    conf.write_text(f'[heartbeat]\nkey_file = "/nonexistent/key"\n[control]\nsocket = "{sock_path}"\n')
    proc = hanet("status", "-c", str(conf))
    assert proc.returncode == 0 and "node alpha" in proc.stdout, proc.stderr
    conf.write_text("[control]\nsocket = 7\n")
    proc = hanet("status", "-c", str(conf))
    assert proc.returncode == 2 and "control.socket: must be a non-empty string" in proc.stderr


def test_a_half_sent_request_is_not_run_when_the_server_closes(sock_path, handler):
    srv = ServerThread(sock_path, handler).start()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(sock_path)
        client.sendall(b'{"cmd":"failback"}')  # its newline not sent yet
        deadline = time.monotonic() + 5
        while not srv.run(_count(srv.server)) and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.stop()
    assert handler.calls == []


def test_render_status_names_a_degraded_log_a_gone_nic_and_the_peer_path():
    status = {**SAMPLE_STATUS, "eventlog_degraded": "write /var/lib/hanet/events.hlog: No space left on device",
              "config_changes": ["path 'backup' added"],
              "paths": [{**SAMPLE_STATUS["paths"][0], "present": False, "peer_path": 1}, *SAMPLE_STATUS["paths"][1:]]}
    text = render_status(status)
    assert "eventlog DEGRADED: write /var/lib/hanet/events.hlog: No space left on device" in text
    assert "configuration changed since the last run: path 'backup' added" in text
    row = next(line for line in text.splitlines() if " gone" in line)
    assert row.rstrip().endswith("1")
