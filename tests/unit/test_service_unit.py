"""conf/hanet.service: systemd-analyze accepts it, and it asks for no more than hanet needs.

`systemd-analyze verify` works without systemd as PID 1; it does insist that ExecStart's binary
exists, so it checks a copy whose ExecStart binary is /bin/true and whose other lines are the same.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

from hanet.config import ControlConfig, EventLogConfig

UNIT = pathlib.Path(__file__).resolve().parents[2] / "conf" / "hanet.service"
INSTALLED_BINARY = "/usr/bin/hanet"  # where the Debian package puts it
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; keys may repeat, as systemd allows."""
    out, section = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in directives(UNIT.read_text()) if s == section and k == key]


def one(key: str, section: str = "Service") -> str:
    found = values(key, section)
    assert len(found) == 1, f"{section}.{key}: {found}"
    return found[0]


@pytest.fixture
def verifiable_copy(tmp_path):
    """The unit with only ExecStart's binary swapped for one that exists here."""
    original = UNIT.read_text().splitlines(keepends=True)
    prefix = f"ExecStart={INSTALLED_BINARY} "
    copy = [line.replace(prefix, "ExecStart=/bin/true ", 1) if line.startswith(prefix) else line
            for line in original]
    assert sum(a != b for a, b in zip(original, copy)) == 1
    path = tmp_path / "hanet.service"
    path.write_text("".join(copy))
    return path


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60)


@needs_analyze
def test_systemd_analyze_verify_passes(verifiable_copy):
    result = analyze("verify", "--man=no", "--recursive-errors=no", str(verifiable_copy))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Unknown keys and unparsable values are only warnings; none may name this unit.
    assert "hanet.service" not in output, output


@needs_analyze
def test_verify_catches_a_broken_unit(verifiable_copy):
    verifiable_copy.write_text(verifiable_copy.read_text().replace("Type=notify", "Type=notifyy"))
    result = analyze("verify", "--man=no", "--recursive-errors=no", str(verifiable_copy))
    assert "hanet.service" in result.stdout + result.stderr


@needs_analyze
def test_security_exposure_is_low(verifiable_copy):
    result = analyze("security", "--offline=true", "--threshold=30", str(verifiable_copy))
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security check")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_notify_service_with_watchdog_and_reload():
    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecStart") == f"{INSTALLED_BINARY} run -c /etc/hanet/hanet.toml"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("WatchdogSec")
    assert one("Restart") == "on-failure"


def test_least_privilege():
    wanted = {"CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(one("CapabilityBoundingSet").split()) == wanted
    assert set(one("AmbientCapabilities").split()) == wanted
    assert one("User") == "hanet"
    assert set(one("RestrictAddressFamilies").split()) == {
        "AF_UNIX", "AF_NETLINK", "AF_PACKET", "AF_INET", "AF_INET6"}
    for key, expected in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                          ("PrivateTmp", "yes"), ("SystemCallArchitectures", "native")):
        assert one(key) == expected, key
    assert one("StateDirectory") == "hanet"
    assert one("RuntimeDirectory") == "hanet"
    # hanet works in the host's network namespace and needs its capabilities there.
    assert not values("PrivateNetwork") and not values("PrivateUsers")


def test_writable_directories_hold_the_default_paths():
    assert ControlConfig.socket.startswith(f"/run/{one('RuntimeDirectory')}/")
    assert EventLogConfig.path.startswith(f"/var/lib/{one('StateDirectory')}/")


def test_not_started_before_it_is_configured():
    assert set(values("ConditionPathExists", "Unit")) == {"/etc/hanet/hanet.toml", "/etc/hanet/heartbeat.key"}
    from hanet.config import HeartbeatConfig
    assert HeartbeatConfig.key_file == "/etc/hanet/heartbeat.key"


SYSUSERS = UNIT.with_name("hanet.sysusers")
SYSUSERS_TOOL = shutil.which("systemd-sysusers")


@pytest.mark.skipif(SYSUSERS_TOOL is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_the_unit_user(tmp_path):
    # Always into a scratch root: never the host's own /etc.
    (tmp_path / "etc").mkdir()
    result = subprocess.run([SYSUSERS_TOOL, f"--root={tmp_path}", str(SYSUSERS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    user = passwd[one("User")]
    assert int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin"  # a system user with no login
    groups = [line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()]
    assert one("Group") in groups
