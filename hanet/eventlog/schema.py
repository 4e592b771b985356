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

import dataclasses
import itertools
import operator
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


# --------------------------------------------------------------------------- shape checks
# A frame whose CRC is good can still hold a payload that is not a record of this schema (a bug,
# or a file made by hand): the reader reports it as damage at its offset instead of handing out
# something its consumers would trip over.
_NONE = type(None)
#: A model field's annotation -> the wire classes its value may have (msgpack gives lists).
_WIRE_CLASSES = {"int": (int,), "int | None": (int, _NONE), "str": (str,), "str | None": (str, _NONE),
                 "bool": (bool,), "float": (float, int), "tuple[bool, ...]": (list,),
                 "tuple[str, ...]": (list,), "tuple[int, ...]": (list,), "dict[str, Any]": (dict,)}
_ITEM_CLASSES = {"tuple[bool, ...]": bool, "tuple[str, ...]": str, "tuple[int, ...]": int}
_MISSING = object()
_ENVELOPE = (("node", str), ("n", int), ("mono", int), ("wall", int), ("k", str))
_TRANSITION = (("src", (str,)), ("dst", (str,)), ("trigger", (str,)), ("reason", (str,)),
               ("active", (int, _NONE)), ("cause", (int,)), ("actions", (list,)))
_TRANSITION_GETTER = operator.itemgetter(*(name for name, _ in _TRANSITION))
_TRANSITION_CLASSES = frozenset(itertools.product(*(classes for _, classes in _TRANSITION)))
#: Beyond this many combinations of field classes a type is checked field by field only.
_MAX_COMBINATIONS = 256


@dataclasses.dataclass(frozen=True)
class _Shape:
    """The fields of one event or action type, and a fast test of a wire dict that has them all
    (as the writer writes it): the classes of ``getter(data)`` ("type", then each field) must be
    one of ``accepted``. Anything else is checked field by field."""
    fields: tuple[tuple[str, tuple[type, ...] | None, type | None, bool], ...]
    getter: Callable[[dict[str, Any]], tuple[Any, ...]]
    accepted: frozenset[tuple[type, ...]]


_SHAPES: dict[type, _Shape] = {}


def _shape(cls: type) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        fields = []
        for f in dataclasses.fields(cls):
            annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            fields.append((f.name, _WIRE_CLASSES.get(annotation), _ITEM_CLASSES.get(annotation), required))
        getter = operator.itemgetter("type", *(f[0] for f in fields))
        shape = _SHAPES[cls] = _Shape(tuple(fields), getter, _combinations(fields))
    return shape


def _combinations(fields) -> frozenset[tuple[type, ...]]:
    """Every accepted tuple of value classes ("type" first), or none when the fields must be
    looked at one by one (any value allowed, list items, too many combinations)."""
    choices: list[tuple[type, ...]] = [(str,)]
    for _name, classes, item, _required in fields:
        if classes is None or item is not None:
            return frozenset()
        choices.append(classes)
    count = 1
    for c in choices:
        count *= len(c)
    return frozenset(itertools.product(*choices)) if count <= _MAX_COMBINATIONS else frozenset()


#: type string -> its shape (a type registered later is checked field by field, not refused)
_EVENT_SHAPES = {name: _shape(cls) for name, cls in model.EVENT_TYPES.items()}
_ACTION_SHAPES = {name: _shape(cls) for name, cls in model.ACTION_TYPES.items()}


def problem(rec: dict[str, Any]) -> str:
    """Why the decoded (and upcast) map ``rec`` is not a well-formed record ("" if it is)."""
    if _well_formed(rec):
        return ""
    found = _envelope_problem(rec)
    if found:
        return found
    kind = rec["k"]
    key = BODY_KEYS.get(kind)
    if key is None:
        return f"unknown record kind {kind!r}"
    body = rec.get(key, _MISSING)
    if body is _MISSING:
        return f"{kind} record without its body {key!r}"
    return _body_problem(kind, body)


def _well_formed(rec: dict[str, Any]) -> bool:
    """The common case, fast (the reader runs this on every record): an event or a transition
    exactly as the writer makes it. False means "look closer": the checks below then name the
    problem, or find none."""
    try:
        if not (rec["node"].__class__ is str and rec["n"].__class__ is int
                and rec["mono"].__class__ is int and rec["wall"].__class__ is int):
            return False
        kind = rec["k"]
        if kind == EVENT:
            data = rec["e"]
            shape = _EVENT_SHAPES[data["type"]]
            return tuple(map(type, shape.getter(data))) in shape.accepted
        if kind == TRANSITION:
            body = rec["tr"]
            if tuple(map(type, _TRANSITION_GETTER(body))) not in _TRANSITION_CLASSES:
                return False
            for data in body["actions"]:
                shape = _ACTION_SHAPES[data["type"]]
                if tuple(map(type, shape.getter(data))) not in shape.accepted:
                    return False
            return True
    except (KeyError, TypeError, IndexError):  # not a map, a key missing, an unhashable type
        return False
    return False


def _envelope_problem(rec: dict[str, Any]) -> str:
    missing = [key for key in ("v",) + tuple(name for name, _ in _ENVELOPE) if key not in rec]
    if missing:
        return f"missing {', '.join(missing)}"
    for name, cls in _ENVELOPE:
        if rec[name].__class__ is not cls:
            return f"{name} is a {type(rec[name]).__name__}, not {cls.__name__}"
    return ""


def _item_problem(what: str, data: Any, registry: Mapping[str, type]) -> str:
    """Why ``data`` is not the wire form of a model event or action ("" if it is)."""
    if data.__class__ is not dict:
        return f"{what} is a {type(data).__name__}, not a map"
    try:
        cls = registry.get(data.get("type"))
    except TypeError:  # an unhashable "type"
        cls = None
    if cls is None:
        return f"{what} has unknown type {data.get('type')!r}"
    for name, classes, item, required in _shape(cls).fields:
        value = data.get(name, _MISSING)
        if value is _MISSING:
            if required:
                return f"{what} {cls.type} lacks {name}"
        elif classes is not None and value.__class__ not in classes:
            return f"{what} {cls.type} field {name} is a {type(value).__name__}"
        elif item is not None and any(v.__class__ is not item for v in value):
            return f"{what} {cls.type} field {name} holds a non-{item.__name__}"
    return ""


def _ranges_problem(value: Any) -> bool:
    return value.__class__ is not list or any(
        r.__class__ is not list or len(r) != 2 or any(v.__class__ is not int for v in r) for r in value)


def _transition_problem(body: dict[str, Any]) -> str:
    for name, classes in _TRANSITION:
        if body.get(name, _MISSING).__class__ not in classes:
            return f"transition field {name} is missing or a {type(body.get(name)).__name__}"
    for i, action in enumerate(body["actions"]):
        found = _item_problem(f"action {i}", action, model.ACTION_TYPES)
        if found:
            return f"transition {found}"
    return ""


def _body_problem(kind: str, body: Any) -> str:
    if kind == EVENT:
        return _item_problem("event", body, model.EVENT_TYPES)
    if body.__class__ is not dict:
        return f"{kind} body is a {type(body).__name__}, not a map"
    if kind == TRANSITION:
        return _transition_problem(body)
    if kind == GAP:
        if _ranges_problem(body.get("lost")) or _ranges_problem(body.get("unsure")):
            return "gap ranges are not lists of [first, last]"
        if body.get("reason").__class__ is not str or body.get("errno").__class__ is not str:
            return "gap reason or errno is not a string"
    return ""


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
