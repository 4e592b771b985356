"""The pure state machine: scenarios, totality, and invariants under random event sequences."""
from __future__ import annotations

import pytest

from hanet import machine as M
from hanet import model as m

MACS = ("02:00:00:00:0a:01", "02:00:00:00:0a:03", "02:00:00:00:0a:05")
MS = 1_000_000


class KernelSim:
    """Just enough of a kernel to check where the identity is after each action."""

    def __init__(self, n: int, holder: int | None = 0):
        self.holds = [i == holder for i in range(n)]
        self.macs = list(MACS[:n])
        self.present = [True] * n
        self.stuck: set[int] = set()  # NICs whose clearing failed last time: they may hold a copy

    def apply(self, act: m.Action) -> bool:
        """Carry out ``act``; False if the kernel refuses (the NIC is gone)."""
        if isinstance(act, m.DisableNic):
            self.holds[act.path] = False
            self.stuck.discard(act.path)
            return True
        if not self.present[act.path]:
            return False
        if isinstance(act, m.ConfigureNic) and act.layout:
            self.macs = [want if present else mac for want, mac, present in zip(act.layout, self.macs, self.present)]
        elif isinstance(act, m.EnableNic):
            self.holds[act.path] = True
            self.stuck.discard(act.path)
        return True

    def observe(self, ev: m.Event) -> None:
        """What the kernel itself does with the NICs an event reports on."""
        if isinstance(ev, m.LinkGone):
            self.present[ev.path], self.holds[ev.path] = False, False
        elif isinstance(ev, m.LinkReturned) and not self.present[ev.path]:
            self.present[ev.path], self.macs[ev.path] = True, MACS[ev.path]  # back with its own MAC

    def holders(self) -> list[int]:
        return [i for i, h in enumerate(self.holds) if h]

    def present_macs(self) -> list[str]:
        return [mac for mac, present in zip(self.macs, self.present) if present]


class Driver:
    """Feeds events, carries out kernel actions at once and feeds their outcomes back."""

    def __init__(self, n: int = 2, fail_steps: set[tuple[str, int]] | None = None, heard: bool = True, **params):
        self.mach = M.Machine(M.Params(paths=tuple(f"p{i}" for i in range(n)), **params))
        self.kernel = KernelSim(n)
        self.t = 1_000
        self.timers: dict[str, int] = {}
        self.log: list[tuple[m.Event, M.Step]] = []
        self.fail_steps = fail_steps or set()
        self.feed(m.DaemonStarted(t_ns=self.t, holder=0, carrier=(True,) * n, macs=MACS[:n]))
        for path in range(n if heard else 0):  # the peer answers on every path
            self.feed(m.HeartbeatRecovered(t_ns=self.t, path=path, replies=3))

    def feed(self, ev: m.Event) -> M.Step:
        self.kernel.observe(ev)
        step = self.mach.step(ev)
        self.log.append((ev, step))
        outcomes = []
        for act in step.actions:
            if isinstance(act, m.StartTimer):
                self.timers[act.name] = act.deadline_ns
            elif isinstance(act, m.CancelTimer):
                self.timers.pop(act.name, None)
            elif isinstance(act, m.KERNEL_ACTIONS):
                if any(isinstance(o, m.ActionFailed) for o in outcomes):
                    continue  # the shell skips the step's later kernel actions after a failure
                # Injected failures hit the steps of a move (a repair outside one is not retried).
                inject = (act.type, act.path) in self.fail_steps and step.dst in M.MOVING
                if inject or not self.kernel.apply(act):
                    self.fail_steps.discard((act.type, act.path))  # fails once
                    if isinstance(act, m.DisableNic):
                        self.kernel.stuck.add(act.path)
                    outcomes.append(m.ActionFailed(t_ns=self.t, action_id=act.id, kind=act.type, error="EIO"))
                    continue
                outcomes.append(m.ActionDone(t_ns=self.t, action_id=act.id, kind=act.type))
        for out in outcomes:
            self.feed(out)
        return step

    def advance(self, dt_ns: int) -> None:
        self.t += dt_ns
        for name, deadline in sorted(self.timers.items(), key=lambda kv: kv[1]):
            if deadline <= self.t and name in self.timers:
                del self.timers[name]
                self.feed(m.TimerFired(t_ns=self.t, name=name))

    @property
    def state(self) -> str:
        return self.mach.state


