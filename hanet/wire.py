"""Heartbeat frame constants: the one list both codecs use.

hanet.frame (the pure-Python reference codec) imports them; hanet._fastprobe compiles the same
numbers into C and refuses to import if any of them differs (its module init compares them).

Layout (network byte order), ``FRAME_LEN`` bytes:

    off  size  field
      0     1  version          VERSION
      1     1  kind             KIND_REQUEST / KIND_REPLY / KIND_NOTICE
      2     1  path             sender's path index (both nodes list paths in the same order)
      3     1  active           NOTICE: path index the sender's identity now sits on;
                                REQUEST: REQUEST_CONFIRM for a confirmation (sent off the
                                schedule), REQUEST_ECHO for one asked on the peer's word,
                                REQUEST_PROBE for a probe (likewise), else 0;
                                REPLY: 0
      4    16  node_id          sender's node id, UTF-8, zero padded
     20     8  seq              sender's sequence number (unsigned; +1 a frame, never wraps)
     28     8  send_ns          sender's CLOCK_MONOTONIC ns at send (unsigned)
     36     8  echo_seq         REPLY: the request's seq; NOTICE: the notice id; else 0
     44     8  echo_ns          REPLY: the request's send_ns; NOTICE: the id of the newest of
                                the receiver's notices the sender had acted on (0: none); else 0
     52    16  mac              HMAC-SHA256(key, bytes 0..51) truncated to 16 bytes
"""
from __future__ import annotations

VERSION = 1
KIND_REQUEST = 1
KIND_REPLY = 2
KIND_NOTICE = 3
KINDS = (KIND_REQUEST, KIND_REPLY, KIND_NOTICE)
#: A request's ``active`` byte: a confirmation request, off the sender's steady schedule.
REQUEST_CONFIRM = 1
#: A request's ``active`` byte: a probe, off the schedule, sent on a path that is well to learn
#: whether the peer is alive while another path is silent. Answered like any request.
REQUEST_PROBE = 2
#: A request's ``active`` byte: a confirmation asked only because the peer's own confirmation said
#: it does not hear us (no question of ours has gone unanswered yet). It never makes the peer
#: confirm in turn, so two nodes never echo each other's doubts.
REQUEST_ECHO = 3

NODE_ID_LEN = 16
MAC_LEN = 16
BODY_LEN = 52
FRAME_LEN = BODY_LEN + MAC_LEN

OFF_VERSION = 0
OFF_KIND = 1
OFF_PATH = 2
OFF_ACTIVE = 3
OFF_NODE_ID = 4
OFF_SEQ = 20
OFF_SEND_NS = 28
OFF_ECHO_SEQ = 36
OFF_ECHO_NS = 44
OFF_MAC = BODY_LEN

U8_MAX = 0xFF
U64_MAX = (1 << 64) - 1

#: Locally administered multicast group ("\x03hanet"): not tied to any NIC's MAC.
GROUP_MAC = bytes.fromhex("0368616e6574")

#: Why a received frame was dropped, in the prober's counter order. The first five are the
#: stateless decode's; the receiver adds the rest. Frames the kernel's socket filter refuses never
#: reach a reason: they are counted apart ("filtered").
DROP_REASONS = ("short", "long", "version", "auth", "kind", "node", "path", "src_mac", "replay",
                "stale", "late", "unheard", "outdated")
