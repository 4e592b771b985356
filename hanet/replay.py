"""hanet replay: read event logs back as a timeline, verify them, or summarise them.

    hanet replay LOG [LOG ...]              timeline of several nodes' logs merged by time
    hanet replay --verify LOG [LOG ...]     re-fold the recorded inputs through a fresh machine
    hanet replay --stats [--json] LOG ...   detection latency, failover duration, time per path
    hanet replay --format jsonl LOG ...     one JSON object per record (bytes as hex)

A LOG that has rotated siblings (LOG.1, LOG.2, ...) is read with them, oldest first.
Exit status: 0 ok; 1 verify mismatch; 2 bad usage or a file that cannot be read (missing, a
directory, an I/O error); 3 damage was found unless --allow-damage: bytes that are not an intact
frame, a torn tail, a well-framed record of the wrong shape, or a gap record (the writer could
not keep some records). Each is reported on stderr with its file, byte offset and record
numbers; every intact record is still read. A mismatch (1) outranks damage (3).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, TextIO

from . import machine, model
from .fold import LogFold
from .eventlog import Damage, Entry, open_logs, rotated_set
from .eventlog.reader import OnDamage
from .machine import ALTERNATE_ACTIVE, FAILING_BACK, FAILING_OVER, MONITORING, SUSPECT

EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_DAMAGE = 0, 1, 2, 3

#: States from which a transition into Failing-Over declares a failure.
DETECTING = (MONITORING, SUSPECT, ALTERNATE_ACTIVE)
FAILING = (FAILING_OVER, FAILING_BACK)
SETTLED = (MONITORING, ALTERNATE_ACTIVE)
#: Events that are the first sign of a failure of the path they name.
FIRST_SIGNS = ("heartbeat.suspect", "link.down")
ALL_CLEAR = ("heartbeat.cleared", "heartbeat.recovered", "link.up")
_HIDDEN_FIELDS = ("type", "t_ns", "id")


# --------------------------------------------------------------------------- timeline
def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_value(v) for v in value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str) and (not value or " " in value):
        return repr(value)
    return str(value)


def _fields(item: dict[str, Any]) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in item.items() if k not in _HIDDEN_FIELDS)


def _action(item: dict[str, Any]) -> str:
    args = ",".join(f"{k}={_value(v)}" for k, v in item.items() if k not in _HIDDEN_FIELDS)
    return f"{item.get('type', '?')}({args})"


def describe(rec: dict[str, Any]) -> str:
    """The record's kind and body in one line."""
    kind = rec["k"]
    if kind == "event":
        e = rec.get("e") or {}
        return f"event {e.get('type', '?')} {_fields(e)}".rstrip()
    if kind == "transition":
        tr = rec.get("tr") or {}
        actions = ",".join(_action(a) for a in tr.get("actions", ()))
        return (f"transition {tr.get('src')} -> {tr.get('dst')} [{tr.get('trigger')}] "
                f"active={_value(tr.get('active'))} actions={actions or '-'} "
                f"reason={_value(tr.get('reason', ''))} cause={tr.get('cause')}")
    if kind == "gap":
        g = rec.get("g") or {}
        lost = ",".join(f"{a}-{b}" for a, b in g.get("lost", ())) or "-"
        unsure = ",".join(f"{a}-{b}" for a, b in g.get("unsure", ())) or "-"
        return f"gap lost={lost} unsure={unsure} errno={g.get('errno')} reason={_value(g.get('reason', ''))}"
    body = rec.get({"config": "cfg", "snapshot": "s"}.get(kind, ""), None)
    return f"{kind} {json.dumps(body, sort_keys=True, separators=(',', ':'), default=_json_default)}"


def is_state_change(rec: dict[str, Any]) -> bool:
    tr = rec.get("tr") or {}
    return rec["k"] == "transition" and tr.get("src") != tr.get("dst")


def timeline(entries: Iterable[Entry], out: TextIO, clock: str = "wall", changes_only: bool = False) -> int:
    """One line per record, time relative to the first record; returns the count."""
    t0 = None
    count = 0
    write = out.write
    for entry in entries:
        rec = entry.record
        if t0 is None:
            t0 = rec[clock]
        if changes_only and not is_state_change(rec):
            continue
        write(f"+{(rec[clock] - t0) / 1e6:.3f} ms {rec['node']:<8} {describe(rec)}\n")
        count += 1
    return count


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def jsonl(entries: Iterable[Entry], out: TextIO) -> int:
    """Each record as one JSON object with its file and offset."""
    count = 0
    for entry in entries:
        line = {"file": entry.file, "offset": entry.offset, **entry.record}
        out.write(json.dumps(line, separators=(",", ":"), default=_json_default) + "\n")
        count += 1
    return count


