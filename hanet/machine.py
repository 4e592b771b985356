"""The pure failover state machine (public surface; the table lands here)."""
from __future__ import annotations

from dataclasses import dataclass

from . import model


@dataclass(frozen=True)
class Step:
    """What one event did: the state before and after, why, and the actions to carry out."""
    src: str
    dst: str
    trigger: str          # the event's type string
    reason: str           # the rule that fired, in words
    actions: tuple[model.Action, ...]
    active: int | None    # the path holding the identity after this step

    @property
    def changed(self) -> bool:
        return self.src != self.dst or bool(self.actions)
