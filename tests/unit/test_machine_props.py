"""The pure step against the invariants, driven by hypothesis' stateful testing (failures shrink
to the shortest sequence of events that breaks a rule).

One node's machine runs against a small kernel model (tests/unit/test_machine.py's KernelSim):
its kernel actions are carried out at once and their outcomes fed back, as the shell does.
"""
from __future__ import annotations

import dataclasses

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hanet import machine as M
from hanet import model as m
from hanet.fold import LogFold

from test_machine import MS, Driver

PATH_EVENTS = (m.HeartbeatSuspect, m.HeartbeatLost, m.HeartbeatCleared, m.HeartbeatRecovered,
               m.LinkDown, m.LinkUp, m.LinkGone, m.LinkReturned, m.AddressRemoved)


class OneNode(RuleBasedStateMachine):
    @initialize(n=st.sampled_from([2, 3]), delay=st.sampled_from([0, 20 * MS]),
                down_hold=st.sampled_from([0, 5 * MS]), damping=st.booleans(), quality=st.booleans())
    def start(self, n, delay, down_hold, damping, quality):
        self.n = n
        self.d = Driver(n=n, enable_delay_ns=delay, down_hold_ns=down_hold, damping=damping,
                        quality=quality, failback_hold_ns=200 * MS, move_timeout_ns=500 * MS)

    def feed(self, ev: m.Event) -> None:
        before = self.d.mach.current
        step = self.d.feed(ev)  # never raises: the table is total
        assert M.step(self.d.mach.params, before, ev) == step  # pure: same input, same step

    @rule(kind=st.sampled_from(PATH_EVENTS), path=st.integers(0, 2))
    def path_event(self, kind, path):
        self.feed(kind(t_ns=self.d.t, path=path % self.n))

    @rule(path=st.integers(0, 2), loss=st.sampled_from([0, 500_000]))
    def quality(self, path, loss):
        self.feed(m.PathQuality(t_ns=self.d.t, path=path % self.n, loss_ppm=loss))

    @rule(path=st.integers(0, 2), active=st.integers(0, 2))
    def peer_notice(self, path, active):
        self.feed(m.PeerNotice(t_ns=self.d.t, path=path % self.n, active=active % self.n))

    @rule(path=st.one_of(st.none(), st.integers(0, 2)), force=st.booleans())
    def operator_failover(self, path, force):
        self.feed(m.OperatorFailover(t_ns=self.d.t, path=None if path is None else path % self.n, force=force))

    @rule(force=st.booleans())
    def operator_failback(self, force):
        self.feed(m.OperatorFailback(t_ns=self.d.t, force=force))

    @rule(path=st.integers(0, 2), force=st.booleans(), online=st.booleans())
    def operator_offline_online(self, path, force, online):
        p = path % self.n
        self.feed(m.OperatorOnline(t_ns=self.d.t, path=p) if online else
                  m.OperatorOffline(t_ns=self.d.t, path=p, force=force))

    @rule(kind=st.sampled_from([m.PlumbNic.type, m.ConfigureNic.type, m.EnableNic.type, m.DisableNic.type]),
          path=st.integers(0, 2))
    def next_step_fails(self, kind, path):
        self.d.fail_steps.add((kind, path % self.n))

    @rule(ms=st.sampled_from([1, 10, 100, 1000, 5000, 60000]))
    def time_passes(self, ms):
        self.d.advance(ms * MS)

    @precondition(lambda self: self.d.state in M.MOVING)
    @rule()
    def crash_and_restart(self):
        """kill -9 mid-move: a new run folds the state and reads the kernel back."""
        k = self.d.kernel
        holders = [p for p in k.holders() if k.present[p]]
        self.d.timers.clear()
        self.feed(m.DaemonStarted(t_ns=self.d.t, holder=holders[0] if len(holders) == 1 else None,
                                  carrier=tuple(self.d.mach.facts[p].carrier for p in range(self.n)),
                                  macs=tuple(mac if present else "" for mac, present in zip(k.macs, k.present)),
                                  present=tuple(k.present)))

    # -- invariants
    @invariant()
    def identity_on_one_nic(self):  # I1 (a NIC that refused to be cleared, and said so, aside)
        holders = [p for p in self.d.kernel.holders() if p not in self.d.kernel.stuck]
        if self.d.state in M.ACTIVE:
            assert holders == [self.d.mach.active], (self.d.state, holders, self.d.mach.active)
        elif self.d.state == M.ALL_PATHS_DOWN:
            assert len(holders) <= 1, holders

    @invariant()
    def no_shared_mac(self):  # I2
        macs = self.d.kernel.present_macs()
        assert len(set(macs)) == len(macs), self.d.kernel.macs

    @invariant()
    def moves_have_a_deadline(self):  # I4
        if self.d.state in M.MOVING:
            assert M.TIMER_MOVE in self.d.mach.timers and self.d.mach.move is not None

    @invariant()
    def damped_is_derived(self):
        view = self.d.mach.view()
        for p, f in enumerate(self.d.mach.facts):
            assert view.damped(p) == (f.suppressed and view.penalty(p) >= self.d.mach.params.damp_reuse)

    @invariant()
    def snapshot_round_trips(self):
        state = self.d.mach.current
        assert M.State.from_dict(state.to_dict(), self.d.mach.params) == state

    def teardown(self):
        if not hasattr(self, "d"):
            return
        # Replay: the shared fold reproduces every recorded step from the inputs alone.
        fold = LogFold()
        fold.configure(self.d.mach.params)
        for ev, step in self.d.log:
            assert fold.feed({"k": "event", "e": m.to_dict(ev)}) == step


OneNode.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestOneNode = OneNode.TestCase