# --------------------------------------------------------------------------- verify
def _where(entry: Entry) -> str:
    rec = entry.record
    return f"{rec['node']} {os.path.basename(entry.file)} @ offset {entry.offset} (n={rec['n']})"


@dataclass(frozen=True)
class Mismatch:
    entry: Entry
    detail: str

    def __str__(self) -> str:
        return f"mismatch at {_where(self.entry)}: {self.detail}"


@dataclass
class VerifyResult:
    events: int = 0          # events folded through a machine
    transitions: int = 0     # transition records matched
    unverified: int = 0      # records before any config/snapshot, or whose cause was not folded
    unwritten: list[str] = field(default_factory=list)  # steps cut off by a restart or the log's end
    mismatch: Mismatch | None = None
    gaps: int = 0            # gap records: the fold restarts at the snapshot after each


@dataclass
class _NodeFold:
    fold: LogFold
    #: cause record number -> (event entry, step) for events folded since the last transition check
    pending: dict[int, tuple[Entry, Any]] = field(default_factory=dict)
    #: Records may be missing (damage, a gap): only a snapshot can restart the fold.
    broken: bool = False

    def forget(self) -> None:
        self.fold.forget()
        self.broken = True
        self.pending.clear()


def _step_diff(tr: dict[str, Any], step) -> str:
    """The first difference between a recorded "tr" body and a replayed Step ("" if none)."""
    for name in ("src", "dst", "trigger", "active"):
        if tr.get(name) != getattr(step, name):
            return f"{name}: recorded {tr.get(name)!r}, replayed {getattr(step, name)!r}"
    recorded = tr.get("actions", [])
    replayed = [model.to_dict(a) for a in step.actions]
    for i, (rec_action, rep_action) in enumerate(zip(recorded, replayed)):
        # A field given to an action after the log was written is not in its record: the record's
        # own fields are compared (a record written now has them all).
        if not isinstance(rec_action, dict) or any(k not in rep_action or rep_action[k] != v
                                                   for k, v in rec_action.items()):
            return f"actions[{i}]: recorded {rec_action}, replayed {rep_action}"
    if len(recorded) != len(replayed):
        return f"actions: recorded {len(recorded)}, replayed {len(replayed)}"
    return ""


def _describe_step(step) -> str:
    return f"{step.src} -> {step.dst} [{step.trigger}]"


class _Unusable(Exception):
    """A config or snapshot record the machine cannot be built from: damage, not a mismatch."""


def verify(entries: Iterable[Entry], machine_factory: Any = None,
           on_damage: OnDamage | None = None, damage_log: list[Damage] | None = None) -> VerifyResult:
    """Fold each node's recorded events through a fresh machine; stop at the first difference.

    A transition record must exist for an event iff the replayed step changed something.
    ``machine_factory`` has ``from_params(params)`` and ``from_snapshot(params, snap)``; its
    machines have ``step(event)`` and ``reconfigure(params)`` (default: hanet.machine.Machine).
    Damage is never a mismatch: damage the reader appended to ``damage_log`` since the last
    record, and a gap record, drop the node's machine (records may be missing there), and its
    fold restarts at the next snapshot. A config or snapshot that no machine can be built from
    is reported to ``on_damage`` and dropped the same way.
    """
    if machine_factory is None:
        machine_factory = machine.Machine
    result = VerifyResult()
    nodes: dict[str, _NodeFold] = {}
    seen = 0
    for entry in entries:
        if damage_log is not None and len(damage_log) > seen:
            for found in damage_log[seen:]:
                if found.node in nodes:
                    nodes[found.node].forget()
            seen = len(damage_log)
        node = entry.record["node"]
        fold = nodes.get(node) or nodes.setdefault(node, _NodeFold(LogFold(factory=machine_factory)))
        try:
            mismatch = _verify_record(fold, entry, machine_factory, result)
        except _Unusable as exc:
            fold.forget()
            if on_damage is not None:
                on_damage(Damage(entry.file, entry.offset, 0, f"bad record: {exc}",
                                 node=entry.record["node"]))
            continue
        # Any failure of the machine on recorded input is a verification failure to report.
        except Exception as exc:  # noqa: BLE001
            mismatch = Mismatch(entry, f"replay failed: {type(exc).__name__}: {exc}")
        if mismatch is not None:
            result.mismatch = mismatch
            return result
    for fold in nodes.values():
        _settle(fold, result, "was not recorded before the log ends")
    return result


