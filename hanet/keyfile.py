"""The heartbeat key file, read only when nobody but its owner can have read or changed it.

Format (unchanged): the file's content less surrounding whitespace is the HMAC-SHA256 key, used
as it is. Either hex text (what ``hanet keygen`` writes: 32 random bytes as 64 hex digits) or raw
binary. Key material is counted as half the digits of hex text, the bytes of binary; at least
KEY_MIN_BYTES are needed. Other text (a passphrase) is refused: it is far weaker than its length.

The checks, each refused with a reason that names the fix:
- the path is not a symbolic link (O_NOFOLLOW), and is a regular file (checked before opening, so
  a FIFO or a device is never opened, and again with fstat on what was opened);
- no permission bit for group or others (mode 0600 or 0400);
- owned by a trusted user: root, the user reading it, or the system user DAEMON_USER that
  conf/hanet.service runs the daemon as (so root's ``hanet check`` accepts what the daemon reads);
- every directory above it owned by a trusted user and not writable by group or others (unless
  sticky, like /tmp): otherwise another user could swap the file for their own;
- at most KEY_MAX_FILE_BYTES (read at most one byte more, whatever the file claims).
"""
from __future__ import annotations

import errno
import os
import pwd
import stat

KEY_MIN_BYTES = 32          # of key material: 64 hex digits, or 32 binary bytes
KEY_MAX_FILE_BYTES = 4096
DAEMON_USER = "hanet"       # the User= of conf/hanet.service
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class KeyFileError(Exception):
    """The key file cannot be used; the text says why and how to fix it."""


def read_key(path: str) -> bytes:
    """The key in the file at ``path``, or KeyFileError."""
    try:
        before = os.lstat(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISLNK(before.st_mode):
        raise KeyFileError(f"{path} is a symbolic link; set heartbeat.key_file to the key file itself")
    _check_file(path, before)
    problem = unsafe_directories(os.path.dirname(os.path.abspath(path)))
    if problem:
        raise KeyFileError(f"{problem}; another user could replace the key file {path}")
    raw = _read_bounded(path, before)
    return _key(path, raw)


def _check_file(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path} is {_kind(st.st_mode)}, not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path} is open to group or others (mode {mode:04o}); "
                           f"fix it with: chmod 600 {path}")
    if st.st_uid not in trusted_owners():
        raise KeyFileError(f"{path} is owned by {_user(st.st_uid)}; {_trusted_text()} may own it: "
                           f"chown {_owner_fix()} {path}")
    if st.st_size > KEY_MAX_FILE_BYTES:
        raise KeyFileError(f"{path} is {st.st_size} bytes; a key file holds at most {KEY_MAX_FILE_BYTES}")


def _read_bounded(path: str, before: os.stat_result) -> bytes:
    # O_NONBLOCK: should the path have become a FIFO since lstat, open and read must not wait.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(f"{path} is a symbolic link; set heartbeat.key_file to the key file itself") from None
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise KeyFileError(f"{path} was replaced while being read; check who writes it")
        _check_file(path, st)
        chunks, size = [], 0
        while size <= KEY_MAX_FILE_BYTES:
            chunk = os.read(fd, KEY_MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except BlockingIOError:
        raise KeyFileError(f"{path} is not a regular file") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if size > KEY_MAX_FILE_BYTES:
        raise KeyFileError(f"{path} is longer than {KEY_MAX_FILE_BYTES} bytes; not a key file")
    return b"".join(chunks)


def _key(path: str, raw: bytes) -> bytes:
    key = raw.strip()
    if all(b in HEX_DIGITS for b in key):  # also the empty file
        material = len(key) // 2
    elif _is_text(key):
        raise KeyFileError(f"{path} holds text that is not hex digits (a passphrase?); "
                           f"write a random key with: hanet keygen FILE")
    else:
        material = len(key)
    if material < KEY_MIN_BYTES:
        raise KeyFileError(f"{path} holds {material} bytes of key material; at least {KEY_MIN_BYTES} "
                           f"are needed ({2 * KEY_MIN_BYTES} hex digits, as hanet keygen writes)")
    return key


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch.isspace() for ch in text)


def unsafe_directories(directory: str) -> str:
    """Why ``directory`` or one above it lets another user replace what it holds; "" if nothing.
    A directory that does not exist yet is skipped: its existing parent decides."""
    trusted = trusted_owners()
    current = os.path.abspath(directory)
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            return f"cannot check directory {current}: {exc.strerror}"
        if st is not None:
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid not in trusted:
                return f"directory {current} is owned by {_user(st.st_uid)}; only {_trusted_text()} may own it"
            if mode & 0o022 and not mode & stat.S_ISVTX:
                return (f"directory {current} is writable by group or others (mode {mode:04o}); "
                        f"fix it with: chmod go-w {current}")
        parent = os.path.dirname(current)
        if parent == current:
            return ""
        current = parent


def trusted_owners() -> frozenset[int]:
    """Users who may own the key and the directories above it: root, this process's user, and
    DAEMON_USER where it exists."""
    owners = {0, os.geteuid()}
    try:
        owners.add(pwd.getpwnam(DAEMON_USER).pw_uid)
    except KeyError:
        pass
    return frozenset(owners)


def _trusted_text() -> str:
    names = ["root", DAEMON_USER, _user_name(os.geteuid())]
    names = [n for i, n in enumerate(names) if n not in names[:i]]
    return "only " + (" or ".join(names) if len(names) < 3 else f"{names[0]}, {names[1]} or {names[2]}")


def _owner_fix() -> str:
    """Whom to give the key to: the daemon's user where it exists, else whoever runs this."""
    try:
        return pwd.getpwnam(DAEMON_USER).pw_name
    except KeyError:
        return _user_name(os.geteuid())


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user(uid: int) -> str:
    return f"uid {uid} ({_user_name(uid)})"
