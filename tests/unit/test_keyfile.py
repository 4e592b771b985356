"""The heartbeat key file: every unsafe or unusable file is refused with a reason naming the fix,
by the reader, by config loading (key heartbeat.key_file) and by `hanet check` (exit 2)."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading

import pytest

from hanet import cli, config, keyfile
from hanet.keyfile import KeyFileError, read_key

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "conf" / "hanet.toml").read_text()
HEX_KEY = b"0123456789abcdef" * 4  # 64 hex digits: 32 bytes of key material


def write_key(path: pathlib.Path, content: bytes = HEX_KEY + b"\n", mode: int = 0o600) -> pathlib.Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


@pytest.fixture
def keydir(tmp_path):
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    return d


# --------------------------------------------------------------------------- accepted
def test_hex_key_from_keygen_is_read_as_before(keydir):
    path = keydir / "k"
    assert cli.main(["keygen", str(path)]) == cli.EXIT_OK
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_bytes()
    assert len(text) == 65 and text.endswith(b"\n")
    # The HMAC key is the file's text less surrounding whitespace, as older versions used it.
    assert read_key(str(path)) == text.strip()


@pytest.mark.parametrize("content, mode", [
    (HEX_KEY, 0o400),                        # read-only for the owner
    (b"  " + HEX_KEY.upper() + b"\r\n", 0o600),
    (bytes(range(128, 160)), 0o600),         # 32 bytes of raw binary
])
def test_good_key_files(keydir, content, mode):
    assert read_key(str(write_key(keydir / "k", content, mode))) == content.strip()


def test_a_sticky_world_writable_directory_like_tmp_is_fine(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert read_key(str(write_key(sticky / "k"))) == HEX_KEY


# --------------------------------------------------------------------------- refused
def refused(path) -> str:
    with pytest.raises(KeyFileError) as info:
        read_key(str(path))
    return str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o610, 0o601, 0o666])
def test_any_permission_for_group_or_others_is_refused_with_the_fix(keydir, mode):
    path = write_key(keydir / "k", mode=mode)
    reason = refused(path)
    assert f"mode {mode:04o}" in reason and f"chmod 600 {path}" in reason


def test_a_symlink_is_refused_even_to_a_good_key(keydir):
    target = write_key(keydir / "real")
    link = keydir / "link"
    link.symlink_to(target)
    assert "symbolic link" in refused(link)


def test_a_fifo_is_refused_without_blocking(keydir):
    fifo = keydir / "fifo"
    os.mkfifo(fifo, 0o600)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(refused(fifo)), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "reading the key blocked on a FIFO"
    assert "a FIFO, not a regular file" in outcome[0]


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_is_refused_before_it_is_read(device):
    assert "a character device, not a regular file" in refused(device)


def test_a_directory_is_refused(keydir):
    assert "a directory, not a regular file" in refused(keydir)


def test_a_file_owned_by_another_user_is_refused(keydir, monkeypatch):
    monkeypatch.setattr(keyfile, "DAEMON_USER", "no-such-daemon-user")
    path = write_key(keydir / "k")
    os.chown(path, 65534, 65534)
    reason = refused(path)
    assert "owned by uid 65534 (nobody); only root or no-such-daemon-user may own it" in reason
    assert f"chown root {path}" in reason  # no such daemon user here: the user running this


def test_the_daemons_system_user_may_own_the_key(keydir, monkeypatch):
    # conf/hanet.service runs the daemon as DAEMON_USER; root's `hanet check` must accept its key.
    monkeypatch.setattr(keyfile, "DAEMON_USER", "nobody")
    path = write_key(keydir / "k")
    os.chown(path, 65534, 65534)
    assert read_key(str(path)) == HEX_KEY
    os.chown(path, 1, 1)
    assert "only root or nobody may own it: chown nobody" in refused(path)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o720])
def test_a_directory_others_can_write_is_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    path = write_key(shared / "k")
    shared.chmod(mode)
    reason = refused(path)
    assert f"directory {shared} is writable by group or others" in reason
    assert f"chmod go-w {shared}" in reason and "could replace the key file" in reason


def test_a_directory_owned_by_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    path = write_key(theirs / "k")
    os.chown(theirs, 65534, 65534)
    assert f"directory {theirs} is owned by uid 65534" in refused(path)


def test_an_oversize_file_is_refused(keydir):
    path = write_key(keydir / "k", HEX_KEY * 64 + b"0")
    assert f"at most {keyfile.KEY_MAX_FILE_BYTES}" in refused(path)


def test_a_passphrase_is_refused(keydir):
    path = write_key(keydir / "k", b"correct horse battery staple, and a few more words\n")
    assert "not hex digits (a passphrase?)" in refused(path) and "hanet keygen" in refused(path)


@pytest.mark.parametrize("content, material", [
    (HEX_KEY[:62], 31), (b"00", 1), (bytes(range(200, 231)), 31), (b"\n\n", 0), (b"", 0)])
def test_too_little_key_material_is_refused(keydir, content, material):
    reason = refused(write_key(keydir / "k", content))
    assert f"holds {material} bytes of key material; at least 32 are needed (64 hex digits" in reason


def test_a_missing_file_is_refused(keydir):
    assert "cannot read" in refused(keydir / "absent")


# --------------------------------------------------------------------------- configuration and CLI
def config_with_key(key_path) -> str:
    return EXAMPLE.replace("/etc/hanet/heartbeat.key", str(key_path))


def bad_key_files(d: pathlib.Path) -> dict[str, tuple[str, str]]:
    """name -> (path, words the refusal must contain)"""
    good = write_key(d / "good")
    (d / "link").symlink_to(good)
    os.mkfifo(d / "fifo", 0o600)
    return {
        "world-readable": (str(write_key(d / "wr", mode=0o644)), "chmod 600"),
        "world-writable": (str(write_key(d / "ww", mode=0o602)), "chmod 600"),
        "symlink": (str(d / "link"), "symbolic link"),
        "fifo": (str(d / "fifo"), "a FIFO"),
        "device": ("/dev/zero", "a character device"),
        "passphrase": (str(write_key(d / "pw", b"my secret passphrase is long enough\n")), "passphrase"),
        "short": (str(write_key(d / "short", b"0123456789abcdef0123456789abcdef\n")), "at least 32"),
        "oversize": (str(write_key(d / "big", b"a" * 5000)), "at most 4096"),
    }


def test_every_bad_key_file_is_a_config_error_naming_the_key(keydir):
    for name, (path, words) in bad_key_files(keydir).items():
        with pytest.raises(config.ConfigError) as info:
            config.parse(config_with_key(path), file="hanet.toml")
        assert info.value.key == "heartbeat.key_file", name
        assert words in info.value.reason, (name, info.value.reason)


def test_cli_check_exits_2_on_every_bad_key_file(tmp_path, keydir):
    for name, (path, words) in bad_key_files(keydir).items():
        conf = tmp_path / f"{name}.toml"
        conf.write_text(config_with_key(path))
        proc = subprocess.run([sys.executable, "-m", "hanet", "check", "--no-interfaces", "-c", str(conf)],
                              capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert proc.returncode == 2, (name, proc.stderr)
        assert f"{conf}: heartbeat.key_file: " in proc.stderr and words in proc.stderr, (name, proc.stderr)
    conf = tmp_path / "good.toml"
    conf.write_text(config_with_key(keydir / "good"))
    proc = subprocess.run([sys.executable, "-m", "hanet", "check", "--no-interfaces", "-c", str(conf)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_keygen_never_overwrites_nor_follows_a_symlink(keydir):
    existing = write_key(keydir / "k")
    assert cli.main(["keygen", str(existing)]) == cli.EXIT_FAIL
    assert existing.read_bytes() == HEX_KEY + b"\n"
    link = keydir / "link"
    link.symlink_to(keydir / "elsewhere")
    assert cli.main(["keygen", str(link)]) == cli.EXIT_FAIL
    assert not (keydir / "elsewhere").exists()


def test_keygen_ignores_a_permissive_umask(keydir):
    old = os.umask(0)
    try:
        assert cli.main(["keygen", str(keydir / "k")]) == cli.EXIT_OK
    finally:
        os.umask(old)
    assert (keydir / "k").stat().st_mode & 0o777 == 0o600
    assert len(read_key(str(keydir / "k"))) == 64


def test_keygen_warns_at_once_where_the_key_would_be_refused(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert cli.main(["keygen", str(shared / "k")]) == cli.EXIT_OK
    err = capsys.readouterr().err
    assert "hanet will refuse this key file" in err and f"directory {shared} is writable" in err
