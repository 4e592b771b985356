"""The pure failover state machine.

``Machine.step(event) -> Step`` folds one timestamped event into a new state and a list of actions.
Nothing here reads a clock, opens a socket or draws a random number: time arrives inside the
event, so feeding a recorded log to a fresh machine reproduces every transition (``hanet replay
--verify``).

Two layers:
- *facts* (per-path health, carrier, damping penalty, timers, the move in progress) are folded
  from every event first, by plain code;
- the *table* (``TABLE``) then decides, one row per (state, input) with its reason, whether the
  state changes and which actions follow. ``transitions`` enforces it: ``auto_transitions=False``
  and unknown triggers raise, so no transition exists that the table does not list, and every
  (state, input) pair ends in an unconditional row, so the machine is total.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from transitions import Machine as _TMachine

from . import model as m
from .config import Config

# --------------------------------------------------------------------------- states
STARTING = "Starting"
MONITORING = "Monitoring"
SUSPECT = "Suspect"
FAILING_OVER = "Failing-Over"
FAILING_BACK = "Failing-Back"
ALTERNATE_ACTIVE = "Alternate-Active"
ALL_PATHS_DOWN = "All-Paths-Down"
STATES = (STARTING, MONITORING, SUSPECT, FAILING_OVER, FAILING_BACK, ALTERNATE_ACTIVE, ALL_PATHS_DOWN)
STABLE = (MONITORING, ALTERNATE_ACTIVE)
ACTIVE = (MONITORING, SUSPECT, ALTERNATE_ACTIVE)  # the identity is in service on one path
MOVING = (FAILING_OVER, FAILING_BACK)

HEALTH_UNKNOWN, HEALTH_UP, HEALTH_SUSPECT, HEALTH_LOST = "unknown", "up", "suspect", "lost"

# Inputs of the table. Several event types fold into one input (see INPUT_OF).
INPUTS = ("started", "path_suspect", "path_cleared", "path_failed", "path_restored",
          "enable_due", "failback_due", "step_done", "step_failed", "address_removed",
          "peer_moved", "op_failover", "op_failback", "op_offline", "op_online", "noted")


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Params:
    """What the machine needs from the configuration; written to the log as a "config" record."""
    paths: tuple[str, ...]
    enable_delay_ns: int = 0
    admin_down_failed: bool = False
    announce_count: int = 3
    carry_mac: bool = True
    carry_routes: bool = True
    identity_mac: str = ""
    coordinate: bool = True
    failback_auto: bool = True
    failback_hold_ns: int = 2_000_000_000
    down_hold_ns: int = 0
    up_hold_ns: int = 0
    damping: bool = True
    damp_penalty: float = 1000.0
    damp_suppress: float = 3000.0
    damp_reuse: float = 750.0
    damp_half_life_ns: int = 15_000_000_000
    damp_max: float = 12000.0
    quality: bool = False
    quality_max_loss_ppm: int = 200_000

    @classmethod
    def from_config(cls, cfg: Config) -> "Params":
        ms = 1_000_000
        d, f = cfg.damping, cfg.failover
        return cls(
            paths=tuple(p.name for p in cfg.paths),
            enable_delay_ns=int(f.enable_delay_ms * ms),
            admin_down_failed=f.admin_down_failed,
            announce_count=f.announce_count,
            carry_mac=cfg.carries("mac"),
            carry_routes=cfg.carries("routes"),
            identity_mac=cfg.identity.mac,
            coordinate=f.coordinate,
            failback_auto=cfg.failback.policy == "auto",
            failback_hold_ns=int(cfg.failback.hold_down_ms * ms),
            down_hold_ns=int(cfg.link.down_hold_ms * ms),
            up_hold_ns=int(cfg.link.up_hold_ms * ms),
            damping=d.enabled, damp_penalty=d.penalty, damp_suppress=d.suppress, damp_reuse=d.reuse,
            damp_half_life_ns=int(d.half_life_ms * ms), damp_max=d.max_penalty,
            quality=cfg.quality.enabled,
            quality_max_loss_ppm=int(cfg.quality.max_loss_percent * 10_000),
        )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["paths"] = list(self.paths)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Params":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["paths"] = tuple(kwargs.get("paths", ()))
        return cls(**kwargs)


# --------------------------------------------------------------------------- facts
@dataclass
class PathFacts:
    health: str = HEALTH_UNKNOWN   # from heartbeats
    carrier: bool = True           # raw carrier bit as last reported
    link_ok: bool = True           # carrier after the down/up holds
    present: bool = True           # the interface exists
    offline: bool = False          # taken out of service by an operator
    lossy: bool = False            # path quality over the threshold
    admin_downed: bool = False     # hanet set it admin-down (failover.admin_down_failed)
    penalty: float = 0.0           # flap-damping figure of merit, as of penalty_t
    penalty_t: int = 0
    damped: bool = False


@dataclass
class Move:
    """The identity move in progress."""
    source: int | None
    target: int
    phase: int = 1                                   # 1: up to configure; 2: enable onwards
    awaiting: list[int] = field(default_factory=list)  # kernel action ids not yet done


@dataclass(frozen=True)
class Step:
    """What one event did: the state before and after, why, and the actions to carry out."""
    src: str
    dst: str
    trigger: str          # the event's type string
    reason: str           # the rule that fired, in words
    actions: tuple[m.Action, ...]
    active: int | None    # the path holding the identity after this step

    @property
    def changed(self) -> bool:
        return self.src != self.dst or bool(self.actions)


@dataclass(frozen=True)
class Row:
    input: str
    sources: tuple[str, ...]
    dest: str | None           # None: stay (an internal transition)
    guard: str | None          # name of a Machine method ``g_*``; None: always
    effect: str | None         # name of a Machine method ``e_*`` that emits actions
    reason: str


def _rows(input: str, sources, *alternatives) -> list[Row]:
    srcs = (sources,) if isinstance(sources, str) else tuple(sources)
    return [Row(input, srcs, *alt) for alt in alternatives]


ANY = STATES
NOT_MOVING = tuple(s for s in STATES if s not in MOVING)

#: The transition table: for each input, rows are tried in order; the first whose guard holds fires.
TABLE: list[Row] = [
    # -- start and restart
    *_rows("started", MOVING,
           (None, None, "e_reissue_move", "restarted mid-move: finish the sequence on the same target")),
    *_rows("started", NOT_MOVING,
           (MONITORING, "g_holder_primary", "e_resume_all", "identity found on the primary: monitor it"),
           (ALTERNATE_ACTIVE, "g_holder_alternate", "e_resume_all", "identity found on an alternate: keep it there"),
           (FAILING_OVER, "g_has_candidate", "e_begin_failover", "identity on no single NIC: install it on the best path"),
           (ALL_PATHS_DOWN, None, None, "identity on no single NIC and no usable path")),
    # -- heartbeats and carrier of the active path
    *_rows("path_suspect", (MONITORING, ALTERNATE_ACTIVE),
           (SUSPECT, "g_on_active", None, "first missed reply on the active path"),
           (None, None, None, "a standby path missed a reply: noted")),
    *_rows("path_suspect", (STARTING, SUSPECT, FAILING_OVER, FAILING_BACK, ALL_PATHS_DOWN),
           (None, None, None, "suspect noted")),
    *_rows("path_cleared", SUSPECT,
           (MONITORING, "g_active_primary_clear", None, "reply arrived: the primary is fine"),
           (ALTERNATE_ACTIVE, "g_active_alternate_clear", None, "reply arrived: the alternate is fine"),
           (None, None, None, "a standby path answered again")),
    *_rows("path_cleared", (STARTING, MONITORING, ALTERNATE_ACTIVE, FAILING_OVER, FAILING_BACK, ALL_PATHS_DOWN),
           (None, None, None, "reply noted")),
    *_rows("path_failed", ACTIVE,
           (FAILING_OVER, "g_active_failed_with_candidate", "e_begin_failover", "the active path failed: move to the best usable path"),
           (ALL_PATHS_DOWN, "g_active_dead", "e_all_down", "the active path failed and no other path is usable"),
           (None, None, "e_cancel_failback_if_gone", "a standby path failed: noted")),
    *_rows("path_failed", MOVING,
           (FAILING_OVER, "g_target_failed_with_candidate", "e_begin_failover", "the target failed mid-move: retarget"),
           (ALL_PATHS_DOWN, "g_on_target", "e_all_down", "the target failed mid-move and nothing else is usable"),
           (None, None, None, "another path failed mid-move: noted")),
    *_rows("path_failed", (STARTING, ALL_PATHS_DOWN), (None, None, None, "failure noted")),
    *_rows("path_restored", SUSPECT,
           (MONITORING, "g_active_primary_clear", None, "the primary recovered"),
           (ALTERNATE_ACTIVE, "g_active_alternate_clear", None, "the alternate recovered"),
           (None, None, None, "a standby path recovered")),
    *_rows("path_restored", ALTERNATE_ACTIVE,
           (None, "g_better_usable_auto", "e_arm_failback", "a better path is usable: hold down before failing back"),
           (None, None, None, "recovery noted")),
    *_rows("path_restored", ALL_PATHS_DOWN,
           (MONITORING, "g_best_is_holder_primary", "e_return_to_holder", "the primary, still holding the identity, is usable again"),
           (ALTERNATE_ACTIVE, "g_best_is_holder_alternate", "e_return_to_holder", "the alternate holding the identity is usable again"),
           (FAILING_OVER, "g_has_candidate", "e_begin_failover", "a path is usable again: restore the identity on it"),
           (None, None, None, "recovery noted; still nothing usable")),
    *_rows("path_restored", (STARTING, MONITORING, FAILING_OVER, FAILING_BACK), (None, None, None, "recovery noted")),
    # -- the move itself
    *_rows("enable_due", MOVING, (None, None, "e_enable_phase", "enable delay over: enable, announce, routes")),
    *_rows("enable_due", NOT_MOVING, (None, None, None, "stale enable timer")),
    *_rows("step_done", MOVING,
           (MONITORING, "g_move_done_on_primary", "e_finish_move", "sequence complete: the identity is on the primary"),
           (ALTERNATE_ACTIVE, "g_move_done", "e_finish_move", "sequence complete: the identity is on an alternate"),
           (None, None, None, "step done")),
    *_rows("step_done", NOT_MOVING, (None, None, None, "step done")),
    *_rows("step_failed", MOVING,
           (FAILING_OVER, "g_move_step_failed_with_candidate", "e_begin_failover", "a step failed: try the next usable path"),
           (ALL_PATHS_DOWN, "g_move_step_failed", "e_all_down", "a step failed and no other path is usable"),
           (None, None, None, "a step outside the move failed: noted")),
    *_rows("step_failed", NOT_MOVING, (None, None, None, "failure of a single step noted")),
    # -- failback
    *_rows("failback_due", ALTERNATE_ACTIVE,
           (FAILING_BACK, "g_better_usable_auto", "e_begin_failback", "hold-down over: fail back to the better path"),
           (None, None, None, "hold-down over but the better path is not usable")),
    *_rows("failback_due", (STARTING, MONITORING, SUSPECT, FAILING_OVER, FAILING_BACK, ALL_PATHS_DOWN),
           (None, None, None, "stale failback timer")),
    # -- changes made around us
    *_rows("address_removed", ACTIVE,
           (None, "g_on_active", "e_restore_addresses", "a carried address was removed by hand: put it back"),
           (None, None, None, "address change on a standby NIC noted")),
    *_rows("address_removed", (STARTING, FAILING_OVER, FAILING_BACK, ALL_PATHS_DOWN),
           (None, None, None, "address change noted")),
    # -- the peer's notice of its own move
    *_rows("peer_moved", ACTIVE,
           (FAILING_OVER, "g_peer_target_usable", "e_begin_follow", "the peer moved to a path we see usable: follow"),
           (None, None, None, "peer notice ignored: same path, coordination off, or our evidence contradicts it")),
    *_rows("peer_moved", ALL_PATHS_DOWN,
           (FAILING_OVER, "g_peer_target_usable", "e_begin_follow", "the peer moved to a path we see usable: follow"),
           (None, None, None, "peer notice ignored")),
    *_rows("peer_moved", (STARTING, FAILING_OVER, FAILING_BACK), (None, None, None, "peer notice ignored: busy")),
    # -- operators
    *_rows("op_failover", ACTIVE + (ALL_PATHS_DOWN,),
           (FAILING_OVER, "g_op_target_ok", "e_begin_operator_move", "operator failover"),
           (None, None, None, "operator failover refused: no usable target (use force)")),
    *_rows("op_failover", (STARTING,) + MOVING, (None, None, None, "operator failover refused: busy")),
    *_rows("op_failback", (ALTERNATE_ACTIVE, SUSPECT, ALL_PATHS_DOWN),
           (FAILING_BACK, "g_op_failback_ok", "e_begin_failback", "operator failback"),
           (None, None, None, "operator failback refused: primary not usable or already active (use force)")),
    *_rows("op_failback", (STARTING, MONITORING) + MOVING, (None, None, None, "operator failback refused: not on an alternate, or busy")),
    *_rows("op_offline", ACTIVE,
           (FAILING_OVER, "g_offline_active_with_candidate", "e_begin_failover", "operator took the active NIC offline: move"),
           (ALL_PATHS_DOWN, "g_offline_active_forced", "e_all_down", "operator forced the last usable NIC offline"),
           (None, "g_on_active", "e_refuse_offline", "offline refused: it is the last usable path (use force)"),
           (None, None, "e_cancel_failback_if_gone", "standby NIC taken offline")),
    *_rows("op_offline", (STARTING, ALL_PATHS_DOWN) + MOVING, (None, None, None, "NIC marked offline")),
    *_rows("op_online", ANY,
           (None, "g_online_needs_plumb", "e_plumb_online", "NIC back online: bring it up (hanet set it down)")),
    *_rows("op_online", ALTERNATE_ACTIVE,
           (None, "g_better_usable_auto", "e_arm_failback", "NIC back online and better: hold down before failing back"),
           (None, None, None, "NIC back online")),
    *_rows("op_online", ALL_PATHS_DOWN,
           (FAILING_OVER, "g_has_candidate", "e_begin_failover", "NIC back online: restore the identity on it"),
           (None, None, None, "NIC back online; still nothing usable")),
    *_rows("op_online", (STARTING, MONITORING, SUSPECT) + MOVING, (None, None, None, "NIC back online")),
    *_rows("noted", ANY, (None, None, None, "noted")),
]

#: Which table input each event becomes (before facts decide, e.g. a timer's name).
INPUT_OF: dict[str, str] = {
    m.DaemonStarted.type: "started",
    m.HeartbeatSuspect.type: "path_suspect",
    m.HeartbeatCleared.type: "path_cleared",
    m.HeartbeatLost.type: "path_failed",
    m.HeartbeatRecovered.type: "path_restored",
    m.LinkDown.type: "path_failed",
    m.LinkUp.type: "path_restored",
    m.LinkGone.type: "path_failed",
    m.LinkReturned.type: "path_restored",
    m.AddressRemoved.type: "address_removed",
    m.PathQuality.type: "noted",  # becomes path_failed / path_restored when it crosses the threshold
    m.PeerNotice.type: "peer_moved",
    m.PathCrossed.type: "noted",
    m.SequenceLow.type: "noted",
    m.TimerFired.type: "noted",   # refined by the timer's name
    m.ActionDone.type: "step_done",
    m.ActionFailed.type: "step_failed",
    m.OperatorFailover.type: "op_failover",
    m.OperatorFailback.type: "op_failback",
    m.OperatorOffline.type: "op_offline",
    m.OperatorOnline.type: "op_online",
}

TIMER_ENABLE = "enable"
TIMER_FAILBACK = "failback"


def _timer(kind: str, path: int) -> str:
    return f"{kind}:{path}"


class Machine:
    """One node's failover logic. Not thread-safe; one event at a time."""

    def __init__(self, params: Params):
        self.params = params
        self.n = len(params.paths)
        self.facts = [PathFacts() for _ in range(self.n)]
        self.active: int | None = None
        self.move: Move | None = None
        self.hw_macs: tuple[str, ...] = ()
        self.timers: dict[str, int] = {}
        self.paused: set[int] = set()
        self.next_action_id = 1
        self.now = 0
        self._actions: list[m.Action] = []
        self._fired: Row | None = None
        self._event: m.Event | None = None
        self._src = STARTING
        self._tm = _TMachine(model=self, states=list(STATES), initial=STARTING, auto_transitions=False,
                             ignore_invalid_triggers=False, model_attribute="state")
        for row in TABLE:
            self._tm.add_transition(row.input, list(row.sources), row.dest,
                                    conditions=[getattr(self, row.guard)] if row.guard else [],
                                    after=[self._fire_callback(row)])

    # -- construction from the log
    @classmethod
    def from_params(cls, params: dict[str, Any] | Params) -> "Machine":
        return cls(params if isinstance(params, Params) else Params.from_dict(params))

    @classmethod
    def from_snapshot(cls, params: dict[str, Any] | Params, snap: dict[str, Any]) -> "Machine":
        mach = cls.from_params(params)
        mach.restore(snap)
        return mach

    def reconfigure(self, params: dict[str, Any] | Params) -> None:
        """New parameters (a restart or reload) keep the folded state."""
        self.params = params if isinstance(params, Params) else Params.from_dict(params)
        if len(self.params.paths) != self.n:
            raise ValueError(f"path count changed from {self.n} to {len(self.params.paths)}")

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state, "active": self.active, "now": self.now,
            "next_action_id": self.next_action_id, "hw_macs": list(self.hw_macs),
            "timers": dict(self.timers), "paused": sorted(self.paused),
            "move": dataclasses.asdict(self.move) if self.move else None,
            "facts": [dataclasses.asdict(f) for f in self.facts],
        }

    def restore(self, snap: dict[str, Any]) -> None:
        self.state = snap["state"]
        self.active = snap["active"]
        self.now = snap["now"]
        self.next_action_id = snap["next_action_id"]
        self.hw_macs = tuple(snap["hw_macs"])
        self.timers = dict(snap["timers"])
        self.paused = set(snap["paused"])
        self.move = Move(**snap["move"]) if snap["move"] else None
        self.facts = [PathFacts(**f) for f in snap["facts"]]

    # -- the fold
    def step(self, event: m.Event) -> Step:
        src = self._src = self.state
        self._actions, self._fired, self._event = [], None, event
        self.now = max(self.now, event.t_ns)
        inp = self._fold_facts(event)
        self.trigger(inp, event)
        row = self._fired
        assert row is not None, f"no row fired for {inp} in {src}"  # the table is total
        return Step(src=src, dst=self.state, trigger=event.type, reason=row.reason,
                    actions=tuple(self._actions), active=self.active)

    def _fire_callback(self, row: Row) -> Callable:
        def fire(event: m.Event) -> None:
            self._fired = row
            if row.effect:
                getattr(self, row.effect)()
        return fire

    # -- facts: folded from every event before the table decides
    def _fold_facts(self, ev: m.Event) -> str:
        inp = INPUT_OF[ev.type]
        path = getattr(ev, "path", None)
        f = self.facts[path] if isinstance(path, int) and 0 <= path < self.n else None
        if path is not None and f is None and not isinstance(ev, (m.OperatorFailover,)):
            return "noted"  # a path index this configuration does not have
        if isinstance(ev, m.DaemonStarted):
            self._fold_started(ev)
        elif isinstance(ev, m.HeartbeatSuspect):
            f.health = HEALTH_SUSPECT if f.health != HEALTH_LOST else HEALTH_LOST
        elif isinstance(ev, m.HeartbeatCleared):
            f.health = HEALTH_UP
        elif isinstance(ev, m.HeartbeatLost):
            was_usable = self.usable(path)
            f.health = HEALTH_LOST
            self._penalise(path, was_usable)
        elif isinstance(ev, m.HeartbeatRecovered):
            f.health = HEALTH_UP
        elif isinstance(ev, m.LinkDown):
            return self._fold_carrier(path, False)
        elif isinstance(ev, m.LinkUp):
            return self._fold_carrier(path, True)
        elif isinstance(ev, m.LinkGone):
            was_usable = self.usable(path)
            f.present = False
            self._penalise(path, was_usable)
        elif isinstance(ev, m.LinkReturned):
            f.present = True
            self._emit(m.RebindProbe, path=path)
        elif isinstance(ev, m.PathQuality):
            return self._fold_quality(path, ev)
        elif isinstance(ev, m.TimerFired):
            return self._fold_timer(ev.name)
        elif isinstance(ev, (m.ActionDone, m.ActionFailed)):
            if self.move is None or ev.action_id not in self.move.awaiting:
                return "noted"
            if isinstance(ev, m.ActionDone):
                self.move.awaiting.remove(ev.action_id)
        elif isinstance(ev, m.OperatorOffline):
            f.offline = True
        elif isinstance(ev, m.OperatorOnline):
            f.offline = False
        elif isinstance(ev, m.PeerNotice):
            if not 0 <= ev.active < self.n:
                return "noted"
        elif isinstance(ev, m.OperatorFailover):
            if ev.path is not None and not 0 <= ev.path < self.n:
                return "noted"
        return inp

    def _fold_started(self, ev: m.DaemonStarted) -> None:
        if not self.hw_macs and len(ev.macs) == self.n:
            self.hw_macs = tuple(ev.macs)
        for i, f in enumerate(self.facts):
            f.health = HEALTH_UNKNOWN
            if i < len(ev.carrier):
                f.carrier = f.link_ok = bool(ev.carrier[i])
            f.present = True
        self.timers.clear()
        self.paused.clear()
        if self.state in MOVING:
            return
        self.active = ev.holder

    def _fold_carrier(self, path: int, up: bool) -> str:
        f = self.facts[path]
        if f.carrier == up:
            return "noted"
        f.carrier = up
        hold = self.params.up_hold_ns if up else self.params.down_hold_ns
        kind, other = ("linkup", "linkdown") if up else ("linkdown", "linkup")
        self._cancel(_timer(other, path))
        if f.link_ok == up:
            return "noted"  # a blip shorter than the hold
        if hold > 0:
            self._start(_timer(kind, path), self.now + hold)
            return "path_suspect" if not up else "noted"
        return self._apply_link(path, up)

    def _apply_link(self, path: int, up: bool) -> str:
        f = self.facts[path]
        was_usable = self.usable(path)
        f.link_ok = up
        if up:
            return "path_restored"
        self._penalise(path, was_usable)
        return "path_failed"

    def _fold_quality(self, path: int, ev: m.PathQuality) -> str:
        if not self.params.quality:
            return "noted"
        f = self.facts[path]
        lossy = ev.loss_ppm > self.params.quality_max_loss_ppm
        if lossy == f.lossy:
            return "noted"
        f.lossy = lossy
        if not lossy:
            return "path_restored"
        # A lossy active path is left only for a clean one; lossy is never "down".
        return "path_failed" if path == self.active and self.candidates(path) else "noted"

    def _fold_timer(self, name: str) -> str:
        if self.timers.get(name) is None:
            return "noted"  # cancelled or replaced: stale
        del self.timers[name]
        if name == TIMER_ENABLE:
            return "enable_due"
        if name == TIMER_FAILBACK:
            return "failback_due"
        kind, _, idx = name.partition(":")
        path = int(idx)
        if kind == "linkdown" and not self.facts[path].carrier:
            return self._apply_link(path, False)
        if kind == "linkup" and self.facts[path].carrier:
            return self._apply_link(path, True)
        if kind == "reuse":
            return self._refresh_damping(path)
        return "noted"

    # -- flap damping: a penalty that halves every half-life, in the manner of route-flap damping
    def _decayed(self, path: int) -> float:
        f = self.facts[path]
        dt = max(0, self.now - f.penalty_t)
        return f.penalty * 0.5 ** (dt / self.params.damp_half_life_ns)

    def _penalise(self, path: int, was_usable: bool) -> None:
        """Count a failure of a path that was usable (a repeated report of one outage counts once)."""
        if not self.params.damping or not was_usable:
            return
        f = self.facts[path]
        f.penalty = min(self.params.damp_max, self._decayed(path) + self.params.damp_penalty)
        f.penalty_t = self.now
        if f.penalty >= self.params.damp_suppress and not f.damped:
            f.damped = True
        if f.damped:
            self._arm_reuse(path)

    def _arm_reuse(self, path: int) -> None:
        f = self.facts[path]
        halvings = math.log2(f.penalty / self.params.damp_reuse) if f.penalty > self.params.damp_reuse else 0.0
        self._start(_timer("reuse", path), f.penalty_t + int(halvings * self.params.damp_half_life_ns) + 1)

    def _refresh_damping(self, path: int) -> str:
        f = self.facts[path]
        if f.damped and self._decayed(path) < self.params.damp_reuse:
            f.damped = False
            return "path_restored"
        if f.damped:
            self._arm_reuse(path)
        return "noted"

    # -- derived facts
    def usable(self, path: int) -> bool:
        """Alive and allowed: present, carrier, heartbeats not lost, not offline, not damped."""
        f = self.facts[path]
        return f.present and f.link_ok and not f.offline and not f.damped and f.health != HEALTH_LOST

    def candidates(self, exclude: int | None = None, heard: bool = True) -> list[int]:
        """Usable paths of clean quality, in priority order.

        A move goes only to a path whose heartbeats are answered (``heard``), so a node whose peer
        is absent does not shuffle its identity around; only installing the identity at start,
        where it is on no NIC, may pick a path not yet heard, best-heard first.
        """
        paths = [p for p in range(self.n) if p != exclude and self.usable(p) and not self.facts[p].lossy
                 and (not heard or self.facts[p].health == HEALTH_UP)]
        return sorted(paths, key=lambda p: (self.facts[p].health != HEALTH_UP, p))

    def _better_path(self) -> int | None:
        if self.active is None:
            return None
        better = [p for p in range(self.active) if self.usable(p) and self.facts[p].health == HEALTH_UP]
        return better[0] if better else None

    def _failover_target(self) -> int | None:
        """Where a failover started from the current state would go: the best candidate other than
        the path being left (the target of a move, or the active path); from all-paths-down or a
        restart, any usable path, the last holder included."""
        if self._src in MOVING:
            exclude = self.move.target
        elif self._src in (ALL_PATHS_DOWN, STARTING) or isinstance(self._event, m.DaemonStarted):
            exclude = None
        else:
            exclude = self.active
        best = self.candidates(exclude, heard=not isinstance(self._event, m.DaemonStarted))
        return best[0] if best else None

    def _path_of(self) -> int | None:
        return getattr(self._event, "path", None)

    # -- guards (g_*): read facts and the current event, change nothing
    def g_holder_primary(self, ev) -> bool:
        return ev.holder == 0

    def g_holder_alternate(self, ev) -> bool:
        return ev.holder is not None and 0 < ev.holder < self.n

    def g_has_candidate(self, ev) -> bool:
        return self._failover_target() is not None

    def g_best_is_holder_primary(self, ev) -> bool:
        return self.active == 0 and self._failover_target() == 0

    def g_best_is_holder_alternate(self, ev) -> bool:
        return self.active not in (None, 0) and self._failover_target() == self.active

    def g_online_needs_plumb(self, ev) -> bool:
        return self.facts[ev.path].admin_downed

    def g_on_active(self, ev) -> bool:
        return self._path_of() == self.active

    def g_active_dead(self, ev) -> bool:
        return self.g_on_active(ev) and not self.usable(self.active)

    def g_on_target(self, ev) -> bool:
        return self.move is not None and self._path_of() == self.move.target

    def g_active_primary_clear(self, ev) -> bool:
        return self.g_on_active(ev) and self.active == 0 and self.usable(0)

    def g_active_alternate_clear(self, ev) -> bool:
        return self.g_on_active(ev) and self.active not in (None, 0) and self.usable(self.active)

    def g_active_failed_with_candidate(self, ev) -> bool:
        leave = not self.usable(self.active) or self.facts[self.active].lossy
        return self.g_on_active(ev) and leave and self._failover_target() is not None

    def g_target_failed_with_candidate(self, ev) -> bool:
        return self.g_on_target(ev) and self._failover_target() is not None

    def g_better_usable_auto(self, ev) -> bool:
        return self.params.failback_auto and self._better_path() is not None

    def g_move_done(self, ev) -> bool:
        return self.move is not None and self.move.phase == 2 and not self.move.awaiting

    def g_move_done_on_primary(self, ev) -> bool:
        return self.g_move_done(ev) and self.move.target == 0

    def g_move_step_failed(self, ev) -> bool:
        return isinstance(ev, m.ActionFailed)

    def g_move_step_failed_with_candidate(self, ev) -> bool:
        return self.g_move_step_failed(ev) and self._failover_target() is not None

    def g_peer_target_usable(self, ev) -> bool:
        return (self.params.coordinate and ev.active != self.active and self.usable(ev.active))

    def g_op_target_ok(self, ev) -> bool:
        return self._operator_target(ev) is not None

    def g_op_failback_ok(self, ev) -> bool:
        if self.active == 0 and self._src != ALL_PATHS_DOWN:
            return False
        return self.usable(0) or (ev.force and self.facts[0].present)

    def g_offline_active_with_candidate(self, ev) -> bool:
        return self.g_on_active(ev) and self._failover_target() is not None

    def g_offline_active_forced(self, ev) -> bool:
        return self.g_on_active(ev) and ev.force

    def _operator_target(self, ev: m.OperatorFailover) -> int | None:
        if ev.path is not None:
            f = self.facts[ev.path]
            if ev.path == self.active and self._src != ALL_PATHS_DOWN:
                return None
            return ev.path if self.usable(ev.path) or (ev.force and f.present) else None
        others = self.candidates(self.active)
        return others[0] if others else None

    # -- effects (e_*): emit actions; the only place actions are made
    def _emit(self, cls: type[m.Action], **fields) -> m.Action:
        act = cls(id=self.next_action_id, **fields)
        self.next_action_id += 1
        self._actions.append(act)
        return act

    def _start(self, name: str, deadline_ns: int) -> None:
        self.timers[name] = deadline_ns
        self._emit(m.StartTimer, name=name, deadline_ns=deadline_ns)

    def _cancel(self, name: str) -> None:
        if self.timers.pop(name, None) is not None:
            self._emit(m.CancelTimer, name=name)

    def _mac_for(self, path: int, holder: int) -> str:
        """MAC of ``path`` while ``holder`` holds the identity: a swap, so no two NICs share one."""
        if not self.params.carry_mac or len(self.hw_macs) != self.n:
            return ""
        identity = self.params.identity_mac or self.hw_macs[0]
        if path == holder:
            return identity
        if path == 0 and not self.params.identity_mac:
            return self.hw_macs[holder]  # the primary lends its MAC and takes the holder's own
        return self.hw_macs[path]

    def _begin_move(self, target: int) -> None:
        source = self.active
        self._cancel(TIMER_FAILBACK)
        self._cancel(TIMER_ENABLE)
        self.move = Move(source=source, target=target)
        self.active = target
        kernel: list[m.Action] = []
        if source is not None and source != target:
            self._emit(m.PauseMonitoring, path=source)
            self.paused.add(source)
        for p in range(self.n):
            if p != target:
                admin_down = self.params.admin_down_failed and p == source and not self.usable(p)
                if admin_down:
                    # A down NIC cannot be probed: it stays out of service until an operator
                    # brings it back with `hanet online`.
                    self.facts[p].admin_downed = self.facts[p].offline = True
                kernel.append(self._emit(m.DisableNic, path=p, admin_down=admin_down,
                                         mac=self._mac_for(p, target)))
        kernel.append(self._emit(m.PlumbNic, path=target))
        kernel.append(self._emit(m.ConfigureNic, path=target, from_path=source, mac=self._mac_for(target, target)))
        self.move.awaiting = [a.id for a in kernel]
        if self.params.enable_delay_ns > 0:
            self._start(TIMER_ENABLE, self.now + self.params.enable_delay_ns)
        else:
            self.e_enable_phase()

    def e_enable_phase(self) -> None:
        mv = self.move
        mv.phase = 2
        kernel = [self._emit(m.EnableNic, path=mv.target),
                  self._emit(m.Announce, path=mv.target, count=self.params.announce_count)]
        if self.params.carry_routes:
            kernel.append(self._emit(m.MoveRoutes, path=mv.target))
        mv.awaiting.extend(a.id for a in kernel)

    def e_finish_move(self) -> None:
        target = self.move.target
        for p in sorted(self.paused):
            self._emit(m.ResumeMonitoring, path=p)
        self.paused.clear()
        if self.params.coordinate:
            self._emit(m.SendNotice, path=target, active=target)
        self.move = None
        if self.state == ALTERNATE_ACTIVE and self.g_better_usable_auto(None):
            self.e_arm_failback()

    def e_begin_failover(self) -> None:
        self._begin_move(self._failover_target())

    def e_begin_follow(self) -> None:
        self._begin_move(self._event.active)

    def e_begin_operator_move(self) -> None:
        self._begin_move(self._operator_target(self._event))

    def e_begin_failback(self) -> None:
        target = self._better_path() if not isinstance(self._event, m.OperatorFailback) else 0
        self._begin_move(target)

    def e_reissue_move(self) -> None:
        self._begin_move(self.move.target)
        self.move.source = None

    def e_all_down(self) -> None:
        self.move = None
        self._cancel(TIMER_FAILBACK)
        self._cancel(TIMER_ENABLE)

    def e_arm_failback(self) -> None:
        if TIMER_FAILBACK not in self.timers:
            self._start(TIMER_FAILBACK, self.now + self.params.failback_hold_ns)

    def e_cancel_failback_if_gone(self) -> None:
        if TIMER_FAILBACK in self.timers and self._better_path() is None:
            self._cancel(TIMER_FAILBACK)

    def e_resume_all(self) -> None:
        for p in range(self.n):
            self._emit(m.ResumeMonitoring, path=p)

    def e_return_to_holder(self) -> None:
        """Back from all-paths-down on the NIC that kept the identity: nothing moves, but the
        addresses are made sure of and announced, and the peer told."""
        self._emit(m.EnableNic, path=self.active)
        self._emit(m.Announce, path=self.active, count=self.params.announce_count)
        for p in sorted(self.paused):
            self._emit(m.ResumeMonitoring, path=p)
        self.paused.clear()
        if self.params.coordinate:
            self._emit(m.SendNotice, path=self.active, active=self.active)

    def e_plumb_online(self) -> None:
        self.facts[self._event.path].admin_downed = False
        self._emit(m.PlumbNic, path=self._event.path)

    def e_refuse_offline(self) -> None:
        self.facts[self._event.path].offline = False  # it stays in service

    def e_restore_addresses(self) -> None:
        self._emit(m.EnableNic, path=self.active)
        self._emit(m.Announce, path=self.active, count=self.params.announce_count)


