"""The pure failover state machine.

``step(params, state, event) -> Step`` folds one timestamped event into a new frozen ``State`` and
a list of actions. Nothing here reads a clock, opens a socket or draws a random number: time
arrives inside the event, so feeding a recorded log to a fresh state reproduces every transition
(``hanet replay --verify``), and ``hanet.fold`` is the one fold of a log that start-up, replay and
the tests share. ``Machine`` is a small holder of the current state for the shell.

Two layers:
- *facts* (per-path health, carrier, damping penalty, timers, the move in progress) are folded
  from every event first, by plain code;
- the *table* (``TABLE``) then decides, one row per (state, input) with its reason, whether the
  state changes and which actions follow. ``transitions`` enforces it: ``auto_transitions=False``
  and unknown triggers raise, so no transition exists that the table does not list, and every
  (state, input) pair ends in an unconditional row, so the machine is total.

What can be derived is derived, so a restart cannot lose it: a path is damped while its penalty,
decayed to the state's time, has not fallen below ``reuse`` since it crossed ``suppress``; a move
is in progress exactly in the moving states; timers are re-armed from the state at every start.

Invariants (tests/unit/test_machine_props.py checks them on random runs):
- I1: while any path is usable, the identity is on exactly one NIC; it is never removed from the
  last place it works (a move starts only towards a path heard in this run).
- I2: no two NICs share a MAC: the move's MAC layout is a permutation that the shell applies
  through temporary locally administered MACs (``ConfigureNic.layout``).
- I3: the two nodes settle on one path: a peer's notice is followed onto any path alive here
  (damping and quality are preferences that yield to agreement); refused only when the path is
  not alive here, which is logged and answered with our own notice. Notices that crossed (each
  sent before its sender had acted on the other's latest) resolve to the lower path index on both nodes,
  however late they arrive, so the nodes never chase each other round.
- I4: every moving state has a bounded exit: a move deadline retries the move, then gives it up.
- The peer is not a path: paths that all fail within one detection time mean the peer (or its
  daemon) is gone, and carry no damping penalty.
"""
from __future__ import annotations

import dataclasses
import functools
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
HEARD = (HEALTH_UP, HEALTH_SUSPECT)  # the peer answered on this path in this run

# Inputs of the table. Several event types fold into one input (see INPUT_OF).
INPUTS = ("started", "path_suspect", "path_cleared", "path_failed", "path_restored",
          "enable_due", "failback_due", "move_expired", "answer_due", "step_done", "step_failed", "address_removed",
          "peer_moved", "op_failover", "op_failback", "op_offline", "op_online", "noted")

#: How many times a move that passed its deadline is issued again before it is given up.
MOVE_ATTEMPTS = 3


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
    #: One detection time: failures of every path within it are the peer gone, not path faults.
    peer_window_ns: int = 40_000_000
    #: A move not complete this long after it (re)started is issued again, then given up.
    move_timeout_ns: int = 5_000_000_000

    @classmethod
    def from_config(cls, cfg: Config) -> "Params":
        ms = 1_000_000
        d, f, hb = cfg.damping, cfg.failover, cfg.heartbeat
        detection_ms = hb.interval_ms * (hb.multiplier + 1) + (hb.reply_timeout_ms or hb.interval_ms)
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
            peer_window_ns=int(detection_ms * ms),
            move_timeout_ns=int((f.enable_delay_ms + f.move_timeout_ms) * ms),
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


# --------------------------------------------------------------------------- the frozen state
@dataclass(frozen=True)
class PathFacts:
    name: str = ""
    health: str = HEALTH_UNKNOWN   # from heartbeats, in this run
    carrier: bool = True           # raw carrier bit as last reported
    link_ok: bool = True           # carrier after the down/up holds
    present: bool = True           # the interface exists
    offline: bool = False          # taken out of service by an operator
    lossy: bool = False            # path quality over the threshold
    admin_downed: bool = False     # hanet set it admin-down (failover.admin_down_failed)
    hw_mac: str = ""               # the NIC's own MAC, learned once
    penalty: float = 0.0           # flap-damping figure of merit, as of penalty_t
    penalty_t: int = 0
    suppressed: bool = False       # crossed damp_suppress and not yet decayed below damp_reuse
    strike_t: int | None = None    # a failure waiting for the peer-or-path verdict


@dataclass(frozen=True)
class Move:
    """The identity move in progress (only ever set in a moving state)."""
    source: int | None
    target: int
    phase: int = 1                       # 1: up to configure; 2: enable onwards
    awaiting: tuple[tuple[int, int], ...] = ()  # (action id, path) of kernel actions not yet done
    attempt: int = 1
    by: str = "self"                     # "self", "peer" or "operator": who decided it
    skip: tuple[int, ...] = ()           # NICs left as they are: clearing them failed