def test_table_is_total_and_rows_name_real_methods():
    assert M.check_table_total() == []
    for row in M.TABLE:
        assert row.input in M.INPUTS
        assert row.dest is None or row.dest in M.STATES
        for name in (row.guard, row.effect):
            assert name is None or callable(getattr(M.Rules, name))


def test_heartbeat_loss_fails_over_in_order_and_fails_back_after_hold_down():
    d = Driver(failback_hold_ns=500 * MS)
    d.feed(m.HeartbeatRecovered(t_ns=d.t, path=0))
    d.feed(m.HeartbeatRecovered(t_ns=d.t, path=1))
    assert d.feed(m.HeartbeatSuspect(t_ns=d.t, path=0)).dst == M.SUSPECT
    step = d.feed(m.HeartbeatLost(t_ns=d.t, path=0))
    assert (step.src, step.dst, step.active) == (M.SUSPECT, M.FAILING_OVER, 1)
    kinds = [type(a) for a in step.actions if not isinstance(a, (m.StartTimer, m.CancelTimer))]
    assert kinds == [m.PauseMonitoring, m.DisableNic, m.PlumbNic, m.ConfigureNic,
                     m.EnableNic, m.Announce, m.MoveRoutes]
    assert d.state == M.ALTERNATE_ACTIVE and d.kernel.holders() == [1]
    assert d.kernel.macs == [MACS[1], MACS[0]]  # swapped, never shared
    d.feed(m.HeartbeatRecovered(t_ns=d.t, path=0))
    d.advance(400 * MS)
    assert d.state == M.ALTERNATE_ACTIVE  # hold-down not over
    d.advance(200 * MS)
    assert d.state == M.MONITORING and d.kernel.holders() == [0]
    assert d.kernel.macs == list(MACS[:2])


def test_enable_waits_for_the_configured_delay():
    d = Driver(enable_delay_ns=50 * MS)
    step = d.feed(m.LinkDown(t_ns=d.t, path=0))
    assert step.dst == M.FAILING_OVER
    assert not any(isinstance(a, m.EnableNic) for a in step.actions)
    assert d.kernel.holders() == []
    d.advance(49 * MS)
    assert d.state == M.FAILING_OVER
    d.advance(1 * MS)
    assert d.state == M.ALTERNATE_ACTIVE and d.kernel.holders() == [1]


def test_standby_failure_changes_nothing_and_both_down_is_all_paths_down():
    d = Driver()
    step = d.feed(m.HeartbeatLost(t_ns=d.t, path=1))
    assert step.dst == M.MONITORING and not any(isinstance(a, m.KERNEL_ACTIONS) for a in step.actions)
    step = d.feed(m.LinkDown(t_ns=d.t, path=0))
    assert step.dst == M.ALL_PATHS_DOWN and d.kernel.holders() == [0]
    d.feed(m.HeartbeatRecovered(t_ns=d.t, path=1))
    assert d.state == M.ALTERNATE_ACTIVE and d.kernel.holders() == [1]


def test_a_failed_step_is_retried_then_the_move_given_up_then_tried_again_later():
    d = Driver(fail_steps={(m.PlumbNic.type, 1)})  # the alternate's plumb fails once
    step = d.feed(m.LinkDown(t_ns=d.t, path=0))
    assert step.dst == M.FAILING_OVER
    assert d.state == M.ALTERNATE_ACTIVE and d.kernel.holders() == [1]  # issued again: it worked

    d = Driver()
    d.kernel.present[1] = False  # every step on the alternate fails (ENODEV), no event said so
    d.feed(m.LinkDown(t_ns=d.t, path=0))
    assert d.state == M.ALL_PATHS_DOWN and d.mach.active is None
    attempts = [s for _, s in d.log if "issue the move again" in s.reason]
    assert len(attempts) == M.MOVE_ATTEMPTS - 1
    assert M.TIMER_MOVE in d.mach.timers  # given up, but not for good
    d.kernel.present[1] = True
    d.advance(6_000 * MS)
    assert d.state == M.ALTERNATE_ACTIVE and d.kernel.holders() == [1]


def test_operator_offline_refuses_last_path_unless_forced():
    d = Driver()
    d.feed(m.LinkDown(t_ns=d.t, path=1))
    step = d.feed(m.OperatorOffline(t_ns=d.t, path=0, who="uid=0"))
    assert step.dst == M.MONITORING and "refused" in step.reason
    assert d.mach.view().usable(0)
    step = d.feed(m.OperatorOffline(t_ns=d.t, path=0, who="uid=0", force=True))
    assert step.dst == M.ALL_PATHS_DOWN


