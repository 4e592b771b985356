"""One suite for both sessions: the C one the probe loop runs (_fastprobe.SessionModel) and the
pure-Python reference (hanet.session.Session)."""
from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hanet import _fastprobe, model, session, wire

IMPLS = [pytest.param(session.Session, id="python"), pytest.param(_fastprobe.SessionModel, id="cython")]
MS = 1_000_000
U64_MAX = 2**64 - 1


def make(impl, **kw):
    args = dict(interval_ns=10 * MS, multiplier=3, recover_count=3, window=64, seq_start=1000)
    return impl(**{**args, **kw})


def answer(s, now, peer_seq, rtt=50_000):
    """The peer answers the request just sent."""
    return s.reply(peer_seq, s.seq, s.sent_ns, now + rtt)


@pytest.mark.parametrize("impl", IMPLS)
def test_recovered_after_recover_count_replies_then_suspect_lost_cleared(impl):
    s = make(impl)
    now, peer = 0, 5000
    for k in range(3):
        s.request(now)
        peer += 1
        assert answer(s, now, peer) == "ok"
        now += 10 * MS
    assert [type(e) for e in s.drain()] == [model.HeartbeatRecovered]
    assert s.state == "up" and s.heard
    s.request(now)
    now += 10 * MS
    s.request(now)  # the first request's deadline passed: one miss
    assert [type(e) for e in s.drain()] == [model.HeartbeatSuspect]
    peer += 1
    assert answer(s, now, peer) == "ok"
    assert [type(e) for e in s.drain()] == [model.HeartbeatCleared]
    for _ in range(4):
        now += 10 * MS
        s.request(now)
        s.overdue(now + 10 * MS)
    events = s.drain()
    assert [type(e) for e in events] == [model.HeartbeatSuspect, model.HeartbeatLost]
    assert events[1].misses == 3 and s.state == "lost"


@pytest.mark.parametrize("impl", IMPLS)
def test_a_reply_counts_only_for_the_request_outstanding(impl):
    s = make(impl)
    seq = s.request(0)
    assert s.reply(1, seq - 1, s.sent_ns, 10) == "late"
    assert s.reply(2, seq, s.sent_ns + 1, 10) == "late"  # same seq, another run's send time
    assert s.reply(3, seq, s.sent_ns, 10) == "ok"
    assert s.reply(4, seq, s.sent_ns, 10) == "late"  # answered already


@pytest.mark.parametrize("impl", IMPLS)
def test_the_first_reply_of_a_run_closes_the_window_below_it(impl):
    s = make(impl, window=64)
    assert s.frame(100) == "ok"  # before any reply: a request of the peer, answered
    assert s.frame(90) == "ok"
    s.request(0)
    assert answer(s, 0, 120) == "ok"
    # Everything the peer sent before its first reply of this run is old now, recorded or not.
    for old in (101, 110, 119, 120):
        assert s.frame(old) in ("replay", "stale")
    assert s.frame(121) == "ok"


@pytest.mark.parametrize("impl", IMPLS)
def test_replay_and_stale(impl):
    s = make(impl, window=8)
    assert s.frame(50) == "ok"
    assert s.frame(50) == "replay"
    assert s.frame(45) == "ok"
    assert s.frame(45) == "replay"
    assert s.frame(42) == "stale"
    assert s.frame(5000) == "ok"
    assert s.frame(50) == "stale"


@pytest.mark.parametrize("impl", IMPLS)
def test_the_largest_sequence_number_near_the_window_top_returns(impl):
    # Within 1024 of the top: the window slides over the end of the space (once looped for ever).
    s = make(impl, window=1024)
    assert s.frame(U64_MAX - 5) == "ok"
    assert s.frame(U64_MAX) == "ok"
    assert s.frame(U64_MAX) == "replay"
    assert s.frame(U64_MAX - 5) == "replay"
    assert s.frame(U64_MAX - 3) == "ok"


@pytest.mark.parametrize("impl", IMPLS)
def test_sequence_exhaustion_is_an_alarm_never_a_reuse(impl):
    s = make(impl, seq_start=U64_MAX - (1 << 32) - 1)
    assert s.request(0) == U64_MAX - (1 << 32)
    assert s.drain() == []
    assert s.request(10 * MS) == U64_MAX - (1 << 32) + 1
    low = [e for e in s.drain() if isinstance(e, model.SequenceLow)]
    assert low and low[0].remaining == (1 << 32) - 1
    s2 = make(impl, seq_start=U64_MAX - 1)
    assert s2.request(0) == U64_MAX
    assert s2.drain() == [model.SequenceLow(t_ns=0, remaining=0)]
    assert s2.request(10 * MS) == 0  # nothing left: nothing sent, nothing reused
    assert s2.drain() == [model.SequenceLow(t_ns=10 * MS, remaining=0)]  # refused: told once
    assert s2.request(20 * MS) == 0
    assert s2.drain() == []