def _settle(fold: _NodeFold, result: VerifyResult, why: str) -> None:
    """Steps still waiting for their record when the daemon restarted or the log ended."""
    for event_entry, step in fold.pending.values():
        if step.changed:
            result.unwritten.append(f"{_where(event_entry)}: {_describe_step(step)} {why}")
    fold.pending.clear()


def _verify_record(fold: _NodeFold, entry: Entry, machine_factory: Any,
                   result: VerifyResult) -> Mismatch | None:
    """Fold one record with the shared fold (hanet.fold) and check transitions against it."""
    rec = entry.record
    kind = rec["k"]
    if kind == "config":
        _settle(fold, result, "was not recorded before the daemon restarted")
        try:
            fold.fold.feed(rec)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise _Unusable(f"config the machine cannot use: {type(exc).__name__}: {exc}") from exc
    elif kind == "gap":
        result.gaps += 1
        fold.forget()
    elif kind == "snapshot":
        had = fold.fold.machine
        try:
            fold.fold.feed(rec)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise _Unusable(f"snapshot the machine cannot use: {type(exc).__name__}: {exc}") from exc
        if had is None and fold.fold.machine is not None:
            fold.broken = False
    elif kind == "event":
        for event_entry, step in fold.pending.values():
            if step.changed:
                return Mismatch(event_entry, f"replay made transition {_describe_step(step)} "
                                             f"that the log does not record")
        fold.pending.clear()
        if fold.broken or fold.fold.params is None:
            result.unverified += 1
            return None
        step = fold.fold.feed(rec)
        result.events += 1
        fold.pending[rec["n"]] = (entry, step)
    elif kind == "transition":
        tr = rec.get("tr") or {}
        folded = fold.pending.pop(tr.get("cause"), None)
        if folded is None:
            result.unverified += 1
            return None
        step = folded[1]
        if not step.changed:
            return Mismatch(entry, f"recorded transition {tr.get('src')} -> {tr.get('dst')} "
                                   f"[{tr.get('trigger')}], replay made none")
        detail = _step_diff(tr, step)
        if detail:
            return Mismatch(entry, detail)
        result.transitions += 1
    return None


# --------------------------------------------------------------------------- stats
@dataclass
class NodeStats:
    detections_ns: list[int] = field(default_factory=list)
    failovers_ns: list[int] = field(default_factory=list)
    path_ns: dict[str, int] = field(default_factory=dict)
    # fold state
    active: int | None = None
    active_since: int | None = None
    first_sign: int | None = None
    failing_since: int | None = None
    last_event: tuple[int, int] | None = None  # (record number, t_ns)
    last_t: int | None = None

    def hold(self, t: int, active: int | None) -> None:
        """The identity is on ``active`` from ``t`` on."""
        if self.active_since is not None:
            key = str(self.active)
            self.path_ns[key] = self.path_ns.get(key, 0) + max(0, t - self.active_since)
        self.active, self.active_since = active, t

    def summary(self) -> dict[str, Any]:
        return {"detection": _distribution(self.detections_ns), "failover": _distribution(self.failovers_ns),
                "path_s": {path: ns / 1e9 for path, ns in sorted(self.path_ns.items())}}


def _distribution(values_ns: list[int]) -> dict[str, Any]:
    ms = [v / 1e6 for v in values_ns]
    if not ms:
        return {"count": 0}
    return {"count": len(ms), "median_ms": statistics.median(ms), "min_ms": min(ms),
            "max_ms": max(ms), "all_ms": ms}