def test_params_changes_are_adapted_by_name():
    params = M.Params(paths=("p0", "p1"))
    mach = M.Machine(params)
    mach.step(m.DaemonStarted(t_ns=1, holder=1, carrier=(True, True), macs=("02:00:00:00:00:01", "02:00:00:00:00:02")))
    changes = mach.reconfigure(dataclasses.replace(params, paths=("p1", "new", "p0")))
    assert mach.active == 0 and [f.name for f in mach.facts] == ["p1", "new", "p0"]
    assert any("added" in c for c in changes) and any("reordered" in c for c in changes)


class Notices:
    """The notices between two nodes as the prober carries them: each has an id (increasing per
    sender) and carries the id of the newest notice its sender had acted on (``SendNotice.seen``);
    one older than a notice already heard is dropped; one whose sender had not acted on the
    receiver's latest notice arrives marked ``crossed``. In flight until delivered, in any order;
    lost on a cable that is down."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.flight: list[tuple[int, m.SendNotice, int]] = []  # (receiver, notice, id)
        self.logged = [len(d.log) for d in nodes]
        self.last_sent = [0, 0]
        self.heard = [0, 0]
        self.next_id = 1

    def collect(self, up: list[bool]) -> None:
        for i, d in enumerate(self.nodes):
            new, self.logged[i] = d.log[self.logged[i]:], len(d.log)
            for _, step in new:
                for act in step.actions:
                    if isinstance(act, m.SendNotice):
                        self.last_sent[i] = self.next_id
                        if up[act.path]:
                            self.flight.append((1 - i, act, self.next_id))
                        self.next_id += 1

    def deliver(self, k: int, up: list[bool]) -> None:
        to, act, nid = self.flight.pop(k)
        if nid > self.heard[to]:
            self.heard[to] = nid
            d = self.nodes[to]
            d.feed(m.PeerNotice(t_ns=d.t, path=act.path, active=act.active, peer_seq=nid,
                                crossed=act.seen < self.last_sent[to]))
        self.collect(up)

    def deliver_all(self, up: list[bool]) -> None:
        """What is in flight now arrives; what that provokes is in flight after."""
        for _ in range(len(self.flight)):
            self.deliver(0, up)


class TwoNodes(RuleBasedStateMachine):
    """I3: two nodes joined by two cables; faults hit a cable for both nodes (each learns it on its
    own), notices take their time and may overtake each other, operators act on either node. Once
    the faults stop and one detection time plus the hold-down has passed, both hold their
    identities on the same cable whenever some cable works, and stay there."""

    @initialize(damping=st.booleans(), delay=st.sampled_from([0, 20 * MS]), auto=st.booleans())
    def start(self, damping, delay, auto):
        params = dict(damping=damping, enable_delay_ns=delay, failback_hold_ns=200 * MS, failback_auto=auto,
                      move_timeout_ns=500 * MS, damp_half_life_ns=1000 * MS)
        self.nodes = [Driver(n=2, **params), Driver(n=2, **params)]
        self.up = [True, True]
        self.wire = Notices(self.nodes)
        self.wire.collect(self.up)

    @rule(path=st.integers(0, 1), carrier=st.booleans())
    def cable_fails(self, path, carrier):
        self.up[path] = False
        for d in self.nodes:
            d.feed(m.LinkDown(t_ns=d.t, path=path) if carrier else m.HeartbeatLost(t_ns=d.t, path=path))
        self.wire.collect(self.up)

    @rule(path=st.integers(0, 1), carrier=st.booleans())
    def cable_heals(self, path, carrier):
        self.up[path] = True
        for d in self.nodes:
            if carrier:
                d.feed(m.LinkUp(t_ns=d.t, path=path))
            d.feed(m.HeartbeatRecovered(t_ns=d.t, path=path, replies=3))
        self.wire.collect(self.up)

    @rule(node=st.integers(0, 1), path=st.one_of(st.none(), st.integers(0, 1)))
    def operator_failover(self, node, path):
        d = self.nodes[node]
        d.feed(m.OperatorFailover(t_ns=d.t, path=path))
        self.wire.collect(self.up)

    @precondition(lambda self: self.wire.flight)
    @rule(k=st.integers(0, 7))
    def a_notice_arrives(self, k):
        self.wire.deliver(k % len(self.wire.flight), self.up)

    @rule(ms=st.sampled_from([1, 10, 100, 1000]))
    def time_passes(self, ms):
        for _ in range(ms // 1 if ms < 10 else 10):
            for d in self.nodes:
                d.advance(max(1, ms // 10) * MS)
            self.wire.collect(self.up)

    @invariant()
    def settled_nodes_agree(self):  # I3, checked on a copy settled forward in time
        if not any(self.up):
            return
        import copy
        probe = copy.copy(self)
        probe.nodes, probe.up, probe.wire = copy.deepcopy((self.nodes, self.up, self.wire))
        changes = []
        for _ in range(50):  # 5 s in 100 ms steps: detection, hold-down and the move deadlines
            before = [len(d.log) for d in probe.nodes]
            for d in probe.nodes:
                d.advance(100 * MS)
            probe.wire.collect(probe.up)
            probe.wire.deliver_all(probe.up)
            changes.append(sum(s.src != s.dst for d, n in zip(probe.nodes, before) for _, s in d.log[n:]))
        a, b = probe.nodes
        assert sum(changes[-10:]) == 0, ("still moving", changes)  # no endless chase
        if a.state in M.STABLE and b.state in M.STABLE:
            assert a.mach.active == b.mach.active, (a.state, a.mach.active, b.state, b.mach.active, self.up)


TwoNodes.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestTwoNodes = TwoNodes.TestCase