def up_with_rtt(s, rtt=100_000, start=0):
    """Three answered requests at ``rtt``: the path is up, its reply timeout the 0.25 ms floor."""
    now, peer = start, 5000
    for _ in range(3):
        s.request(now)
        peer += 1
        assert answer(s, now, peer, rtt=rtt) == "ok"
        now += 10 * MS
    assert s.state == "up"
    s.drain()
    return now


def questioned(s, now):
    """A request at ``now`` goes unanswered past the 0.25 ms timeout: a confirmation at once."""
    s.request(now)
    assert s.overdue(now + 250_000) and s.request(now + 250_000, True) > 0
    return now + 250_000


def confirm_until_lost(s, now, limit=200):
    """What the loop does while nothing answers: at each deadline, a confirmation if asked."""
    for _ in range(limit):
        now = s.deadline()
        if not now or not s.overdue(now):
            return now
        assert s.request(now, True) > 0
    raise AssertionError("never decided")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("confirm_ms", [1, 3, 5])
def test_confirmation_probing_declares_lost_confirm_ms_after_the_first_overdue_reply(impl, confirm_ms):
    s = make(impl, confirm_ns=confirm_ms * MS)
    fault = up_with_rtt(s)
    s.request(fault)                      # the fault: this one is never answered
    assert s.deadline() == fault + 250_000  # the RTT estimate (its floor), not a whole interval
    lost_at = confirm_until_lost(s, fault)
    events = s.drain()
    assert [type(e) for e in events] == [model.HeartbeatSuspect, model.HeartbeatLost]
    first = fault + 250_000
    lost = events[1]
    assert lost.confirm_first_ns == first and lost.first_miss_ns == first
    # judged when the floor ends: neither one interval nor one more confirmation wait later
    assert lost.t_ns == lost_at == first + confirm_ms * MS
    assert lost.confirms_sent == confirm_ms * MS // 250_000 >= 2  # multiplier - 1 at least
    assert s.request(lost_at + 1) == 0 or s.state == "lost"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("multiplier", [2, 3, 5])
def test_a_reply_timeout_grown_by_slow_answers_never_delays_the_verdict(impl, multiplier):
    # Mostly quick answers and a few slow ones (a busy host): srtt + 4 rttvar grows to several
    # ms, while the slowest answer (2 ms) leaves the window at the 5 ms floor. The confirmations
    # then go closer than the timeout, and the path is judged when the window ends.
    s = make(impl, confirm_ns=5 * MS, multiplier=multiplier)
    now = up_with_rtt(s, rtt=100_000)
    for k, rtt in enumerate((2 * MS, 100_000, 2 * MS, 2 * MS)):
        s.request(now)
        assert answer(s, now, 6000 + k, rtt=rtt) == "ok"
        now += 10 * MS
    s.request(now)
    grown = s.deadline() - now
    assert grown > 2 * MS  # waited whole, a few of them would end the window late
    first = s.deadline()
    lost_at = confirm_until_lost(s, now)
    lost = s.drain()[-1]
    assert isinstance(lost, model.HeartbeatLost)
    assert lost_at == lost.t_ns == first + 5 * MS
    assert lost.confirms_sent >= multiplier - 1


@pytest.mark.parametrize("impl", IMPLS)
def test_multiplier_minus_one_confirmations_are_needed_even_past_the_floor(impl):
    s = make(impl, confirm_ns=250_000, multiplier=5)
    fault = up_with_rtt(s)
    s.request(fault)
    confirm_until_lost(s, fault)
    lost = s.drain()[-1]
    assert isinstance(lost, model.HeartbeatLost) and lost.confirms_sent == 4
    assert lost.t_ns == fault + 5 * 250_000