def test_admin_down_failed_nic_waits_for_an_operator():
    d = Driver(admin_down_failed=True, failback_hold_ns=10 * MS)
    step = d.feed(m.HeartbeatLost(t_ns=d.t, path=0))
    assert [a.admin_down for a in step.actions if isinstance(a, m.DisableNic)] == [True]
    assert d.state == M.ALTERNATE_ACTIVE and d.mach.facts[0].offline
    d.feed(m.LinkDown(t_ns=d.t, path=0))  # it is down now: no probing, no failback
    d.advance(100 * MS)
    assert d.state == M.ALTERNATE_ACTIVE
    step = d.feed(m.OperatorOnline(t_ns=d.t, path=0, who="uid=0"))
    assert [type(a) for a in step.actions] == [m.PlumbNic]
    d.feed(m.LinkUp(t_ns=d.t, path=0))
    d.feed(m.HeartbeatRecovered(t_ns=d.t, path=0))
    d.advance(20 * MS)
    assert d.state == M.MONITORING and d.kernel.holders() == [0]


def test_planned_failover_and_failback():
    d = Driver(failback_auto=False)
    d.feed(m.HeartbeatRecovered(t_ns=d.t, path=1))
    d.feed(m.OperatorFailover(t_ns=d.t, who="uid=0"))
    assert d.state == M.ALTERNATE_ACTIVE and d.kernel.holders() == [1]
    d.advance(10_000 * MS)
    assert d.state == M.ALTERNATE_ACTIVE  # manual failback policy
    d.feed(m.OperatorFailback(t_ns=d.t, who="uid=0"))
    assert d.state == M.MONITORING and d.kernel.holders() == [0]


def test_peer_notice_is_followed_unless_contradicted():
    d = Driver()
    d.feed(m.LinkDown(t_ns=d.t, path=1))
    assert d.feed(m.PeerNotice(t_ns=d.t, path=1, active=1)).dst == M.MONITORING  # contradicted
    d.feed(m.LinkUp(t_ns=d.t, path=1))
    d.feed(m.PeerNotice(t_ns=d.t, path=1, active=1))
    assert d.state == M.ALTERNATE_ACTIVE and d.kernel.holders() == [1]
    step = d.feed(m.PeerNotice(t_ns=d.t, path=1, active=1))
    assert not step.changed  # already there


