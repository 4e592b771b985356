"""The heartbeat frame: pure-Python reference codec.

hanet._fastprobe carries the same codec in C for the hot path; the unit tests run one suite
against both, so they agree byte for byte. The frame is the payload of an Ethernet frame with
hanet's EtherType, sent to a fixed group address so it survives MAC moves between NICs.

Layout (network byte order), ``FRAME_LEN`` bytes:

    off  size  field
      0     1  version          VERSION
      1     1  kind             KIND_REQUEST / KIND_REPLY / KIND_NOTICE
      2     1  path             sender's path index (both nodes list paths in the same order)
      3     1  active           NOTICE: path index the sender's identity now sits on; else 0
      4    16  node_id          sender's node id, UTF-8, zero padded
     20     8  seq              sender's sequence number (starts at CLOCK_REALTIME ns, +1 a frame)
     28     8  send_ns          sender's CLOCK_MONOTONIC ns at send
     36     8  echo_seq         REPLY: the request's seq; NOTICE: the notice id; else 0
     44     8  echo_ns          REPLY: the request's send_ns; else 0
     52    16  mac              HMAC-SHA256(key, bytes 0..51) truncated to 16 bytes
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

VERSION = 1
KIND_REQUEST = 1
KIND_REPLY = 2
KIND_NOTICE = 3
KINDS = (KIND_REQUEST, KIND_REPLY, KIND_NOTICE)

NODE_ID_LEN = 16
MAC_LEN = 16
BODY_LEN = 52
FRAME_LEN = BODY_LEN + MAC_LEN

#: Locally administered multicast group ("\x03hanet"): not tied to any NIC's MAC.
GROUP_MAC = bytes.fromhex("0368616e6574")

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


def encode(key: bytes, frame: Frame) -> bytes:
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
    if not hmac.compare_digest(mac(key, data[:BODY_LEN]), data[BODY_LEN:]):
        return BAD_AUTH, None
    _, kind, path, active, node_id, seq, send_ns, echo_seq, echo_ns = _BODY.unpack_from(data)
    if kind not in KINDS:
        return BAD_KIND, None
    return OK, Frame(kind=kind, path=path, node_id=node_id, seq=seq, send_ns=send_ns,
                     active=active, echo_seq=echo_seq, echo_ns=echo_ns)