@dataclass(frozen=True)
class State:
    name: str = STARTING
    active: int | None = None
    move: Move | None = None
    paths: tuple[PathFacts, ...] = ()
    timers: tuple[tuple[str, int], ...] = ()   # (name, deadline_ns), sorted by name
    paused: tuple[int, ...] = ()
    next_action_id: int = 1
    now: int = 0
    notice_t: int | None = None       # when this node last answered a disagreement
    mac_holder: int | None = None     # the holder whose MAC layout was last put in place
    peer_active: int | None = None    # where the peer last said its identity is
    peer_notice: int = 0              # id of the peer's newest notice acted on, echoed in ours

    def timer(self, name: str) -> int | None:
        return dict(self.timers).get(name)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["paths"] = [dataclasses.asdict(p) for p in self.paths]
        out["timers"] = [list(t) for t in self.timers]
        out["paused"] = list(self.paused)
        if self.move is not None:
            out["move"]["awaiting"] = [list(a) for a in self.move.awaiting]
            out["move"]["skip"] = list(self.move.skip)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], params: Params) -> "State":
        """A snapshot back into a State. Missing or unknown keys take defaults: a snapshot of an
        older or newer version still restores what it can."""
        names = list(params.paths)
        raw_paths = data.get("paths") or data.get("facts") or []
        paths = []
        for i, raw in enumerate(raw_paths):
            known = _known(PathFacts, raw)
            known.setdefault("name", names[i] if i < len(names) else f"path{i}")
            paths.append(PathFacts(**known))
        if not any(isinstance(raw, dict) and "name" in raw for raw in raw_paths):
            # An older snapshot knows its paths by index only: the ones it lacks start afresh.
            paths += [PathFacts(name=n) for n in names[len(paths):]]
        hw = data.get("hw_macs") or []
        paths = [dataclasses.replace(p, hw_mac=p.hw_mac or (hw[i] if i < len(hw) else ""))
                 for i, p in enumerate(paths)]
        move = data.get("move")
        if isinstance(move, dict) and "target" in move:
            known = _known(Move, move)
            known["awaiting"] = tuple(tuple(a) for a in known.get("awaiting", ()) if isinstance(a, (list, tuple)))
            known["skip"] = tuple(known.get("skip", ()))
            move = Move(**known)
        else:
            move = None
        timers = data.get("timers") or {}
        timers = timers.items() if isinstance(timers, dict) else timers
        state = cls(name=data.get("name") or data.get("state") or STARTING, active=data.get("active"),
                    move=move, paths=tuple(paths), timers=tuple(sorted((str(k), int(v)) for k, v in timers)),
                    paused=tuple(data.get("paused") or ()), next_action_id=int(data.get("next_action_id", 1)),
                    now=int(data.get("now", 0)), notice_t=data.get("notice_t"),
                    mac_holder=data.get("mac_holder"), peer_active=data.get("peer_active"),
                    peer_notice=int(data.get("peer_notice", 0)))
        if state.name not in STATES:
            state = dataclasses.replace(state, name=STARTING)
        return adapt(state, Params(paths=tuple(p.name for p in state.paths)), params)[0]


def _known(cls: type, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in raw.items() if k in names}


def initial_state(params: Params) -> State:
    return State(paths=tuple(PathFacts(name=n) for n in params.paths))


def adapt(state: State, old: Params, new: Params) -> tuple[State, list[str]]:
    """The state under a new configuration: paths matched by name, so paths added, removed or
    reordered keep what is known of each. Returns the state and what changed, in words."""
    if tuple(p.name for p in state.paths) == new.paths:
        return state, []
    by_name = {p.name: (i, p) for i, p in enumerate(state.paths)}
    new_index = {name: i for i, name in enumerate(new.paths)}
    changes = [f"path {n!r} added" for n in new.paths if n not in by_name]
    changes += [f"path {n!r} removed" for n in by_name if n not in new_index]
    moved = [n for n in new.paths if n in by_name and by_name[n][0] != new_index[n]]
    if moved:
        changes.append(f"paths reordered: {', '.join(new.paths)}")

    def remap(i: int | None) -> int | None:
        if i is None or not 0 <= i < len(state.paths):
            return None
        return new_index.get(state.paths[i].name)

    paths = tuple(by_name[n][1] if n in by_name else PathFacts(name=n) for n in new.paths)
    name, move = state.name, None
    if state.move is not None:
        target = remap(state.move.target)
        if target is None:
            name = STARTING  # the target is gone: the start that follows decides afresh
        else:
            move = dataclasses.replace(state.move, source=remap(state.move.source), target=target, awaiting=())
    # Timers name paths by index: the start that follows a configuration change re-arms them.
    return dataclasses.replace(state, name=name, active=remap(state.active), move=move, paths=paths,
                               timers=(), paused=()), changes


# --------------------------------------------------------------------------- one step
@dataclass(frozen=True)
class Step:
    """What one event did: the state before and after, why, and the actions to carry out."""
    src: str
    dst: str
    trigger: str          # the event's type string
    reason: str           # the rule that fired, in words
    actions: tuple[m.Action, ...]
    active: int | None    # the path holding the identity after this step
    state: State | None = field(default=None, compare=False, repr=False)
    refused: bool = False  # an operator's command was refused (the reason says why)

    @property
    def changed(self) -> bool:
        return self.src != self.dst or bool(self.actions)