def test_flapping_primary_is_damped():
    d = Driver(failback_hold_ns=50 * MS)  # short enough that every flap could fail back
    changes_per_flap = []
    for _ in range(50):  # 5 Hz for 10 s
        before = len(d.log)
        for ev in (m.LinkDown(t_ns=d.t, path=0), m.LinkUp(t_ns=d.t + 20 * MS, path=0),
                   m.HeartbeatRecovered(t_ns=d.t + 30 * MS, path=0)):
            d.advance(ev.t_ns - d.t)
            d.feed(ev)
        d.advance(170 * MS)
        changes_per_flap.append(sum(1 for _, s in d.log[before:] if s.src != s.dst))
    p = d.mach.params
    # Each flap can cost a failover and a failback (4 state changes) until the penalty reaches
    # suppress; the penalty decays a little between flaps, so allow one flap more.
    assert sum(changes_per_flap) <= 4 * (-(-p.damp_suppress // p.damp_penalty) + 1), changes_per_flap
    assert sum(changes_per_flap[10:]) == 0
    assert d.mach.view().damped(0) and d.state == M.ALTERNATE_ACTIVE


def test_suspect_ends_when_the_active_path_answers_even_if_it_is_damped():
    d = Driver(failback_hold_ns=50 * MS)
    for _ in range(10):  # the primary flaps until it is damped; the identity waits on the alternate
        for ev in (m.LinkDown(t_ns=d.t, path=0), m.LinkUp(t_ns=d.t + 20 * MS, path=0),
                   m.HeartbeatRecovered(t_ns=d.t + 30 * MS, path=0)):
            d.advance(ev.t_ns - d.t)
            d.feed(ev)
        d.advance(170 * MS)
    assert d.mach.view().damped(0) and d.state == M.ALTERNATE_ACTIVE
    d.feed(m.PeerNotice(t_ns=d.t, path=0, active=0))  # the peer moved back: agreement wins
    assert d.state == M.MONITORING and d.kernel.holders() == [0] and d.mach.view().damped(0)
    assert d.feed(m.HeartbeatSuspect(t_ns=d.t, path=0, misses=1)).dst == M.SUSPECT
    assert d.feed(m.HeartbeatCleared(t_ns=d.t, path=0)).dst == M.MONITORING


def test_restart_mid_move_finishes_the_sequence():
    d = Driver(fail_steps=set(range(1, 100)))  # every kernel step "crashes" (fails) ...
    d.fail_steps = set()
    step = d.mach.step(m.LinkDown(t_ns=d.t, path=0))  # ... or rather: the move starts, no step runs
    assert step.dst == M.FAILING_OVER
    restarted = M.Machine.from_snapshot(d.mach.params, d.mach.snapshot())
    step = restarted.step(m.DaemonStarted(t_ns=d.t + 1, holder=None, carrier=(False, True), macs=MACS[:2]))
    assert step.dst == M.FAILING_OVER and step.active == 1
    assert any(isinstance(a, m.EnableNic) and a.path == 1 for a in step.actions)


def test_absent_peer_does_not_move_the_identity():
    d = Driver(heard=False)
    step = d.feed(m.HeartbeatLost(t_ns=d.t, path=0))
    assert step.dst == M.ALL_PATHS_DOWN and d.kernel.holders() == [0]
    d.feed(m.HeartbeatLost(t_ns=d.t, path=1))
    step = d.feed(m.HeartbeatRecovered(t_ns=d.t, path=0))  # the peer appears
    # The identity is made sure of in place (an idempotent move onto the NIC that holds it).
    assert step.dst == M.FAILING_OVER and step.active == 0
    assert d.state == M.MONITORING and d.kernel.holders() == [0]


def test_started_adopts_the_kernel_layout_without_moving():
    mach = M.Machine(M.Params(paths=("p", "a")))
    step = mach.step(m.DaemonStarted(t_ns=1, holder=1, carrier=(True, True), macs=MACS[:2]))
    assert step.dst == M.ALTERNATE_ACTIVE
    assert not any(isinstance(a, m.KERNEL_ACTIONS) for a in step.actions)


def test_params_round_trip():
    p = M.Params(paths=("a", "b"), enable_delay_ns=5)
    assert M.Params.from_dict(p.to_dict()) == p


def test_readme_renders_the_table():
    import pathlib
    readme = pathlib.Path(__file__).resolve().parents[2] / "README.md"
    if not readme.exists():
        pytest.fail("README.md missing")
    assert M.render_table_markdown() in readme.read_text()


def test_a_reboot_carries_damping_over_to_the_new_clock():
    """CLOCK_MONOTONIC starts again after a reboot: the recorded times move onto the new clock,
    moved on by the time the daemon was down (from the wall clock), so the penalty keeps decaying."""
    d = Driver(damp_half_life_ns=1000 * MS, damp_suppress=1500.0, damp_reuse=900.0, peer_window_ns=10 * MS)
    for _ in range(2):
        d.feed(m.LinkDown(t_ns=d.t, path=0))
        d.advance(20 * MS)
        d.feed(m.LinkUp(t_ns=d.t, path=0))
        d.feed(m.HeartbeatRecovered(t_ns=d.t, path=0, replies=3))
        d.advance(20 * MS)
    view = d.mach.view()
    assert view.damped(0)
    before = view.penalty(0)
    state = d.mach.current
    rebooted = M.step(d.mach.params, state, m.DaemonStarted(t_ns=5 * MS, holder=1, carrier=(True, True),
                                                            macs=MACS[:2], down_ns=1000 * MS))
    after = M.Machine(d.mach.params, rebooted.state).view()
    assert rebooted.state.now == 5 * MS
    assert abs(after.penalty(0) - before / 2) < before * 0.05  # one half-life of downtime
    assert dict(rebooted.state.timers)["reuse:0"] > rebooted.state.now  # re-armed on the new clock


def test_a_snapshot_missing_keys_restores_what_it_can():
    params = M.Params(paths=("p0", "p1"))
    assert M.State.from_dict({}, params) == M.initial_state(params)
    state = M.State.from_dict({"state": "Alternate-Active", "active": 1, "facts": [{"health": "up"}]}, params)
    assert state.name == "Alternate-Active" and state.active == 1
    assert [p.name for p in state.paths] == ["p0", "p1"] and state.paths[0].health == "up"
