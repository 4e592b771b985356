"""The one fold of an event log into a machine state, shared by start-up, replay and the tests.

Records are taken in order: a ``config`` record sets the parameters (a later one adapts the state
to them, matching paths by name, exactly as a restart with that configuration does); a
``snapshot`` is the state when nothing has been folded before it (the top of a rotated file);
an ``event`` is stepped through the pure machine. Records of other kinds (transitions, gaps) are
the fold's output or the writer's bookkeeping and change nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import machine as M
from . import model as m


@dataclass
class LogFold:
    """The running fold of one node's log."""
    params: M.Params | None = None
    state: M.State | None = None
    events: int = 0                     # events folded
    last_wall: int | None = None        # wall time of the last record (ns)
    changes: list[str] = field(default_factory=list)  # path-list changes met along the way
    on_change: Callable[[str], None] | None = None

    def feed(self, rec: dict[str, Any]) -> M.Step | None:
        """Fold one record; returns the step of an event record (None for any other kind).

        Raises ValueError or TypeError for a record that cannot be folded (a config, snapshot or
        event of the wrong shape): the caller reports it and goes on with the next.
        """
        kind = rec.get("k")
        if isinstance(rec.get("wall"), int):
            self.last_wall = rec["wall"]
        if kind == "config":
            self.configure(M.Params.from_dict(_mapping(rec.get("cfg"))))
        elif kind == "snapshot" and self.params is not None and self.events == 0:
            self.state = M.State.from_dict(_mapping(rec.get("s")), self.params)
        elif kind == "event" and self.params is not None:
            event = m.event_from_dict(_mapping(rec.get("e")))
            step = M.step(self.params, self.state, event)
            self.state = step.state
            self.events += 1
            return step
        return None

    def configure(self, params: M.Params) -> list[str]:
        """Apply new parameters, as a config record or a start with a new configuration does."""
        if self.state is None:
            self.params, self.state = params, M.initial_state(params)
            return []
        self.state, changes = M.adapt(self.state, self.params, params)
        self.params = params
        for change in changes:
            self.changes.append(change)
            if self.on_change is not None:
                self.on_change(change)
        return changes

    def machine(self) -> M.Machine:
        return M.Machine(self.params, self.state)


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"record body is {type(value).__name__}, not a map")
    return value


def fold_records(records: Iterable[dict[str, Any]], on_error: Callable[[dict, Exception], None] | None = None,
                 on_change: Callable[[str], None] | None = None) -> LogFold:
    """Fold every record; one that cannot be folded is passed to ``on_error`` and skipped."""
    fold = LogFold(on_change=on_change)
    for rec in records:
        try:
            fold.feed(rec)
        except (ValueError, TypeError, KeyError) as exc:
            if on_error is None:
                raise
            on_error(rec, exc)
    return fold