@pytest.mark.parametrize("impl", IMPLS)
def test_a_silence_shorter_than_confirm_ms_is_never_lost(impl):
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    peer = 9000
    for pause in (250_000, 1 * MS, 3 * MS, 4_500_000, 4_900_000):
        s.request(now)                    # the peer stops just as this one leaves
        first = now + 250_000
        while s.deadline() and s.deadline() < first + pause:  # confirmations, all unanswered
            t = s.deadline()
            assert s.overdue(t), "declared lost within the floor"
            assert s.request(t, True) > 0
        peer += 1                         # it resumes and answers the last request it got
        assert s.reply(peer, s.seq, s.sent_ns, first + pause) == "ok"
        assert s.state == "up"
        kinds = [type(e) for e in s.drain()]
        # a silence answered at the first confirmation is no event; a longer one is told
        told = [] if pause <= 250_000 else [model.HeartbeatSuspect, model.HeartbeatCleared]
        assert kinds == told, (pause, kinds)
        now += 20 * MS


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("rtt_ms, window_ms", [(0.1, 5), (4, 8), (20, 30)])
def test_a_peer_that_lately_answered_slowly_gets_twice_that_before_it_is_lost(impl, rtt_ms, window_ms):
    # Answers that took 4 ms (a peer starved, or reading behind a flood of junk): a silence is
    # evidence only past twice that, not the 5 ms floor; never past multiplier x interval (30 ms).
    s = make(impl, confirm_ns=5 * MS, reply_timeout_ns=250_000)
    now = up_with_rtt(s, rtt=int(rtt_ms * MS))
    s.request(now)
    first = s.deadline()
    lost_at = confirm_until_lost(s, now)
    assert first + window_ms * MS <= lost_at <= first + window_ms * MS + 250_000, (lost_at - first) / MS
    assert isinstance(s.drain()[-1], model.HeartbeatLost)


def confirm_hearing_elsewhere(s, heard_at, limit=200):
    """confirm_until_lost, with the peer heard on another path at ``heard_at`` (None: never)."""
    for _ in range(limit):
        due = s.deadline()
        if heard_at is not None and heard_at < due:
            s.witness(heard_at)
            if s.state == "lost":
                return heard_at
            heard_at = None
        elif not s.overdue(due):
            return due
        else:
            assert s.request(due, True) > 0
    raise AssertionError("never decided")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("heard_elsewhere_ms, lost_after_ms", [
    (None, 5),    # no other path can tell: the window alone
    (5.1, 5.35),  # the peer answered on another path after the window and this one stayed
                  # silent one more question's wait (0.25 ms): it is dead
    (0.1, 30),    # heard elsewhere just after the silence began, then never: it may have stopped
    (-1, 30),     # nothing from the peer anywhere since: it is stopped or starved, not this path
])
def test_a_peer_silent_on_every_path_is_lost_only_after_bfds_detection_time(
        impl, heard_elsewhere_ms, lost_after_ms):
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    if heard_elsewhere_ms is not None:
        s.witness(now)                    # another path, up, heard the peer before the fault
    s.request(now)
    first = s.deadline()
    heard = first + int(heard_elsewhere_ms * MS) if heard_elsewhere_ms and heard_elsewhere_ms > 0 else None
    lost_at = confirm_hearing_elsewhere(s, heard)
    lost = s.drain()[-1]
    assert isinstance(lost, model.HeartbeatLost) and lost.t_ns == lost_at
    # the record says why: judged when the window ended, and when the peer was heard elsewhere
    assert lost.judged_ns == first + 5 * MS
    assert lost.witnessed_ns == (heard if lost_after_ms == 5.35 else 0)
    if lost_after_ms == 30:
        # judged when the window ended, the questions since go at its share of multiplier - 1
        assert first + 30 * MS <= lost_at < first + 30 * MS + 2_500_000
        assert lost.confirms_sent <= 5 * MS // 250_000 + 11  # every 0.25 ms in the window, then 2.5
    else:
        assert lost_at == first + int(lost_after_ms * MS)


def silent_through_the_window(impl, to_the_end=True):
    """A path up, another path that heard the peer, then silence: every question of the 5 ms
    window asked and unanswered (the one at its end too, unless ``to_the_end`` is False).
    Returns the session, the window's end and the questions (seq, send time)."""
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    s.witness(now)
    s.request(now)
    end = s.deadline() + 5 * MS
    asked = []
    while s.deadline() < end or to_the_end and s.deadline() == end:
        t = s.deadline()
        assert s.overdue(t) and s.request(t, True) > 0
        asked.append((s.seq, s.sent_ns))
    return s, end, asked


