"""The control socket as other users meet it: client processes that really run under other uids
and groups (the kernel's SO_PEERCRED / SO_PEERGROUPS, not a stub) against a real ControlServer,
and a real `hanet run` refusing a bad key file before it touches any interface."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from hanet import config, control
from hanet import lab as labmod

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
# The clients run the system interpreter: the test's own may sit where other users cannot reach.
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

SOCKET_GROUP = 100   # "users": every client below is in it, so the socket's 0660 lets it connect
NOBODY = dict(user=65534, group=65534, extra_groups=[SOCKET_GROUP])             # read_users
READER = dict(user=1, group=1, extra_groups=[SOCKET_GROUP, 65534])              # read_groups, supplementary
ADMIN = dict(user=2, group=2, extra_groups=[SOCKET_GROUP, 3])                   # admin_groups, supplementary
STRANGER = dict(user=5, group=60, extra_groups=[SOCKET_GROUP])                  # in no list
ACCESS = config.ControlConfig(admin_groups=("sys",), read_users=("nobody",), read_groups=("nogroup",))

STATUS = {"node": "alpha", "state": "Monitoring", "active": 0, "active_name": "primary", "uptime_s": 1.0,
          "paths": [], "transitions": []}

CLIENT = r"""
import json, sys
sys.dont_write_bytecode = True
sys.path.insert(0, sys.argv[1])
from hanet.control import ControlError, request
out = []
for line in sys.argv[3:]:
    req = json.loads(line)
    try:
        out.append(request(sys.argv[2], req["cmd"], **req.get("args", {})))
    except ControlError as exc:
        out.append({"client_error": str(exc)})
print(json.dumps(out))
"""

RAW = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"[" * 60000 + b"\n" + b"[" * 1000 + b"\n" + b'{"cmd":"status"}\n')
f = s.makefile("rb")
print(json.dumps([json.loads(f.readline()) for _ in range(3)]))
"""

HOLD = r"""
import socket, sys
conns = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    conns.append(s)
print("ready", flush=True)
sys.stdin.read()  # hold them until the test closes stdin
"""


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, dict, str]] = []

    def __call__(self, cmd, args, who):
        self.calls.append((cmd, args, who))
        if cmd == "status":
            return dict(STATUS)
        return {"state": "Failing-Over", "active": 0, "reason": f"operator {cmd}"}


