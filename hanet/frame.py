"""The heartbeat frame: pure-Python reference codec.

hanet._fastprobe carries the same codec in C for the hot path; the unit tests run one suite
against both, so they agree byte for byte. The frame is the payload of an Ethernet frame with
hanet's EtherType, sent to a fixed group address so it survives MAC moves between NICs. Its
layout and constants are in hanet.wire.

Decoding checks the cheap things first (length, version, kind) and authenticates before it
reads any other field. Encoding refuses a field out of its range (ValueError) rather than
truncate it: a frame says exactly what its caller meant or is not made.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from hanet.wire import (BODY_LEN, FRAME_LEN, GROUP_MAC, KIND_NOTICE, KIND_REPLY, KIND_REQUEST,
                        KINDS, MAC_LEN, NODE_ID_LEN, U8_MAX, U64_MAX, VERSION)

__all__ = ["Frame", "encode", "decode", "node_id_field", "mac", "VERSION", "KIND_REQUEST",
           "KIND_REPLY", "KIND_NOTICE", "KINDS", "NODE_ID_LEN", "MAC_LEN", "BODY_LEN", "FRAME_LEN",
           "GROUP_MAC", "OK", "SHORT", "LONG", "BAD_VERSION", "BAD_AUTH", "BAD_KIND"]

_BODY = struct.Struct("!BBBB16sQQQQ")

#: Reasons the stateless decode drops a frame (the receiver adds node/path/replay/stale/...).
OK = "ok"
SHORT = "short"
LONG = "long"
BAD_VERSION = "version"
BAD_AUTH = "auth"
BAD_KIND = "kind"


@dataclass(frozen=True)
class Frame:
    kind: int
    path: int
    node_id: bytes  # as carried: zero padded to NODE_ID_LEN
    seq: int
    send_ns: int
    active: int = 0
    echo_seq: int = 0
    echo_ns: int = 0


def node_id_field(node_id: str) -> bytes:
    raw = node_id.encode("utf-8")
    if len(raw) > NODE_ID_LEN:
        raise ValueError(f"node id {node_id!r} is longer than {NODE_ID_LEN} bytes")
    return raw.ljust(NODE_ID_LEN, b"\0")


def mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, hashlib.sha256)[:MAC_LEN]


def check_fields(frame: Frame) -> None:
    """ValueError naming the first field out of its range."""
    for name in ("kind", "path", "active"):
        value = getattr(frame, name)
        if not isinstance(value, int) or not 0 <= value <= U8_MAX:
            raise ValueError(f"{name} {value!r} is not 0..{U8_MAX}")
    for name in ("seq", "send_ns", "echo_seq", "echo_ns"):
        value = getattr(frame, name)
        if not isinstance(value, int) or not 0 <= value <= U64_MAX:
            raise ValueError(f"{name} {value!r} is not 0..2**64-1")
    if not isinstance(frame.node_id, bytes) or len(frame.node_id) != NODE_ID_LEN:
        raise ValueError(f"node_id must be {NODE_ID_LEN} bytes")


def encode(key: bytes, frame: Frame) -> bytes:
    check_fields(frame)
    body = _BODY.pack(VERSION, frame.kind, frame.path, frame.active, frame.node_id,
                      frame.seq, frame.send_ns, frame.echo_seq, frame.echo_ns)
    return body + mac(key, body)


def decode(key: bytes, data: bytes) -> tuple[str, Frame | None]:
    """(OK, frame) or (drop reason, None). Never raises on any input bytes."""
    if len(data) < 1:
        return SHORT, None
    if data[0] != VERSION:
        return BAD_VERSION, None
    if len(data) < FRAME_LEN:
        return SHORT, None
    if len(data) > FRAME_LEN:
        return LONG, None
    if data[1] not in KINDS:
        return BAD_KIND, None
    if not hmac.compare_digest(mac(key, bytes(data[:BODY_LEN])), bytes(data[BODY_LEN:])):
        return BAD_AUTH, None
    _, kind, path, active, node_id, seq, send_ns, echo_seq, echo_ns = _BODY.unpack_from(data)
    return OK, Frame(kind=kind, path=path, node_id=node_id, seq=seq, send_ns=send_ns,
                     active=active, echo_seq=echo_seq, echo_ns=echo_ns)