@pytest.mark.parametrize("impl", IMPLS)
def test_a_peer_heard_elsewhere_just_before_the_judgement_proves_nothing(impl):
    # The peer is heard on the other path 0.1 ms before the window ends, then stops: its silence
    # here may be its own, so the path is not lost then; heard again after the judgement, it is,
    # once this path stays silent one more question's wait.
    s, end, _ = silent_through_the_window(impl, to_the_end=False)
    s.witness(end - 100_000)
    assert s.deadline() == end and s.overdue(end) and s.request(end, True) > 0
    assert s.state == "suspect"
    s.witness(end + 150_000)
    assert s.state == "suspect" and s.deadline() == end + 400_000
    assert not s.overdue(end + 400_000)
    assert s.state == "lost" and s.drain()[-1].t_ns == end + 400_000


@pytest.mark.parametrize("impl", IMPLS)
def test_a_peer_that_resumes_answers_every_path_before_any_is_lost(impl):
    # The peer stopped for longer than the window: both paths judged. It resumes, and its answer
    # on the other path is read first; this path's answer, read 30 us later, still clears it.
    s, end, _ = silent_through_the_window(impl)
    resumed = end + 2 * MS
    s.witness(resumed)
    assert s.state == "suspect"
    assert s.reply(8100, s.seq, s.sent_ns, resumed + 30_000) == "ok" and s.state == "up"


@pytest.mark.parametrize("impl", IMPLS)
def test_a_late_answer_after_the_judgement_still_clears_the_path(impl):
    # Judged (window over, every question unanswered) but the peer not yet heard elsewhere: a
    # late answer to one of the questions clears the path; the peer heard elsewhere then changes
    # nothing.
    s, end, asked = silent_through_the_window(impl)
    seq, sent = asked[-3]
    assert s.reply(8000, seq, sent, end + 100_000) == "ok" and s.state == "up"
    s.witness(end + 200_000)
    assert s.state == "up"
    assert [type(e) for e in s.drain()] == [model.HeartbeatSuspect, model.HeartbeatCleared]


def questions_until_lost(s, now, limit=200):
    """confirm_until_lost, keeping the send time of each question."""
    asked = []
    for _ in range(limit):
        now = s.deadline()
        if not now or not s.overdue(now):
            return now, asked
        assert s.request(now, True) > 0
        asked.append(now)
    raise AssertionError("never decided")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("multiplier", [2, 3])
def test_a_reply_timeout_grown_past_the_window_still_fills_it_with_questions(impl, multiplier):
    # One path, the silence seen first in the peer's schedule, a reply timeout (6 ms) longer than
    # the whole window (5 ms), as one slow answer read late leaves it. Asked only once a timeout,
    # two frames lost at random would pass for a dead path; the window still gets its eight
    # questions, and the path is judged when it ends.
    s = make(impl, confirm_ns=5 * MS, multiplier=multiplier, reply_timeout_ns=6 * MS)
    now = up_with_rtt(s)
    t = peer_on_schedule(s, now)
    first = s.deadline()
    assert first == t + 10 * MS + 250_000  # the peer's next request overdue (on time so far)
    lost_at, asked = questions_until_lost(s, t)
    lost = s.drain()[-1]
    assert isinstance(lost, model.HeartbeatLost) and lost_at == first + 5 * MS
    assert lost.confirms_sent == len(asked) == session.CONFIRM_QUESTIONS
    gaps = [b - a for a, b in zip([first] + asked, asked + [lost_at])]
    assert max(gaps) <= 5 * MS // session.CONFIRM_QUESTIONS


@pytest.mark.parametrize("impl", IMPLS)
def test_a_question_asked_late_in_the_window_gets_its_whole_wait(impl):
    # The loop woke late (a starved host) and asks again 45 us before the window ends. That
    # question is given its reply timeout, not the 45 us left: its answer, 150 us on, clears the
    # path, and had it gone unanswered the path would be judged when its wait is over.
    for answered in (True, False):
        s = make(impl, confirm_ns=5 * MS)
        now = up_with_rtt(s)
        s.request(now)
        first = s.deadline()
        end = first + 5 * MS
        while s.deadline() + 250_000 < end - 45_000:
            t = s.deadline()
            assert s.overdue(t) and s.request(t, True) > 0
        late = end - 45_000
        assert s.overdue(late) and s.request(late, True) > 0
        assert s.deadline() >= late + 250_000
        if answered:
            assert s.reply(7000, s.seq, s.sent_ns, late + 150_000) == "ok"
            assert s.state == "up"
            assert [type(e) for e in s.drain()] == [model.HeartbeatSuspect, model.HeartbeatCleared]
        else:
            assert not s.overdue(s.deadline()) and s.state == "lost"
            assert s.drain()[-1].t_ns == late + 250_000


