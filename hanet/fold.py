"""The one fold of an event log into a machine, shared by start-up, replay and the tests.

Records are taken in order: a ``config`` record sets the parameters (a later one adapts the
machine to them, matching paths by name, exactly as a restart with that configuration does); a
``snapshot`` is the state when no machine exists yet (the top of a rotated file, or after a gap);
an ``event`` is stepped through the machine, which is built from the parameters at the first one.
A ``gap`` (records the writer could not write) drops the machine: the snapshot written after it
restarts the fold. Transitions are the fold's output and change nothing here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import machine as M
from . import model as m


@dataclass
class LogFold:
    """The running fold of one node's log.

    ``factory`` builds machines: ``from_params(params)``, ``from_snapshot(params, snap)``, and
    machines with ``step(event)`` and ``reconfigure(params)`` (default: ``machine.Machine``).
    """
    factory: Any = M.Machine
    on_change: Callable[[str], None] | None = None
    params: Any = None                  # the parameters of the last config record
    machine: Any = None
    events: int = 0                     # events folded
    last_wall: int | None = None        # wall time of the last record (ns)
    changes: list[str] = field(default_factory=list)  # path-list changes met along the way

    def feed(self, rec: dict[str, Any]) -> Any:
        """Fold one record; returns the step of an event record (None for any other kind, and
        for an event met before any configuration).

        Raises ValueError, TypeError, KeyError or AttributeError for a config or snapshot no
        machine can be built from, or an event of the wrong shape: the caller reports it.
        """
        kind = rec.get("k")
        if isinstance(rec.get("wall"), int):
            self.last_wall = rec["wall"]
        if kind == "config":
            self.configure(_mapping(rec.get("cfg")))
        elif kind == "gap":
            self.forget()  # records may be missing: the snapshot the writer put after it restarts the fold
        elif kind == "snapshot" and self.machine is None and self.params is not None:
            self.machine = self.factory.from_snapshot(self.params, _mapping(rec.get("s")))
        elif kind == "event":
            if self.machine is None and self.params is not None:
                self.machine = self.factory.from_params(self.params)
            if self.machine is None:
                return None
            step = self.machine.step(m.event_from_dict(_mapping(rec.get("e"))))
            self.events += 1
            return step
        return None

    def configure(self, params: Any) -> list[str]:
        """Apply new parameters, as a config record or a start with a new configuration does."""
        if self.machine is None:
            self.factory.from_params(params)  # fails here, not at the first event, if unusable
            self.params = params
            return []
        changes = self.machine.reconfigure(params) or []
        self.params = params
        for change in changes:
            self.changes.append(change)
            if self.on_change is not None:
                self.on_change(change)
        return changes

    def forget(self) -> None:
        """Records may be missing from here on (damage, a gap): only a snapshot restarts the fold."""
        self.machine = None


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"record body is {type(value).__name__}, not a map")
    return value


def fold_records(records: Iterable[dict[str, Any]], on_error: Callable[[dict, Exception], None] | None = None,
                 factory: Any = M.Machine) -> LogFold:
    """Fold every record; one that cannot be folded is passed to ``on_error`` and skipped."""
    fold = LogFold(factory=factory)
    for rec in records:
        try:
            fold.feed(rec)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            if on_error is None:
                raise
            on_error(rec, exc)
    return fold