@pytest.fixture
def served():
    """A ControlServer on its own loop thread, its socket 0660 group "users" in a 0755 directory."""
    directory = tempfile.mkdtemp(prefix="hanet-ctl-auth-")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "control.sock")
    handler = Recorder()
    server = control.ControlServer(path, 0o660, handler, ACCESS)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=10)
    try:
        run(server.start())
        os.chown(path, -1, SOCKET_GROUP)
        yield path, handler, server, run
    finally:
        with contextlib.suppress(Exception):
            run(server.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        shutil.rmtree(directory, ignore_errors=True)


def as_user(creds: dict, script: str, *argv: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", script, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd="/", env={"PATH": "/usr/bin:/bin"}, **creds)


def requests_as(creds: dict, path: str, *requests: dict) -> list[dict]:
    proc = as_user(creds, CLIENT, ROOT, path, *(json.dumps(r) for r in requests))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


STATUS_REQ = {"cmd": "status"}
FAILOVER_REQ = {"cmd": "failover", "args": {"to": "alternate"}}


def test_read_users_and_groups_get_status_and_are_refused_state_changes(served, caplog):
    path, handler, _, _ = served
    caplog.set_level(logging.INFO, logger="hanet.control")
    for creds in (NOBODY, READER):
        status, failover, offline = requests_as(creds, path, STATUS_REQ, FAILOVER_REQ,
                                                {"cmd": "offline", "args": {"interface": "nic1"}})
        assert status == {"ok": True, **STATUS}
        for cmd, reply in (("failover", failover), ("offline", offline)):
            assert reply["ok"] is False
            assert reply["error"].startswith(f"not allowed: {cmd} needs [control] admin_users or admin_groups")
            assert f"uid {creds['user']} (" in reply["error"] and "has status only" in reply["error"]
    # Only the allowed requests reached the daemon, each with the caller's real uid.
    assert [(c[0], c[2].split()[0]) for c in handler.calls] == [("status", "uid=65534"), ("status", "uid=1")]
    denied = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
    assert len(denied) == 4
    assert denied[0].startswith("control command denied cmd=failover who=uid=65534 pid=")


def test_admin_group_may_change_state(served):
    path, handler, _, _ = served
    status, failover = requests_as(ADMIN, path, STATUS_REQ, FAILOVER_REQ)
    assert status["ok"] is True and failover == {"ok": True, "state": "Failing-Over", "active": 0,
                                                 "reason": "operator failover"}
    assert handler.calls[1][:2] == ("failover", {"to": "alternate"}) and handler.calls[1][2].startswith("uid=2 ")


def test_a_user_in_no_list_gets_nothing(served):
    path, handler, _, _ = served
    status, failover = requests_as(STRANGER, path, STATUS_REQ, FAILOVER_REQ)
    assert status["ok"] is False and "has no access" in status["error"]
    assert failover["ok"] is False and "has no access" in failover["error"]
    assert handler.calls == []


def test_the_cli_tells_a_read_only_operator_what_is_missing(served):
    path, _, _, _ = served
    cli = f"import sys; sys.dont_write_bytecode = True; sys.path.insert(0, {ROOT!r}); " \
          f"from hanet.cli import main; sys.exit(main(sys.argv[1:]))"
    status = as_user(NOBODY, cli, "status", "-s", path)
    assert status.returncode == 0 and "node alpha" in status.stdout and "state Monitoring" in status.stdout
    failover = as_user(NOBODY, cli, "failover", "-s", path)
    assert failover.returncode == 1
    assert "hanet: failover refused: not allowed: failover needs [control] admin_users" in failover.stderr
    outsider = as_user(dict(user=65534, group=65534, extra_groups=[]), cli, "status", "-s", path)
    assert outsider.returncode == 1 and "permission denied" in outsider.stderr  # not in the socket's group


def test_sixty_thousand_brackets_from_another_user_get_an_error_and_serving_goes_on(served):
    path, handler, _, _ = served
    proc = as_user(NOBODY, RAW, path)
    assert proc.returncode == 0, proc.stderr
    too_long, too_deep, status = json.loads(proc.stdout)
    assert too_long == {"ok": False, "error": f"request line longer than {control.MAX_LINE} bytes"}
    assert too_deep == {"ok": False, "error": f"request nested 1000 deep; at most {control.MAX_DEPTH}"}
    assert status["ok"] is True
    assert requests_as(READER, path, STATUS_REQ)[0]["ok"] is True


@contextlib.contextmanager
def holding(creds: dict, path: str, count: int):
    """A process of another user holding ``count`` idle connections open."""
    proc = subprocess.Popen([PYTHON, "-c", HOLD, path, str(count)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
                            env={"PATH": "/usr/bin:/bin"}, **creds)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.poll() is not None else ""
        yield proc
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


def test_idle_connections_of_other_users_never_lock_an_operator_out(served, monkeypatch):
    path, handler, server, run = served
    monkeypatch.setattr(control, "READ_TIMEOUT_S", 60.0)  # they would stay for a minute

    async def held() -> dict[int, int]:
        counts: dict[int, int] = {}
        for conn in server._clients.values():
            counts[conn.peer.uid] = counts.get(conn.peer.uid, 0) + 1
        return counts

    # 64 idle connections of one user, then 8 each of three more: past the global limit too.
    with holding(NOBODY, path, 64), holding(READER, path, 8), holding(ADMIN, path, 8), \
            holding(STRANGER, path, 8):
        counts = run(held())
        assert sum(counts.values()) <= control.MAX_CLIENTS
        assert max(counts.values()) <= control.MAX_CLIENTS_PER_UID
        started = time.monotonic()
        assert control.request(path, "status", timeout=5.0)["ok"] is True          # root
        assert requests_as(READER, path, STATUS_REQ)[0]["ok"] is True              # a read-only operator
        assert requests_as(ADMIN, path, FAILOVER_REQ)[0]["ok"] is True             # an admin
        # Answered at once, not once the idle connections timed out (60 s) or the client gave up (5 s).
        assert time.monotonic() - started < 15


# --------------------------------------------------------------------------- the real daemon
@pytest.mark.parametrize("spoil", ["world-readable", "symlink", "fifo", "passphrase"])
def test_hanet_run_refuses_a_bad_key_file_before_touching_any_interface(tmp_path, spoil):
    lab = labmod.Lab.create(str(tmp_path / "lab"))
    try:
        ns = lab.netns("alpha")
        before = {nic: (ns.addresses(nic), ns.link(nic)["operstate"], ns.mac(nic)) for nic in ("nic1", "nic3")}
        key = os.path.join(lab.workdir, "heartbeat.key")
        if spoil == "world-readable":
            os.chmod(key, 0o644)
        elif spoil == "symlink":
            os.rename(key, key + ".real")
            os.symlink(key + ".real", key)
        elif spoil == "fifo":
            os.unlink(key)
            os.mkfifo(key, 0o600)
        else:
            with open(key, "w") as fh:
                fh.write("a passphrase that is long enough to pass a length check\n")
        proc = subprocess.run(["ip", "netns", "exec", lab.ns["alpha"], sys.executable, "-m", "hanet", "run",
                               "-c", lab.config_path("alpha")], capture_output=True, text=True, timeout=30,
                              cwd=ROOT)
        assert proc.returncode == 2, proc.stderr
        assert f"{lab.config_path('alpha')}: heartbeat.key_file: " in proc.stderr
        after = {nic: (ns.addresses(nic), ns.link(nic)["operstate"], ns.mac(nic)) for nic in ("nic1", "nic3")}
        assert after == before
        assert not os.path.exists(lab.log_path("alpha")) and not os.path.exists(lab.socket_path("alpha"))
    finally:
        lab.destroy()


@pytest.fixture
def daemon_lab():
    """A running two-node lab whose control sockets are 0660 (group root), in directories every
    user may traverse, so that processes of other users reach the socket and meet the daemon's
    own checks rather than the file mode."""
    base = tempfile.mkdtemp(prefix="hanet-ctl-daemon-")
    os.chmod(base, 0o755)
    lab = None
    try:
        lab = labmod.Lab.create(os.path.join(base, "lab"), overrides={"control": {"mode": 0o660}})
        os.chmod(lab.workdir, 0o755)
        lab.start_daemons()
        yield lab
    finally:
        if lab is not None:
            lab.destroy()
        shutil.rmtree(base, ignore_errors=True)


OUTSIDER = dict(user=5, group=60, extra_groups=[0])  # may connect (the socket's group), in no list


def test_the_daemon_refuses_an_outsider_and_keeps_serving_through_abuse(daemon_lab):
    lab = daemon_lab
    path = lab.socket_path("alpha")
    status, failover = requests_as(OUTSIDER, path, STATUS_REQ, FAILOVER_REQ)
    assert status["ok"] is False and "not allowed: status" in status["error"] and "has no access" in status["error"]
    assert failover["ok"] is False and "not allowed: failover" in failover["error"]
    assert "control command denied cmd=failover who=uid=5 pid=" in lab.stderr_tail("alpha", 60)
    assert lab.status("alpha")["state"] == "Monitoring"  # nothing moved

    proc = as_user(OUTSIDER, RAW, path)  # 60,000 '[' and deep nesting from the outsider
    assert proc.returncode == 0, proc.stderr
    too_long, too_deep, refused = json.loads(proc.stdout)
    assert "longer than" in too_long["error"] and "nested 1000 deep" in too_deep["error"]
    assert "not allowed" in refused["error"]

    with holding(dict(user=65534, group=65534, extra_groups=[0]), path, 64):
        # 64 idle connections held: the operator is answered, never told "busy".
        out = subprocess.run([sys.executable, "-m", "hanet", "status", "-s", path], capture_output=True,
                             text=True, timeout=30, cwd=ROOT)
        assert out.returncode == 0 and "state Monitoring" in out.stdout, out.stderr
    assert lab.daemon_alive("alpha") and lab.status("alpha")["state"] == "Monitoring"