@pytest.mark.parametrize("impl", IMPLS)
def test_a_peer_stopped_for_longer_than_the_window_is_not_lost(impl):
    # The peer stops 8 ms, longer than the 5 ms floor, shorter than 30: silent on both paths.
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    s.witness(now)
    seq = s.request(now)
    sent = s.sent_ns
    t = now
    while s.deadline() and s.deadline() < now + 8 * MS:
        t = s.deadline()
        assert s.overdue(t), "lost while the peer was silent everywhere"
        assert s.request(t, True) > 0
    assert s.reply(9000, seq, sent, now + 8 * MS) == "ok"  # it resumes, answers the oldest first
    kinds = [type(e) for e in s.drain()]
    assert kinds == [model.HeartbeatSuspect, model.HeartbeatCleared] and s.state == "up"


@pytest.mark.parametrize("impl", IMPLS)
def test_a_probe_of_the_peers_is_answered_but_no_point_of_its_schedule(impl):
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    t = peer_on_schedule(s, now)
    due = s.deadline()
    assert s.peer_request(30000, 7 * 10**12 + 3 * MS, t + 3 * MS, wire.REQUEST_PROBE) == "ok"
    assert s.deadline() == due and s.state == "up" and s.drain() == []


@pytest.mark.parametrize("impl", IMPLS)
def test_a_late_reply_to_the_request_first_overdue_clears(impl):
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    seq = s.request(now)
    sent = s.sent_ns
    assert s.overdue(now + 250_000) and s.request(now + 250_000, True) > 0
    assert s.overdue(now + 500_000) and s.request(now + 500_000, True) > 0
    assert s.reply(7000, seq, sent, now + 600_000) == "ok"   # slow, but an answer
    events = s.drain()
    assert [type(e) for e in events] == [model.HeartbeatSuspect, model.HeartbeatCleared]
    cleared = events[1]
    assert (cleared.rtt_ns, cleared.confirms_sent, cleared.confirms_answered,
            cleared.confirm_first_ns) == (600_000, 2, 0, now + 250_000)
    assert s.reply(7001, s.seq, s.sent_ns, now + 700_000) == "late"  # the suspicion is over
    assert s.reply(7002, seq, sent, now + 700_000) == "late"          # and its requests with it


@pytest.mark.parametrize("impl", IMPLS)
def test_a_confirmation_answered_at_once_clears_the_path_without_an_event(impl):
    s = make(impl, confirm_ns=1 * MS)
    now = up_with_rtt(s)
    questioned(s, now)
    assert s.state == "suspect"
    assert s.request(now + 400_000) == 0  # the schedule waits for the confirmation
    assert answer(s, now + 250_000, 6000, rtt=100_000) == "ok"
    assert s.drain() == [] and s.state == "up"  # a late or lost frame: nothing to tell


@pytest.mark.parametrize("impl", IMPLS)
def test_the_suspect_is_told_once_a_confirmation_goes_unanswered(impl):
    s = make(impl, confirm_ns=1 * MS)
    now = up_with_rtt(s)
    s.request(now)
    assert s.overdue(now + 250_000) and s.request(now + 250_000, True) > 0
    assert s.drain() == []
    assert s.overdue(now + 500_000) and s.request(now + 500_000, True) > 0
    suspect = s.drain()
    assert [type(e) for e in suspect] == [model.HeartbeatSuspect] and suspect[0].t_ns == now + 500_000
    assert answer(s, now + 500_000, 6000, rtt=100_000) == "ok"
    cleared = s.drain()[-1]
    assert isinstance(cleared, model.HeartbeatCleared)
    assert (cleared.confirms_sent, cleared.confirms_answered) == (2, 1)
    assert s.request(now + 10 * MS) > 0 and s.state == "up"  # back on the schedule
    assert s.deadline() < now + 11 * MS