def stats(entries: Iterable[Entry]) -> dict[str, NodeStats]:
    """Per node: detection latencies, failover durations and time on each path (all monotonic).

    Detection runs from the first sign of failure on the active path (heartbeat.suspect or
    link.down, or a heartbeat.lost's first miss) to the transition into Failing-Over out of a
    state that was watching; a failover runs from entering Failing-Over/Failing-Back to reaching
    Monitoring/Alternate-Active. A transition's time is its cause event's t_ns.
    """
    nodes: dict[str, NodeStats] = {}
    for entry in entries:
        rec = entry.record
        node = nodes.setdefault(rec["node"], NodeStats())
        kind = rec["k"]
        if kind == "event":
            e = rec.get("e") or {}
            t = e.get("t_ns", rec["mono"])
            node.last_event = (rec["n"], t)
            etype = e.get("type")
            on_active = node.active is not None and e.get("path") == node.active
            if etype == "daemon.started":
                node.hold(t, e.get("holder"))
            elif etype in FIRST_SIGNS and on_active and node.first_sign is None:
                node.first_sign = t
            elif etype == "heartbeat.lost" and on_active and e.get("first_miss_ns"):
                node.first_sign = min(node.first_sign or t, e["first_miss_ns"])
            elif etype in ALL_CLEAR and on_active:
                node.first_sign = None
        elif kind == "transition":
            tr = rec.get("tr") or {}
            cause = node.last_event
            t = cause[1] if cause and cause[0] == tr.get("cause") else rec["mono"]
            src, dst = tr.get("src"), tr.get("dst")
            if src in DETECTING and dst == FAILING_OVER and not str(tr.get("trigger", "")).startswith("operator."):
                node.detections_ns.append(t - (node.first_sign if node.first_sign is not None else t))
            if dst == FAILING_OVER or src == FAILING_OVER:
                node.first_sign = None
            if dst in FAILING and src not in FAILING:
                node.failing_since = t
            elif dst in SETTLED and node.failing_since is not None:
                node.failovers_ns.append(t - node.failing_since)
                node.failing_since = None
            if "active" in tr and (tr["active"] != node.active or node.active_since is None):
                node.hold(t, tr["active"])
        else:
            continue
        node.last_t = t if node.last_t is None else max(node.last_t, t)
    for node in nodes.values():
        if node.active_since is not None and node.last_t is not None:
            node.hold(node.last_t, node.active)
    return nodes


def _format_distribution(name: str, d: dict[str, Any]) -> str:
    if not d["count"]:
        return f"{name}: none"
    return (f"{name}: {d['count']}, median {d['median_ms']:.3f} ms, min {d['min_ms']:.3f} ms, "
            f"max {d['max_ms']:.3f} ms")


def print_stats(nodes: dict[str, NodeStats], out: TextIO, as_json: bool) -> None:
    summary = {name: node.summary() for name, node in sorted(nodes.items())}
    if as_json:
        json.dump(summary, out, indent=2)
        out.write("\n")
        return
    for name, s in summary.items():
        paths = ", ".join(f"path {p} {sec:.3f} s" for p, sec in s["path_s"].items()) or "unknown"
        out.write(f"{name}\n  {_format_distribution('detections', s['detection'])}\n"
                  f"  {_format_distribution('failovers', s['failover'])}\n"
                  f"  time on each path: {paths}\n")


# --------------------------------------------------------------------------- command
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hanet replay", description="Read hanet event logs back.")
    ap.add_argument("logs", nargs="+", metavar="LOG", help="event log files (rotated siblings are included)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true", help="re-fold the inputs; exit 1 on a difference")
    mode.add_argument("--stats", action="store_true", help="detection latency, failover duration, time per path")
    mode.add_argument("--format", choices=("text", "jsonl"), default="text", help="timeline format")
    ap.add_argument("--json", action="store_true", help="--stats as JSON")
    ap.add_argument("--transitions", action="store_true", help="timeline of state changes only")
    ap.add_argument("--clock", choices=("wall", "mono"), default="wall",
                    help="merge nodes by this clock (mono: namespaces of one host)")
    ap.add_argument("--allow-damage", action="store_true", help="damaged records do not change the exit status")
    return ap


def expand(logs: list[str]) -> list[str]:
    """Each LOG with its rotated siblings, oldest first."""
    files = []
    for log in logs:
        files.extend(rotated_set(log) if os.path.exists(f"{log}.1") else [log])
    return files


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage or the help
        return EXIT_USAGE if exc.code else EXIT_OK
    damage: list[Damage] = []

    def report(found: Damage) -> None:
        damage.append(found)
        print(found, file=sys.stderr)

    try:
        entries: Iterator[Entry] = open_logs(expand(args.logs), report, clock=args.clock)
    except OSError as exc:
        print(f"hanet replay: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    status = EXIT_OK
    try:
        if args.verify:
            result = verify(entries, on_damage=report, damage_log=damage)
            for line in result.unwritten:
                print(f"note: {line}")
            if result.mismatch:
                print(f"verify: {result.mismatch}")
                status = EXIT_MISMATCH
            else:
                gaps = f", {result.gaps} gaps" if result.gaps else ""
                print(f"verify: ok, {result.transitions} transitions match over {result.events} events "
                      f"({result.unverified} records unverifiable{gaps})")
        elif args.stats:
            print_stats(stats(entries), sys.stdout, args.json)
        elif args.format == "jsonl":
            jsonl(entries, sys.stdout)
        else:
            timeline(entries, sys.stdout, args.clock, changes_only=args.transitions)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (| head): not an error of the log
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return status
    except OSError as exc:
        print(f"hanet replay: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if status == EXIT_OK and damage and not args.allow_damage:
        status = EXIT_DAMAGE
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
