"""The record schema, its version, and the upcasters that bring old records up to date.

A record is a msgpack map with short keys::

    {"v": 1, "node": "alpha", "n": 17, "mono": <CLOCK_MONOTONIC ns>, "wall": <CLOCK_REALTIME ns>,
     "k": <kind>, ...body}

Bodies by kind:
    "event"       "e":   model.to_dict(event)
    "transition"  "tr":  {"src", "dst", "trigger", "reason", "active", "cause": <n of the event
                          record that caused it>, "actions": [model.to_dict(action), ...]}
    "config"      "cfg": the state machine's parameters (at each daemon start, and at the top of
                         every rotated-in file), so a replay needs no config file
    "snapshot"    "s":   the machine's state (after "config" at the top of a rotated-in file), so
                         one file replays alone after older ones were deleted
    "gap"         "g":   written first when the log can be written again after a failure:
                         {"lost": [[first, last], ...] record numbers never written,
                          "unsure": [[first, last], ...] written but a failed fdatasync may have
                          dropped them, "reason": str, "errno": str ("ENOSPC"),
                          "since": <CLOCK_MONOTONIC ns when the failure began>}

``n`` increases across files and daemon restarts. Events and actions carry their stable ``type``
string, never a class path.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

from .. import model

VERSION = 1

EVENT = "event"
TRANSITION = "transition"
CONFIG = "config"
SNAPSHOT = "snapshot"
GAP = "gap"
#: kind -> the key holding its body
BODY_KEYS = {EVENT: "e", TRANSITION: "tr", CONFIG: "cfg", SNAPSHOT: "s", GAP: "g"}

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
#: from_version -> function turning a record of that version into one of the next version.
#: Empty while v1 is the only version; a v2 adds ``{1: v1_to_v2}`` here.
UPCASTERS: dict[int, Upcaster] = {}


class SchemaError(ValueError):
    """A decoded payload that is not a record this reader understands."""


def record(node: str, n: int, mono: int, wall: int, kind: str, body: Any) -> dict[str, Any]:
    return {"v": VERSION, "node": node, "n": n, "mono": mono, "wall": wall, "k": kind,
            BODY_KEYS[kind]: body}


def transition_body(step, cause: int) -> dict[str, Any]:
    """The "tr" body of a machine.Step caused by the event record numbered ``cause``."""
    return {"src": step.src, "dst": step.dst, "trigger": step.trigger, "reason": step.reason,
            "active": step.active, "cause": cause,
            "actions": [model.to_dict(a) for a in step.actions]}


def upcast(rec: Any, upcasters: Mapping[int, Upcaster] = UPCASTERS) -> dict[str, Any]:
    """``rec`` at the current VERSION; SchemaError if it cannot be brought there."""
    if not isinstance(rec, dict):
        raise SchemaError(f"payload is a {type(rec).__name__}, not a map")
    version = rec.get("v")
    if version == VERSION:
        return rec
    if not isinstance(version, int):
        raise SchemaError(f"schema version {version!r} is not an integer")
    if version > VERSION:
        raise SchemaError(f"schema version {version} is newer than {VERSION}")
    while version < VERSION:
        step = upcasters.get(version)
        if step is None:
            raise SchemaError(f"no upcaster from schema version {version}")
        rec = step(rec)
        raised = rec.get("v") if isinstance(rec, dict) else None
        if not isinstance(raised, int) or raised <= version:
            raise SchemaError(f"upcaster from schema version {version} did not raise the version")
        version = raised
    return rec