@pytest.mark.parametrize("impl", IMPLS)
def test_the_peers_slack_is_four_times_how_far_its_requests_stray(impl):
    # Four mean deviations of the arrivals from the schedule (the peer's timer and the path in
    # one, averaged as RFC 6298 averages an RTT's), at least 0.25 ms, at most a quarter interval.
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    clock, t = 7 * 10**12, now + 5 * MS
    assert s.peer_request(30000, clock, t) == "ok" and s.deadline() == 0   # nothing to go by yet
    k = 0

    def slack_after(lateness_us):
        nonlocal k
        out = []
        for late_us in lateness_us:
            k += 1
            arrive = t + k * 10 * MS + late_us * 1000
            assert s.peer_request(30000 + k, clock + k * 10 * MS, arrive) == "ok"
            out.append(s.deadline() - arrive - 10 * MS)
        return out

    assert slack_after([0, 0]) == [250_000, 250_000]          # on time: the floor
    jittery = slack_after([200, 0] * 8)                       # every other one 200 us late
    assert 250_000 < jittery[-1] <= 4 * 200_000 and jittery == sorted(jittery)
    assert slack_after([3000, 0] * 3)[-1] == 10 * MS // 4     # 3 ms late: capped at a quarter
    assert slack_after([0] * 30)[-1] == 250_000               # on time again: back to the floor


def peer_on_schedule(s, now, count=2, phase=5 * MS, seq=20000, peer_clock=7 * 10**12):
    """The peer's scheduled requests, one an interval, arriving ``phase`` after ours (at ``now``,
    ``now`` + 10 ms, ...); returns the arrival time of the last."""
    for k in range(count):
        t = now + k * 10 * MS + phase
        assert s.peer_request(seq + k, peer_clock + k * 10 * MS + 30_000 * (k % 2), t) == "ok"
    return t


@pytest.mark.parametrize("impl", IMPLS)
def test_the_peers_schedule_turns_a_silent_path_suspect_before_our_own_request(impl):
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    s.request(now)
    assert answer(s, now, 6001) == "ok"
    last = peer_on_schedule(s, now - 10 * MS)   # its requests at now - 5 ms and now + 5 ms
    expected = last + 10 * MS + 250_000  # an interval and the slack's floor: it came on time
    assert s.deadline() == expected < now + 10 * MS + 250_000 + 10 * MS
    assert not s.overdue(expected - 1) and s.state == "up"
    assert s.overdue(expected) and s.state == "suspect"   # before our next request even leaves
    assert s.request(expected, True) > 0
    lost_at = confirm_until_lost(s, expected)
    events = s.drain()
    assert [type(e) for e in events] == [model.HeartbeatSuspect, model.HeartbeatLost]
    assert events[1].confirm_first_ns == expected
    assert expected + 5 * MS <= lost_at <= expected + 5 * MS + 250_000


@pytest.mark.parametrize("impl", IMPLS)
def test_a_confirmation_on_the_peers_silence_leaves_our_request_answerable(impl):
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    last = peer_on_schedule(s, now)
    due = last + 10 * MS + 250_000 + 10 * MS // 8
    seq, sent = s.request(due - 100_000), s.sent_ns  # ours leaves, then the peer's is overdue
    assert s.overdue(due) and s.request(due, True) > 0
    assert s.state == "suspect"
    assert s.reply(20100, seq, sent, due + 50_000) == "ok"   # the peer answers our scheduled one
    assert s.drain() == [] and s.state == "up"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["first", "off schedule", "confirm off"])
def test_the_peers_silence_counts_only_after_requests_on_its_schedule(impl, case):
    s = make(impl, confirm_ns=0 if case == "confirm off" else 5 * MS)
    now = up_with_rtt(s)
    if case == "first":
        assert s.peer_request(20000, 7 * 10**12, now) == "ok"
    elif case == "off schedule":   # the peer moved its schedule, or runs another interval
        peer_on_schedule(s, now)
        assert s.peer_request(20002, 7 * 10**12 + 14 * MS, now + 14 * MS) == "ok"
    else:
        peer_on_schedule(s, now)
    assert s.deadline() == 0
    assert not s.overdue(now + 100 * MS) and s.state == "up"
    assert s.drain() == []