def planned_move(params: Params, own_macs: tuple[str, ...], source: int, target: int) -> tuple[m.Action, ...]:
    """The kernel actions this machine issues to move the identity from ``source`` to ``target``
    with every path healthy, for tools and tests that drive the executor directly."""
    mach = Machine(dataclasses.replace(params, enable_delay_ns=0))
    mach.step(m.DaemonStarted(t_ns=0, holder=source, carrier=(True,) * mach.n, macs=tuple(own_macs)))
    for path in range(mach.n):
        mach.step(m.HeartbeatRecovered(t_ns=0, path=path))
    step = mach.step(m.OperatorFailover(t_ns=0, path=target, force=True))
    return tuple(a for a in step.actions if isinstance(a, m.KERNEL_ACTIONS))


def check_table_total() -> list[tuple[str, str]]:
    """(state, input) pairs with no unconditional row: must be empty for the machine to be total."""
    missing = []
    for state in STATES:
        for inp in INPUTS:
            rows = [r for r in TABLE if r.input == inp and state in r.sources]
            if not rows or rows[-1].guard is not None:
                missing.append((state, inp))
    return missing


def render_table_markdown() -> str:
    """The table as Markdown, for the README (a test checks the README holds exactly this)."""
    lines = ["| state | input | guard | next state | actions | reason |", "|---|---|---|---|---|---|"]
    for row in TABLE:
        srcs = ", ".join(row.sources) if set(row.sources) != set(STATES) else "any"
        guard = row.guard[2:].replace("_", " ") if row.guard else "otherwise"
        effect = row.effect[2:].replace("_", " ") if row.effect else ""
        lines.append(f"| {srcs} | {row.input} | {guard} | {row.dest or '(stay)'} | {effect} | {row.reason} |")
    events = {}
    for etype, inp in INPUT_OF.items():
        events.setdefault(inp, []).append(etype)
    lines += ["", "| input | from events |", "|---|---|"]
    for inp in INPUTS:
        lines.append(f"| {inp} | {', '.join(sorted(events.get(inp, []))) or '(derived from facts)'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_table_markdown())  # README's "State machine" section is this output