@dataclass(frozen=True)
class Row:
    input: str
    sources: tuple[str, ...]
    dest: str | None           # None: stay (an internal transition)
    guard: str | None          # name of a Rules method ``g_*``; None: always
    effect: str | None         # name of a Rules method ``e_*`` that emits actions
    reason: str

    @property
    def refuses(self) -> bool:
        """An operator's command turned down: the control socket answers with an error."""
        return self.effect is not None and self.effect.startswith("e_refuse")


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
           (ALL_PATHS_DOWN, "g_peer_gone", "e_all_down", "every path fell silent within one detection time: the peer or its daemon is gone (no damping)"),
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
           (FAILING_OVER, "g_has_candidate", "e_begin_failover", "a path is usable again: (re)install the identity on it, idempotently"),
           (None, None, None, "recovery noted; still nothing usable")),
    *_rows("path_restored", (STARTING, MONITORING, FAILING_OVER, FAILING_BACK), (None, None, None, "recovery noted")),
    # -- the move itself
    *_rows("enable_due", MOVING, (None, None, "e_enable_phase", "enable delay over: enable, announce, routes")),
    *_rows("enable_due", NOT_MOVING, (None, None, None, "stale enable timer")),
    *_rows("move_expired", MOVING,
           (None, "g_move_may_retry", "e_reissue_move", "the move passed its deadline: issue it again"),
           (FAILING_OVER, "g_has_candidate", "e_begin_failover", "the move passed its last deadline: give it up for another path"),
           (ALL_PATHS_DOWN, None, "e_all_down", "the move passed its last deadline and no other path is usable: given up")),
    *_rows("move_expired", ALL_PATHS_DOWN,
           (FAILING_OVER, "g_has_candidate", "e_begin_failover", "a move given up earlier: try again on the best usable path"),
           (None, None, None, "a move given up earlier: still nothing usable")),
    *_rows("move_expired", (STARTING, MONITORING, SUSPECT, ALTERNATE_ACTIVE), (None, None, None, "stale move deadline")),
    *_rows("answer_due", ANY, (None, None, "e_answer_peer", "the peer may still disagree: tell it where we are again")),
    *_rows("step_done", MOVING,
           (None, "g_configured", "e_arm_enable", "the alternate is configured: enable it once the delay is over"),
           (MONITORING, "g_move_done_on_primary", "e_finish_move", "sequence complete: the identity is on the primary"),
           (ALTERNATE_ACTIVE, "g_move_done", "e_finish_move", "sequence complete: the identity is on an alternate"),
           (None, None, None, "step done")),
    *_rows("step_done", NOT_MOVING, (None, None, None, "step done")),
    *_rows("step_failed", MOVING,
           (None, "g_failed_off_target", "e_continue_move", "clearing a NIC other than the target failed: go on with the target"),
           (None, "g_move_may_retry", "e_retry_move", "a step failed: issue the move again"),
           (FAILING_OVER, "g_move_step_failed_with_candidate", "e_begin_failover", "a step failed again: try the next usable path"),
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
    # -- the peer's notice of its own move: both nodes apply the same rules, so they settle on one path
    *_rows("peer_moved", ACTIVE + (ALL_PATHS_DOWN,),
           (None, "g_peer_agrees", None, "the peer is on our path: agreed"),
           (None, "g_peer_not_coordinated", None, "peer notice ignored: coordination off"),
           (None, "g_crossed_lower_wins", "e_answer_peer", "our notices crossed: the lower path wins; told the peer"),
           (FAILING_OVER, "g_peer_target_alive", "e_begin_follow", "the peer moved to a path alive here: follow"),
           (None, None, "e_answer_peer", "disagreement: the peer's path is not alive here; told the peer where we are")),
    *_rows("peer_moved", (STARTING, FAILING_OVER, FAILING_BACK), (None, None, None, "peer notice noted: busy")),
    # -- operators
    *_rows("op_failover", ACTIVE + (ALL_PATHS_DOWN,),
           (FAILING_OVER, "g_op_target_ok", "e_begin_operator_move", "operator failover"),
           (None, None, "e_refuse", "operator failover refused: no usable target (use force)")),
    *_rows("op_failover", MOVING,
           (FAILING_OVER, "g_op_forced_target_ok", "e_begin_operator_move", "operator failover forced during a move"),
           (None, None, "e_refuse", "operator failover refused: a move is in progress (use force)")),
    *_rows("op_failover", STARTING, (None, None, "e_refuse", "operator failover refused: starting")),
    *_rows("op_failback", (ALTERNATE_ACTIVE, SUSPECT, ALL_PATHS_DOWN),
           (FAILING_BACK, "g_op_failback_ok", "e_begin_failback", "operator failback"),
           (None, None, "e_refuse", "operator failback refused: primary not usable or already active (use force)")),
    *_rows("op_failback", MOVING,
           (FAILING_BACK, "g_op_forced_failback_ok", "e_begin_failback", "operator failback forced during a move"),
           (None, None, "e_refuse", "operator failback refused: a move is in progress (use force)")),
    *_rows("op_failback", (STARTING, MONITORING), (None, None, "e_refuse", "operator failback refused: not on an alternate")),
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
TIMER_MOVE = "move"
TIMER_ANSWER = "answer"


def _timer(kind: str, path: int) -> str:
    return f"{kind}:{path}"


def _laa(mac: str, salt: int) -> str:
    """A locally administered unicast MAC derived from ``mac``: a NIC's own stand-in address when
    its MAC is found shared with another NIC and no permanent address is known."""
    octets = [int(x, 16) for x in mac.split(":")]
    octets[0] = (octets[0] | 0x02) & 0xFE
    octets[5] ^= 0x80 | (salt & 0x7F)
    return ":".join(f"{o:02x}" for o in octets)


class Rules:
    """The table and its guards and effects, for one set of parameters.

    ``step`` is a pure function of (state, event): it loads the frozen state into scratch fields,
    lets the table fire, and freezes the result. Not thread-safe (the scratch fields); one step at
    a time per instance.
    """

    def __init__(self, params: Params):
        self.params = params
        self.n = len(params.paths)
        self.state = STARTING  # the table's current state name, set by ``transitions``
        self._tm = _TMachine(model=self, states=list(STATES), initial=STARTING, auto_transitions=False,
                             ignore_invalid_triggers=False, model_attribute="state")
        for row in TABLE:
            self._tm.add_transition(row.input, list(row.sources), row.dest,
                                    conditions=[getattr(self, row.guard)] if row.guard else [],
                                    after=[self._fire_callback(row)])

    # -- the pure step
    def step(self, state: State, event: m.Event) -> Step:
        if len(state.paths) != self.n:
            raise ValueError(f"state has {len(state.paths)} paths, parameters {self.n}: adapt() it first")
        self._load(state, event)
        inp = self._fold_facts(event)
        src = self.state
        self.trigger(inp, event)
        row = self._fired
        assert row is not None, f"no row fired for {inp} in {src}"  # the table is total
        new = self._freeze()
        return Step(src=src, dst=new.name, trigger=event.type, reason=row.reason,
                    actions=tuple(self._actions), active=new.active, state=new, refused=row.refuses)

    def _load(self, s: State, event: m.Event) -> None:
        self.state = self._src = s.name
        self.paths = list(s.paths)
        self.active, self.move = s.active, s.move
        self.timers = dict(s.timers)
        self.paused = set(s.paused)
        self.next_action_id, self.notice_t, self.mac_holder, self.peer_active, self.peer_notice = (
            s.next_action_id, s.notice_t, s.mac_holder, s.peer_active, s.peer_notice)
        self.now = max(s.now, event.t_ns)
        self._actions: list[m.Action] = []
        self._fired: Row | None = None
        self._event = event
        self._found_macs: tuple[str, ...] = ()  # MACs as found by a start, for e_resume_all

    def _freeze(self) -> State:
        return State(name=self.state, active=self.active, move=self.move if self.state in MOVING else None,
                     paths=tuple(self.paths), timers=tuple(sorted(self.timers.items())),
                     paused=tuple(sorted(self.paused)), next_action_id=self.next_action_id, now=self.now,
                     notice_t=self.notice_t, mac_holder=self.mac_holder,
                     peer_active=self.peer_active, peer_notice=self.peer_notice)

    def _fire_callback(self, row: Row) -> Callable:
        def fire(event: m.Event) -> None:
            self._fired = row
            if row.effect:
                getattr(self, row.effect)()
        return fire

    def _set(self, path: int, **changes) -> None:
        self.paths[path] = dataclasses.replace(self.paths[path], **changes)

    # -- facts: folded from every event before the table decides
    def _fold_facts(self, ev: m.Event) -> str:
        inp = INPUT_OF.get(ev.type, "noted")
        path = getattr(ev, "path", None)
        f = self.paths[path] if isinstance(path, int) and 0 <= path < self.n else None
        if path is not None and f is None and not isinstance(ev, m.OperatorFailover):
            return "noted"  # a path index this configuration does not have
        if isinstance(ev, m.DaemonStarted):
            self._fold_started(ev)
        elif isinstance(ev, m.HeartbeatSuspect):
            if f.health == HEALTH_UP:
                self._set(path, health=HEALTH_SUSPECT)
        elif isinstance(ev, (m.HeartbeatCleared, m.HeartbeatRecovered)):
            self._set(path, health=HEALTH_UP)
        elif isinstance(ev, m.HeartbeatLost):
            heard = f.health in HEARD
            self._set(path, health=HEALTH_LOST)
            if heard and f.link_ok and f.present:
                self._strike(path)
        elif isinstance(ev, m.LinkDown):
            return self._fold_carrier(path, False)
        elif isinstance(ev, m.LinkUp):
            return self._fold_carrier(path, True)
        elif isinstance(ev, m.LinkGone):
            if f.present and f.link_ok and f.health != HEALTH_LOST:
                self._strike(path)
            self._set(path, present=False)
        elif isinstance(ev, m.LinkReturned):
            # A NIC missing at the first start is known by its MAC from now on.
            self._set(path, present=True, hw_mac=ev.hw_mac or f.hw_mac or ev.mac)
            self._emit(m.RebindProbe, path=path)
            holder = self.mac_holder
            if holder is not None and self.layout(holder):
                # A NIC plugged back comes with its own MAC, which may be the one it lent away.
                self._emit(m.ConfigureNic, path=holder, from_path=None, layout=self.layout(holder))
        elif isinstance(ev, m.PathQuality):
            return self._fold_quality(path, ev)
        elif isinstance(ev, m.TimerFired):
            return self._fold_timer(ev.name)
        elif isinstance(ev, (m.ActionDone, m.ActionFailed)):
            if self.move is None or self.state not in MOVING or self._awaited_path(ev.action_id) is None:
                return "noted"
            if isinstance(ev, m.ActionDone):
                self.move = dataclasses.replace(
                    self.move, awaiting=tuple(a for a in self.move.awaiting if a[0] != ev.action_id))
        elif isinstance(ev, m.OperatorOffline):
            self._set(path, offline=True)
        elif isinstance(ev, m.OperatorOnline):
            self._set(path, offline=False)
        elif isinstance(ev, m.PeerNotice):
            if not 0 <= ev.active < self.n:
                return "noted"
            self.peer_active = ev.active
            self.peer_notice = max(self.peer_notice, ev.peer_seq)
        elif isinstance(ev, m.OperatorFailover):
            if ev.path is not None and not 0 <= ev.path < self.n:
                return "noted"
        return inp

    def _awaited_path(self, action_id: int) -> int | None:
        for aid, path in self.move.awaiting:
            if aid == action_id:
                return path
        return None

    def _fold_started(self, ev: m.DaemonStarted) -> None:
        # After a reboot CLOCK_MONOTONIC starts again near zero: carry the recorded times over to
        # the new clock, moved on by the time the daemon was down, so penalties keep decaying.
        shift = ev.t_ns - ev.down_ns - self.now if self.now > ev.t_ns else 0
        present = ev.present if len(ev.present) == self.n else tuple(
            bool(ev.macs[i]) if i < len(ev.macs) else True for i in range(self.n))
        current = [ev.macs[i] if i < len(ev.macs) else "" for i in range(self.n)]
        learned = self._learn_hw_macs(ev, current)
        for i, f in enumerate(self.paths):
            carrier = bool(ev.carrier[i]) if i < len(ev.carrier) else f.carrier
            hw = (ev.hw_macs[i] if i < len(ev.hw_macs) else "") or f.hw_mac or learned[i]
            self.paths[i] = dataclasses.replace(
                f, health=HEALTH_UNKNOWN, carrier=carrier, link_ok=carrier, present=present[i],
                hw_mac=hw, penalty_t=f.penalty_t + shift, strike_t=None)
        self.now = ev.t_ns if shift else self.now
        self.timers.clear()
        self.paused.clear()
        self.notice_t = None
        # Timers are re-armed from the state: a path damped before the restart comes back on time.
        for i, f in enumerate(self.paths):
            if f.suppressed:
                self._arm_reuse(i)
        self._found_macs = tuple(current)
        if self.state not in MOVING:
            self.active = ev.holder

    def _learn_hw_macs(self, ev: m.DaemonStarted, current: list[str]) -> list[str]:
        """Each NIC's own MAC from the MACs found, for NICs whose driver reports no permanent one.

        The MACs found are read as the layout of the holder found: with the identity on an
        alternate, the primary holds that alternate's own MAC. A MAC found on two NICs (a swap torn
        by an older version) stays with the holder; the other NIC gets a stand-in of its own.
        """
        learned = list(current)
        h = ev.holder
        if (self.params.carry_mac and not self.params.identity_mac and h is not None and 0 < h < self.n
                and current[0] and current[h]):
            learned[0], learned[h] = current[h], current[0]
        elif self.params.carry_mac and self.params.identity_mac and h is not None and 0 <= h < self.n and current[h]:
            learned[h] = _laa(self.params.identity_mac, h)
        for i, mac in enumerate(current):
            if mac and current.count(mac) > 1 and i != h:
                learned[i] = _laa(mac, i)
        return learned

    def _fold_carrier(self, path: int, up: bool) -> str:
        f = self.paths[path]
        if f.carrier == up:
            return "noted"
        self._set(path, carrier=up)
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
        f = self.paths[path]
        self._set(path, link_ok=up)
        if up:
            return "path_restored"
        if f.present and f.health != HEALTH_LOST:
            self._strike(path)
        return "path_failed"

    def _fold_quality(self, path: int, ev: m.PathQuality) -> str:
        if not self.params.quality:
            return "noted"
        lossy = ev.loss_ppm > self.params.quality_max_loss_ppm
        if lossy == self.paths[path].lossy:
            return "noted"
        self._set(path, lossy=lossy)
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
        if name == TIMER_MOVE:
            return "move_expired"
        if name == TIMER_ANSWER:
            return "answer_due"
        kind, _, idx = name.partition(":")
        path = int(idx)
        if kind == "linkdown" and not self.paths[path].carrier:
            return self._apply_link(path, False)
        if kind == "linkup" and self.paths[path].carrier:
            return self._apply_link(path, True)
        if kind == "reuse":
            return self._refresh_damping(path)
        if kind == "strike":
            return self._judge_strike(path)
        return "noted"

    # -- flap damping: a penalty that halves every half-life, in the manner of route-flap damping.
    # A failure is only a strike against its path once one detection time has shown that another
    # path still hears the peer; when every path falls silent together, the peer is gone.
    def decayed(self, f: PathFacts, now: int) -> float:
        return f.penalty * 0.5 ** (max(0, now - f.penalty_t) / self.params.damp_half_life_ns)

    def damped(self, f: PathFacts, now: int) -> bool:
        return f.suppressed and self.decayed(f, now) >= self.params.damp_reuse

    def _strike(self, path: int) -> None:
        if not self.params.damping:
            return
        self._set(path, strike_t=self.now)
        self._start(_timer("strike", path), self.now + self.params.peer_window_ns)

    def _judge_strike(self, path: int) -> str:
        f = self.paths[path]
        if f.strike_t is None:
            return "noted"
        self._set(path, strike_t=None)
        if not any(self.hears_peer(p) for p in range(self.n) if p != path):
            return "noted"  # every path fell silent: the peer is gone, not this path
        p = self.params
        before = self.decayed(f, f.strike_t)
        penalty = min(p.damp_max, before + p.damp_penalty)
        suppressed = (f.suppressed and before >= p.damp_reuse) or penalty >= p.damp_suppress
        self._set(path, penalty=penalty, penalty_t=f.strike_t, suppressed=suppressed)
        if suppressed:
            self._arm_reuse(path)
        return "noted"

    def _arm_reuse(self, path: int) -> None:
        f, p = self.paths[path], self.params
        halvings = math.log2(f.penalty / p.damp_reuse) if f.penalty > p.damp_reuse else 0.0
        self._start(_timer("reuse", path), f.penalty_t + int(halvings * p.damp_half_life_ns) + 1)

    def _refresh_damping(self, path: int) -> str:
        f = self.paths[path]
        if not f.suppressed:
            return "noted"
        if self.damped(f, self.now):
            self._arm_reuse(path)
            return "noted"
        self._set(path, suppressed=False)
        return "path_restored"

    # -- derived facts
    def hears_peer(self, path: int) -> bool:
        f = self.paths[path]
        return f.present and f.link_ok and f.health in HEARD

    def alive(self, path: int) -> bool:
        """The peer is heard on it and nothing here forbids it (damping and quality aside)."""
        return self.hears_peer(path) and not self.paths[path].offline

    def available_at(self, f: PathFacts, now: int) -> bool:
        """Present, carrier, not lost, not offline, not damped: a place to install the identity."""
        return (f.present and f.link_ok and not f.offline and f.health != HEALTH_LOST
                and not self.damped(f, now))

    def usable_at(self, f: PathFacts, now: int) -> bool:
        """Available and heard in this run."""
        return f.health in HEARD and self.available_at(f, now)

    def available(self, path: int) -> bool:
        return self.available_at(self.paths[path], self.now)

    def usable(self, path: int) -> bool:
        return self.usable_at(self.paths[path], self.now)

    def candidates(self, exclude: int | None = None, heard: bool = True) -> list[int]:
        """Usable paths of clean quality, in priority order.

        A move goes only to a path whose heartbeats are answered (``heard``), so a node whose peer
        is absent does not shuffle its identity around; only installing the identity at start,
        where it is on no NIC, may pick a path not yet heard, best-heard first.
        """
        paths = [p for p in range(self.n) if p != exclude and not self.paths[p].lossy
                 and (self.usable(p) if heard else self.available(p))]
        return sorted(paths, key=lambda p: (self.paths[p].health not in HEARD, p))

    def _better_path(self) -> int | None:
        if self.active is None:
            return None
        better = [p for p in range(self.active) if self.usable(p)]
        return better[0] if better else None

    def _failover_target(self) -> int | None:
        """Where a failover started from the current state would go: the best candidate other than
        the path being left (the target of a move, or the active path); from all-paths-down or a
        restart, any usable path, the last holder included."""
        starting = isinstance(self._event, m.DaemonStarted)
        if self._src in MOVING and self.move is not None:
            exclude = self.move.target
        elif self._src in (ALL_PATHS_DOWN, STARTING) or starting:
            exclude = None
        else:
            exclude = self.active
        best = self.candidates(exclude, heard=not starting)
        return best[0] if best else None

    def _path_of(self) -> int | None:
        return getattr(self._event, "path", None)

    def layout(self, holder: int) -> tuple[str, ...]:
        """Every path NIC's MAC while ``holder`` holds the identity: the holder takes the identity
        MAC and the NIC that lent it takes the holder's own, so no two NICs share one."""
        hw = tuple(f.hw_mac for f in self.paths)
        if not self.params.carry_mac or not hw or not all(hw) or holder is None or not 0 <= holder < self.n:
            return ()
        identity = self.params.identity_mac or hw[0]
        out = []
        for p in range(self.n):
            if p == holder:
                out.append(identity)
            elif p == 0 and not self.params.identity_mac:
                out.append(hw[holder])  # the primary lends its MAC and takes the holder's own
            else:
                out.append(hw[p])
        return tuple(out)

    # -- guards (g_*): read facts and the current event, change nothing
    def g_holder_primary(self, ev) -> bool:
        return ev.holder == 0

    def g_holder_alternate(self, ev) -> bool:
        return ev.holder is not None and 0 < ev.holder < self.n

    def g_has_candidate(self, ev) -> bool:
        return self._failover_target() is not None

    def g_online_needs_plumb(self, ev) -> bool:
        return self.paths[ev.path].admin_downed

    def g_on_active(self, ev) -> bool:
        return self._path_of() == self.active

    def g_active_dead(self, ev) -> bool:
        return self.g_on_active(ev) and not self.usable(self.active)

    def g_peer_gone(self, ev) -> bool:
        """No path hears the peer, and every path that did fell silent within one detection time."""
        if not self.g_active_dead(ev) or any(self.hears_peer(p) for p in range(self.n)):
            return False
        recent = [f.strike_t for f in self.paths if f.strike_t is not None]
        return len(recent) >= 2 and max(recent) - min(recent) <= self.params.peer_window_ns

    def g_on_target(self, ev) -> bool:
        return self.move is not None and self._path_of() == self.move.target

    # Suspect ends when the active path answers again, whatever else is true of it: a damped
    # path the identity sits on (it followed the peer there) is still where the identity is.
    def g_active_primary_clear(self, ev) -> bool:
        return self.g_on_active(ev) and self.active == 0 and self.paths[0].health == HEALTH_UP

    def g_active_alternate_clear(self, ev) -> bool:
        return (self.g_on_active(ev) and self.active not in (None, 0)
                and self.paths[self.active].health == HEALTH_UP)

    def g_active_failed_with_candidate(self, ev) -> bool:
        leave = not self.usable(self.active) or self.paths[self.active].lossy
        return self.g_on_active(ev) and leave and self._failover_target() is not None

    def g_target_failed_with_candidate(self, ev) -> bool:
        return self.g_on_target(ev) and self._failover_target() is not None

    def g_better_usable_auto(self, ev) -> bool:
        return self.params.failback_auto and self._better_path() is not None

    def g_move_may_retry(self, ev) -> bool:
        return self.move is not None and self.move.attempt < MOVE_ATTEMPTS

    def g_configured(self, ev) -> bool:
        return (self.move is not None and self.move.phase == 1 and not self.move.awaiting
                and TIMER_ENABLE not in self.timers)

    def g_move_done(self, ev) -> bool:
        return self.move is not None and self.move.phase == 2 and not self.move.awaiting

    def g_move_done_on_primary(self, ev) -> bool:
        return self.g_move_done(ev) and self.move.target == 0

    def g_failed_off_target(self, ev) -> bool:
        path = self._awaited_path(ev.action_id) if self.move is not None else None
        return path is not None and path != self.move.target and ev.kind == m.DisableNic.type

    def g_move_step_failed(self, ev) -> bool:
        return isinstance(ev, m.ActionFailed)

    def g_move_step_failed_with_candidate(self, ev) -> bool:
        return self.g_move_step_failed(ev) and self._failover_target() is not None

    def g_peer_agrees(self, ev) -> bool:
        return ev.active == self.active and self.state != ALL_PATHS_DOWN

    def g_peer_not_coordinated(self, ev) -> bool:
        return not self.params.coordinate

    def g_crossed_lower_wins(self, ev) -> bool:
        # Crossed notices were each sent without knowledge of the other: following either would
        # only swap the nodes round, so both apply one rule, whatever their timing.
        return (ev.crossed and self.active is not None and ev.active > self.active and self.alive(self.active)
                and self.state != ALL_PATHS_DOWN)

    def g_peer_target_alive(self, ev) -> bool:
        return self.alive(ev.active)

    def g_op_target_ok(self, ev) -> bool:
        return self._operator_target(ev) is not None

    def g_op_forced_target_ok(self, ev) -> bool:
        return ev.force and self._operator_target(ev) is not None

    def g_op_failback_ok(self, ev) -> bool:
        if self.active == 0 and self._src != ALL_PATHS_DOWN:
            return False
        return self.usable(0) or (ev.force and self.paths[0].present)

    def g_op_forced_failback_ok(self, ev) -> bool:
        return ev.force and self.paths[0].present and self.active != 0

    def g_offline_active_with_candidate(self, ev) -> bool:
        return self.g_on_active(ev) and self._failover_target() is not None

    def g_offline_active_forced(self, ev) -> bool:
        return self.g_on_active(ev) and ev.force

    def _operator_target(self, ev: m.OperatorFailover) -> int | None:
        if ev.path is not None:
            f = self.paths[ev.path]
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

    def _begin_move(self, target: int, by: str, attempt: int = 1, skip: tuple[int, ...] = (),
                    source: int | None | type = ...) -> None:
        source = self.active if source is ... else source
        for name in (TIMER_FAILBACK, TIMER_ENABLE, TIMER_MOVE):
            self._cancel(name)
        self.active = target
        if source is not None and source != target:
            self._emit(m.PauseMonitoring, path=source)
            self.paused.add(source)
        kernel: list[m.Action] = []
        # The failed NIC first (the patent's order), then any other that might hold a copy.
        others = sorted((p for p in range(self.n) if p != target), key=lambda p: p != source)
        for p in others:
            if not self.paths[p].present or p in skip:
                continue  # a NIC that is gone holds nothing; one that refused stays as it is
            admin_down = self.params.admin_down_failed and p == source and not self.usable(p)
            if admin_down:
                # A down NIC cannot be probed: it stays out of service until an operator
                # brings it back with `hanet online`.
                self._set(p, admin_downed=True, offline=True)
            kernel.append(self._emit(m.DisableNic, path=p, admin_down=admin_down))
        kernel.append(self._emit(m.PlumbNic, path=target))
        kernel.append(self._emit(m.ConfigureNic, path=target, from_path=source, layout=self.layout(target)))
        self.mac_holder = target
        self.move = Move(source=source, target=target, awaiting=tuple((a.id, a.path) for a in kernel),
                         attempt=attempt, by=by, skip=skip)
        self._start(TIMER_MOVE, self.now + self.params.move_timeout_ns)
        if self.params.enable_delay_ns == 0:
            self.e_enable_phase()  # else the delay runs from the moment the configure step is done

    def e_arm_enable(self) -> None:
        self._start(TIMER_ENABLE, self.now + self.params.enable_delay_ns)

    def e_enable_phase(self) -> None:
        mv = self.move
        kernel = [self._emit(m.EnableNic, path=mv.target),
                  self._emit(m.Announce, path=mv.target, count=self.params.announce_count)]
        if self.params.carry_routes:
            kernel.append(self._emit(m.MoveRoutes, path=mv.target))
        self.move = dataclasses.replace(mv, phase=2, awaiting=mv.awaiting + tuple((a.id, a.path) for a in kernel))

    def e_finish_move(self) -> None:
        target = self.move.target
        self._cancel(TIMER_MOVE)
        for p in sorted(self.paused):
            self._emit(m.ResumeMonitoring, path=p)
        self.paused.clear()
        if self.params.coordinate:
            self._emit(m.SendNotice, path=target, active=target, seen=self.peer_notice)
        for p in self.move.skip:
            if self.paths[p].present:
                self._emit(m.DisableNic, path=p, admin_down=False)  # clearing it failed before: try again
        self.move = None
        if self.state == ALTERNATE_ACTIVE and self.g_better_usable_auto(None):
            self.e_arm_failback()

    def e_begin_failover(self) -> None:
        self._begin_move(self._failover_target(), by="self")

    def e_begin_follow(self) -> None:
        self._begin_move(self._event.active, by="peer")

    def e_begin_operator_move(self) -> None:
        self._begin_move(self._operator_target(self._event), by="operator")

    def e_begin_failback(self) -> None:
        operator = isinstance(self._event, m.OperatorFailback)
        self._begin_move(0 if operator else self._better_path(), by="operator" if operator else "self")

    def e_reissue_move(self) -> None:
        mv = self.move
        retry = isinstance(self._event, m.TimerFired)
        # The source of a move interrupted by a restart is unknown now: every other NIC is cleared.
        self._begin_move(mv.target, by=mv.by, attempt=mv.attempt + 1 if retry else mv.attempt,
                         skip=mv.skip, source=mv.source if retry else None)

    def e_retry_move(self) -> None:
        mv = self.move
        self._begin_move(mv.target, by=mv.by, attempt=mv.attempt + 1, skip=mv.skip, source=mv.source)

    def e_continue_move(self) -> None:
        mv = self.move
        failed = self._awaited_path(self._event.action_id)
        self._begin_move(mv.target, by=mv.by, attempt=mv.attempt, skip=mv.skip + (failed,), source=mv.source)

    def e_all_down(self) -> None:
        gave_up = self.move is not None
        self.move = None
        for name in (TIMER_FAILBACK, TIMER_ENABLE, TIMER_MOVE):
            self._cancel(name)
        if gave_up:
            self.active = None  # a move cut short: the identity may be on no NIC, or half installed
            # Whatever made it fail may pass: try again later even if no path event comes.
            self._start(TIMER_MOVE, self.now + self.params.move_timeout_ns)

    def e_arm_failback(self) -> None:
        if TIMER_FAILBACK not in self.timers:
            self._start(TIMER_FAILBACK, self.now + self.params.failback_hold_ns)

    def e_cancel_failback_if_gone(self) -> None:
        if TIMER_FAILBACK in self.timers and self._better_path() is None:
            self._cancel(TIMER_FAILBACK)

    def e_resume_all(self) -> None:
        for p in range(self.n):
            self._emit(m.ResumeMonitoring, path=p)
        # A MAC layout torn by a crash (or two NICs found sharing a MAC) is put right in place.
        want = self.layout(self.active)
        self.mac_holder = self.active
        if want and any(w != f for w, f in zip(want, self._found_macs) if f):
            self._emit(m.ConfigureNic, path=self.active, from_path=None, layout=want)

    def e_answer_peer(self) -> None:
        """Tell the peer where our identity is, at most once per detection time; an answer due
        sooner is sent when that time is over, so a disagreement is never left standing."""
        if not self.params.coordinate or self.active is None or self.state in MOVING:
            return
        if self.peer_active == self.active and isinstance(self._event, m.TimerFired):
            return  # the peer came round meanwhile
        if self.notice_t is not None and self.now - self.notice_t < self.params.peer_window_ns:
            if TIMER_ANSWER not in self.timers:
                self._start(TIMER_ANSWER, self.notice_t + self.params.peer_window_ns)
            return
        heard = [p for p in [self.active, *range(self.n)] if self.hears_peer(p)]
        if heard:
            self._emit(m.SendNotice, path=heard[0], active=self.active, seen=self.peer_notice)
            self.notice_t = self.now

    def e_plumb_online(self) -> None:
        self._set(self._event.path, admin_downed=False)
        self._emit(m.PlumbNic, path=self._event.path)

    def e_refuse(self) -> None:
        """An operator's command refused: nothing changes (the reason tells the operator why)."""

    def e_refuse_offline(self) -> None:
        self._set(self._event.path, offline=False)  # it stays in service

    def e_restore_addresses(self) -> None:
        self._emit(m.EnableNic, path=self.active)
        self._emit(m.Announce, path=self.active, count=self.params.announce_count)


@functools.lru_cache(maxsize=8)
def rules(params: Params) -> Rules:
    """The rules for ``params`` (built once: building the table costs about a millisecond)."""
    return Rules(params)


def step(params: Params, state: State, event: m.Event) -> Step:
    """The pure step: (state, event) -> Step with the new state and the actions."""
    return rules(params).step(state, event)


class Machine:
    """The current state of one node, stepped by events: a thin holder for the shell and tests."""

    def __init__(self, params: Params, state: State | None = None):
        self.params = params
        self.current = state if state is not None else initial_state(params)

    @classmethod
    def from_params(cls, params: dict[str, Any] | Params) -> "Machine":
        return cls(params if isinstance(params, Params) else Params.from_dict(params))

    @classmethod
    def from_snapshot(cls, params: dict[str, Any] | Params, snap: dict[str, Any]) -> "Machine":
        params = params if isinstance(params, Params) else Params.from_dict(params)
        return cls(params, State.from_dict(snap, params))

    def step(self, event: m.Event) -> Step:
        result = step(self.params, self.current, event)
        self.current = result.state
        return result

    def reconfigure(self, params: dict[str, Any] | Params) -> list[str]:
        """New parameters (a restart or reload) keep the folded state; paths are matched by name.
        Returns what changed in the path list, in words."""
        new = params if isinstance(params, Params) else Params.from_dict(params)
        self.current, changes = adapt(self.current, self.params, new)
        self.params = new
        return changes

    def snapshot(self) -> dict[str, Any]:
        return self.current.to_dict()

    # -- read-only views of the current state
    @property
    def state(self) -> str:
        return self.current.name

    @property
    def active(self) -> int | None:
        return self.current.active

    @property
    def move(self) -> Move | None:
        return self.current.move

    @property
    def facts(self) -> tuple[PathFacts, ...]:
        return self.current.paths

    @property
    def timers(self) -> dict[str, int]:
        return dict(self.current.timers)

    def view(self, now: int | None = None) -> "PathView":
        """Derived facts of every path as of ``now`` (default: the state's own time)."""
        return PathView(rules(self.params), self.current, self.current.now if now is None else max(now, self.current.now))


class PathView:
    """Damping, usability and the decayed penalty of each path at a given time, for status."""

    def __init__(self, r: Rules, state: State, now: int):
        self._r, self._s, self.now = r, state, now

    def penalty(self, path: int) -> float:
        return self._r.decayed(self._s.paths[path], self.now)

    def damped(self, path: int) -> bool:
        return self._r.damped(self._s.paths[path], self.now)

    def usable(self, path: int) -> bool:
        return self._r.usable_at(self._s.paths[path], self.now)


def planned_move(params: Params, own_macs: tuple[str, ...], source: int, target: int) -> tuple[m.Action, ...]:
    """The kernel actions this machine issues to move the identity from ``source`` to ``target``
    with every path healthy, for tools and tests that drive the executor directly."""
    mach = Machine(dataclasses.replace(params, enable_delay_ns=0))
    n = len(params.paths)
    mach.step(m.DaemonStarted(t_ns=0, holder=source, carrier=(True,) * n, macs=tuple(own_macs), hw_macs=tuple(own_macs)))
    for path in range(n):
        mach.step(m.HeartbeatRecovered(t_ns=0, path=path))
    step_ = mach.step(m.OperatorFailover(t_ns=0, path=target, force=True))
    return tuple(a for a in step_.actions if isinstance(a, m.KERNEL_ACTIONS))


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