@pytest.mark.parametrize("impl", IMPLS)
def test_a_confirmation_from_the_peer_makes_us_confirm_at_once(impl):
    # The peer does not hear us (a one-way fault towards it): we find out as soon as it does.
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    last = peer_on_schedule(s, now)
    t = last + 2 * MS
    assert s.peer_request(20002, 7 * 10**12 + 12 * MS, t, True) == "ok"
    assert s.deadline() == t
    assert s.overdue(t) and s.state == "suspect" and s.request(t, True) > 0
    lost_at = confirm_until_lost(s, t)   # our confirmations go unanswered: the path is lost
    assert t + 5 * MS <= lost_at <= t + 5 * MS + 250_000
    assert isinstance(s.drain()[-1], model.HeartbeatLost)
    # while already suspect, or lost, a confirmation from the peer changes nothing
    assert s.peer_request(20003, 7 * 10**12 + 13 * MS, lost_at + 1, True) == "ok"
    assert s.deadline() == 0 and not s.overdue(lost_at + 1)


@pytest.mark.parametrize("impl", IMPLS)
def test_questions_asked_on_the_peers_word_are_echoes_and_echoes_are_not_echoed(impl):
    # Two nodes must not echo each other's doubts for ever. The questions we ask because the
    # peer's confirmation said it does not hear us go as echoes, until one of ours goes
    # unanswered (then the doubt is ours); an echo makes no one confirm. A doubt of the peer's
    # own is always taken up at once, even just after ours.
    s = make(impl, confirm_ns=5 * MS)
    now = up_with_rtt(s)
    questioned(s, now)
    assert not s.echoing                                                 # our own doubt
    assert answer(s, now + 250_000, 6000) == "ok" and s.state == "up"
    t = now + 400_000
    assert s.peer_request(20000, 7 * 10**12, t, wire.REQUEST_ECHO) == "ok"  # its echo: nothing
    assert s.deadline() == 0
    assert s.peer_request(20001, 7 * 10**12 + MS, t + MS, wire.REQUEST_CONFIRM) == "ok"
    assert s.deadline() == t + MS                                        # its own doubt
    assert s.overdue(t + MS) and s.echoing and s.request(t + MS, True) > 0
    assert s.overdue(s.deadline()) and not s.echoing                    # unanswered: ours now


@pytest.mark.parametrize("impl", IMPLS)
def test_a_peer_request_is_still_checked_against_the_replay_window(impl):
    s = make(impl, confirm_ns=5 * MS)
    up_with_rtt(s)
    assert s.peer_request(20000, 7 * 10**12, 50 * MS) == "ok"
    assert s.peer_request(20000, 7 * 10**12 + 10 * MS, 60 * MS) == "replay"
    assert s.deadline() == 0   # a replayed request is no evidence of a schedule


@pytest.mark.parametrize("impl", IMPLS)
def test_without_confirmation_probing_a_request_waits_an_interval(impl):
    s = make(impl)
    now = up_with_rtt(s)
    s.request(now)
    assert s.deadline() == now + 10 * MS
    assert not s.overdue(now + 10 * MS)
    assert s.state == "suspect"
    for k in (1, 2):
        s.request(now + k * 10 * MS)
    assert s.deadline() == now + 20 * MS + 250_000  # the last miss waits the reply timeout
    assert not s.overdue(s.deadline()) and s.state == "lost"
    lost = s.drain()[-1]
    assert isinstance(lost, model.HeartbeatLost)
    assert (lost.confirms_sent, lost.confirm_first_ns) == (0, 0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [dict(interval_ns=0), dict(multiplier=0), dict(recover_count=0),
                                 dict(window=0), dict(window=1025), dict(interval_ns=-1),
                                 dict(reply_timeout_ns=20 * MS), dict(seq_start=-1),
                                 dict(confirm_ns=-1), dict(confirm_ns=11 * MS),
                                 dict(multiplier=2.5)])
def test_bad_arguments_are_refused(impl, bad):
    with pytest.raises(ValueError):
        make(impl, **bad)


@pytest.mark.parametrize("impl", IMPLS)
def test_paused_session_is_silent_and_resume_starts_unknown(impl):
    s = make(impl, multiplier=2)
    s.pause()
    for k in range(4):
        s.request(k * 10 * MS)
    assert s.drain() == [] and s.state == "lost"
    s.resume()
    assert s.state == "unknown"
    for k in range(3):
        s.request((10 + k) * 10 * MS)
        assert answer(s, (10 + k) * 10 * MS, 100 + k) == "ok"
    assert [type(e) for e in s.drain()] == [model.HeartbeatRecovered]


class BothSessionsAgree(RuleBasedStateMachine):
    """Any sequence of requests, replies, deadlines and frames: same answers, same events."""

    @initialize(multiplier=st.integers(1, 5), recover=st.integers(1, 4), window=st.integers(1, 1024),
                timeout=st.sampled_from([0, 300_000, 2 * MS]),
                start=st.sampled_from([1, 10**18, U64_MAX - (1 << 32) - 2, U64_MAX - 3]),
                confirm=st.sampled_from([0, 0, 500_000, 3 * MS]))
    def setup(self, multiplier, recover, window, timeout, start, confirm):
        kw = dict(interval_ns=10 * MS, multiplier=multiplier, recover_count=recover, window=window,
                  reply_timeout_ns=timeout, seq_start=start, confirm_ns=confirm)
        self.py, self.c = session.Session(**kw), _fastprobe.SessionModel(**kw)
        self.now = 0
        self.peer = 1 << 40
        self.sent = []  # (seq, send time) of every request, for late replies

    def both(self, name, *args):
        a, b = getattr(self.py, name)(*args), getattr(self.c, name)(*args)
        assert a == b, (name, args, a, b)
        return a

    def send(self, *args):
        if self.both("request", self.now, *args):
            self.sent.append((self.py.seq, self.py.sent_ns))

    @rule(dt=st.one_of(st.integers(0, 30 * MS), st.integers(0, 400_000)))
    def request(self, dt):
        self.now += dt
        self.send()

    @rule(dt=st.one_of(st.integers(0, 30 * MS), st.integers(0, 400_000)))
    def overdue(self, dt):
        self.now += dt
        if self.both("overdue", self.now):
            self.send(True)  # what the loop does: a confirmation at once

    @rule(span=st.integers(0, 40 * MS))
    def silence(self, span):
        """Nothing answers for ``span``: what the loop does at each deadline meanwhile."""
        end = self.now + span
        for _ in range(400):
            due = self.py.deadline()
            if not due or due > end:
                break
            self.now = max(self.now, due)
            if self.both("overdue", self.now):
                self.send(True)
        self.now = end

    @precondition(lambda self: getattr(self, "sent", None))
    @rule(back=st.integers(1, 20), rtt=st.integers(1_000, 2 * MS))
    def late_reply(self, back, rtt):
        seq, sent_ns = self.sent[-min(back, len(self.sent))]
        self.peer = min(U64_MAX, self.peer + 1)
        self.now += rtt
        self.both("reply", self.peer, seq, sent_ns, self.now)

    @rule(rtt=st.integers(1_000, 12 * MS), step=st.integers(-3, 3), good=st.booleans())
    def reply(self, rtt, step, good):
        self.peer = max(0, min(U64_MAX, self.peer + step))
        echo = self.py.seq if good else self.py.seq - 1
        self.now += rtt
        self.both("reply", self.peer, echo, self.py.sent_ns, self.now)

    @rule(seq=st.one_of(st.integers(0, U64_MAX), st.integers(-1100, 1100)))
    def frame(self, seq):
        if seq < (1 << 20):
            seq = max(0, min(U64_MAX, self.peer + seq))
        self.both("frame", seq)

    @rule(dt=st.integers(0, 12 * MS), step=st.integers(-2, 3),
          gap=st.sampled_from([10 * MS, 10 * MS + 900_000, 20 * MS - 1_000_000, 13 * MS, 5 * MS]),
          active=st.sampled_from([0, 0, wire.REQUEST_CONFIRM, wire.REQUEST_ECHO, wire.REQUEST_PROBE, 7]))
    def peer_request(self, dt, step, gap, active):
        self.now += dt
        self.peer = max(0, min(U64_MAX, self.peer + step))
        self.peer_clock = getattr(self, "peer_clock", 1 << 50) + gap
        self.both("peer_request", self.peer, self.peer_clock, self.now, active)

    @rule(ago=st.one_of(st.none(), st.integers(-2 * MS, 40 * MS)))
    def witness(self, ago):
        """Another path heard the peer ``ago`` before now (None: there is no other path)."""
        self.both("witness", None if ago is None else self.now - ago)

    @rule()
    def pause(self):
        self.both("pause")

    @rule()
    def resume(self):
        self.both("resume")

    @invariant()
    def same_state(self):
        if hasattr(self, "py"):
            assert (self.py.state, self.py.heard, self.py.seq, self.py.deadline(), self.py.echoing) == \
                   (self.c.state, self.c.heard, self.c.seq, self.c.deadline(), self.c.echoing)
            assert self.py.drain() == self.c.drain()


TestBothSessionsAgree = BothSessionsAgree.TestCase
TestBothSessionsAgree.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
