"""One path's heartbeat session in pure Python: the reference for the C logic in hanet._fastprobe.

The probe loop runs this logic in C, without the GIL; this module says the same thing in Python,
and the unit tests drive both (this ``Session`` and ``_fastprobe.SessionModel``) with the same
calls and compare every answer and event. Time is passed in (``now``, CLOCK_MONOTONIC ns).

What a session decides:

* each request waits for its reply until the next request, except the one whose miss would
  declare the path lost: it waits the reply timeout (fixed, or srtt + 4 rttvar of the path's RTT
  as in RFC 6298, at least 0.25 ms, at most the interval);
* the first miss after "up" makes the path suspect, ``multiplier`` misses in a row make it lost;
  a reply clears a suspect path, ``recover_count`` replies in a row recover a lost or unknown one;
* a reply counts only if it echoes the request still outstanding (its sequence number and send
  time), so a reply recorded in an earlier run never matches;
* the replay window accepts each of the peer's sequence numbers once, within ``window`` below the
  highest seen; the first matching reply of a run closes the window below itself, so nothing the
  peer sent before this run proved it alive (a recording replayed now) is taken as new;
* sequence numbers never wrap: an alarm when fewer than 2**32 are left, and none at all (nothing
  is sent) once they are used up;
* with confirmation probing (``confirm_ns`` > 0, heartbeat.confirm_ms), every request waits only
  the reply timeout (the RTT estimate); a path believed up whose reply is overdue turns suspect
  and is asked again at once, one question after another (scheduled requests are not sent while
  one waits). Each question waits the reply timeout, but at most the window's share of
  ``CONFIRM_QUESTIONS`` (or of ``multiplier - 1``, if more), so a timeout grown by one slow
  answer still leaves the window full of questions; none is judged before its wait is over (the
  one with too little room after it waits to the window's end). The window is ``confirm_ns``, or
  twice the longest recent RTT if longer (the peak decays by 1/16 a reply), at most
  ``multiplier`` x ``interval``, from the first overdue reply. Once it has passed and the
  questions it holds all went unanswered (``confirms_needed``: never fewer than
  ``multiplier - 1``) the path is *judged*: a silence shorter than ``confirm_ns`` (a paused or
  starved peer) never is, nor one shorter than twice what the peer has lately taken to answer.
  Any reply of the suspicion (to the request first overdue, or to any question of the last
  ``CONFIRM_RING``) clears it, so a slow reply alone never makes a path lost. A judged path is
  lost at once when no other path can tell; else once the peer, heard on another path still up
  after the judgement (``witness``; the probe loop probes them then), leaves it silent one more
  question's wait: the peer is alive and ignores this path. A frame heard elsewhere before the
  judgement proves nothing (the peer may have stopped just after it). A peer silent on every
  path at once (stopped, starved) is no fault of this path, and leaving it for another would not
  help: its paths are lost only after BFD's detection time, ``multiplier`` x ``interval``;
* with confirmation probing the peer's own schedule is evidence too: once two of its requests
  came a whole number of intervals apart (by the peer's send times), the next is expected an
  interval after the last arrived, give or take four times how far its arrivals have lately
  strayed from the schedule (``peer_slack``: the peer's timer and the path, as a reply timeout
  is four RTT deviations; at least 0.25 ms, at most a quarter of the interval);
  a silence past that turns a path that is up suspect, as an overdue reply does. A confirmation
  request of the peer's (``active`` = REQUEST_CONFIRM) is off its schedule and says the peer does
  not hear us: a path that is up is then confirmed at once, our questions going as echoes
  (``echoing``, REQUEST_ECHO) until one of them goes unanswered; an echo makes no one confirm,
  so two nodes never echo each other's doubts.
"""
from __future__ import annotations

from hanet import model
from hanet.wire import REQUEST_CONFIRM, U64_MAX

WINDOW_BITS = 1024
REPLY_TIMEOUT_FLOOR_NS = 250_000
SEQ_LOW_MARK = 1 << 32
MISSES_CAP = 1 << 30
CONFIRM_RING = 16  # requests of a suspicion whose late replies still clear it
CONFIRM_QUESTIONS = 8  # a suspicion asks at least this often within its window
RTT_PEAK_DECAY = 16  # the RTT peak loses 1/16 a reply: a lone slow answer counts ~16 replies

UNKNOWN, UP, SUSPECT, LOST = "unknown", "up", "suspect", "lost"


def _cdiv(a: int, b: int) -> int:
    """C's integer division (truncates toward zero), which the C session uses."""
    q = abs(a) // b
    return q if a >= 0 else -q


class ReplayWindow:
    """The peer's sequence numbers seen, as a bitmap indexed modulo WINDOW_BITS (as in C)."""

    def __init__(self) -> None:
        self.have = False
        self.top = 0
        self.bits = [False] * WINDOW_BITS

    def check(self, seq: int, window: int) -> str:
        if not self.have or seq > self.top:
            return "ok"
        if self.top - seq >= window:
            return "stale"
        return "replay" if self.bits[seq % WINDOW_BITS] else "ok"

    def accept(self, seq: int) -> None:
        if not self.have:
            self.bits = [False] * WINDOW_BITS
            self.have, self.top = True, seq
        elif seq > self.top:
            steps = seq - self.top
            if steps >= WINDOW_BITS:
                self.bits = [False] * WINDOW_BITS
            else:
                for s in range(self.top + 1, seq + 1):
                    self.bits[s % WINDOW_BITS] = False
            self.top = seq
        self.bits[seq % WINDOW_BITS] = True

    def close_below(self, seq: int) -> None:
        if not self.have or seq > self.top:
            self.have, self.top = True, seq
        self.bits = [True] * WINDOW_BITS


class Session:
    def __init__(self, *, interval_ns: int, multiplier: int, recover_count: int, window: int = 64,
                 reply_timeout_ns: int = 0, seq_start: int = 1, confirm_ns: int = 0):
        for name, value, low, high in (("interval_ns", interval_ns, 1, 60 * 10**9),
                                       ("multiplier", multiplier, 1, 1000),
                                       ("recover_count", recover_count, 1, 1000),
                                       ("window", window, 1, WINDOW_BITS),
                                       ("reply_timeout_ns", reply_timeout_ns, 0, interval_ns),
                                       ("seq_start", seq_start, 0, U64_MAX),
                                       ("confirm_ns", confirm_ns, 0, interval_ns)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} {value!r} is outside [{low}, {high}]")
        self.interval_ns, self.multiplier, self.recover_count = interval_ns, multiplier, recover_count
        self.window, self.reply_timeout_ns, self.seq = window, reply_timeout_ns, seq_start
        self.confirm_ns = confirm_ns
        self.confirming = self.told = False
        self._clear_suspicion()
        self.state = UNKNOWN
        self.misses = self.oks = 0
        self.paused = self.heard = self.outstanding = False
        self.first_miss_ns = 0
        self.out_seq = self.sent_ns = self._deadline = 0
        self.srtt = self.rttvar = self.rtt_peak = 0
        self.peer_sent_ns = self.peer_deadline = 0
        self.peer_doubts = False  # the peer's confirmation is why peer_deadline is now
        self.peer_heard_ns = self.peer_jitter = 0  # see peer_slack()
        self.heard_elsewhere_ns: int | None = None  # see witness()
        self.win = ReplayWindow()
        self.seq_low_told = self.seq_out_told = False
        self.events: list[model.Event] = []

    # ------------------------------------------------------------------ sequence numbers
    def _next_seq(self, now: int) -> int:
        if self.seq >= U64_MAX:
            if not self.seq_out_told:
                self.seq_out_told = True
                self.events.append(model.SequenceLow(t_ns=now, remaining=0))
            return 0
        self.seq += 1
        if U64_MAX - self.seq < SEQ_LOW_MARK and not self.seq_low_told:
            self.seq_low_told = True
            self.events.append(model.SequenceLow(t_ns=now, remaining=U64_MAX - self.seq))
        return self.seq

    # ------------------------------------------------------------------ session
    def _emit(self, ev: model.Event) -> None:
        if not self.paused:
            self.events.append(ev)

    def _miss(self, now: int) -> None:
        if self.misses < MISSES_CAP:
            self.misses += 1
        self.oks = 0
        if self.misses == 1:
            self.first_miss_ns = now
        if self.misses >= self.multiplier and self.state != LOST:
            self.state = LOST
            self._emit(model.HeartbeatLost(t_ns=now, path=0, misses=self.misses,
                                           first_miss_ns=self.first_miss_ns,
                                           confirms_sent=self.confirms_sent,
                                           confirm_first_ns=self.confirm_first_ns))
        elif self.state == UP:
            self.state = SUSPECT
            self._tell_suspect(now)

    def _tell_suspect(self, now: int) -> None:
        self.told = True
        self._emit(model.HeartbeatSuspect(t_ns=now, path=0, misses=self.misses))

    def _update_rto(self, rtt: int) -> None:
        self.rtt_peak = max(rtt, self.rtt_peak - self.rtt_peak // RTT_PEAK_DECAY)
        if self.srtt == 0:
            self.srtt, self.rttvar = rtt, _cdiv(rtt, 2)
            return
        err = rtt - self.srtt
        self.srtt += _cdiv(err, 8)
        self.rttvar += _cdiv(abs(err) - self.rttvar, 4)

    def reply_timeout(self) -> int:
        t = self.reply_timeout_ns
        if t == 0:
            t = self.srtt + 4 * self.rttvar if self.srtt > 0 else self.interval_ns
            t = max(t, REPLY_TIMEOUT_FLOOR_NS)
        return min(t, self.interval_ns)

    # ------------------------------------------------------------------ confirmation probing
    def confirm_window(self) -> int:
        """How long a silence must last before the path is lost: confirm_ns, or twice the longest
        recent RTT if longer, never more than multiplier x interval."""
        return min(max(self.confirm_ns, 2 * self.rtt_peak), self.multiplier * self.interval_ns)

    def confirm_share(self) -> int:
        """The longest a question of a suspicion waits within the window: its share of
        CONFIRM_QUESTIONS (of ``multiplier - 1``, if more), never under the timeout's floor."""
        return max(self.confirm_window() // max(self.multiplier - 1, CONFIRM_QUESTIONS),
                   REPLY_TIMEOUT_FLOOR_NS)

    def confirms_needed(self) -> int:
        """Unanswered questions that make a silence evidence: as many as the window holds at its
        share, at least ``multiplier - 1``."""
        return max(self.confirm_window() // self.confirm_share(), self.multiplier - 1)

    def question_wait(self) -> int:
        """How long a question of a suspicion waits: the reply timeout, at most the share."""
        return min(self.reply_timeout(), self.confirm_share())

    def confirm_wait(self, now: int) -> int:
        """How long a question of a suspicion waits before the next goes: question_wait; the
        question with too little room left after it waits to the window's end instead; once the
        path is judged, unhurried until the peer is heard elsewhere."""
        window = self.confirm_window()
        end = self.confirm_first_ns + window
        wait = self.question_wait()
        if self.judged_ns and not self.witnessed_ns:
            return max(window // max(self.multiplier - 1, 1), wait)
        return end - now if now + 2 * wait > end and end - now > wait else wait

    def witness(self, heard_ns: int | None = None) -> None:
        """Another path, up, that heard the peer at ``heard_ns`` (None: no other path). The
        probe loop knows every path; a session alone knows none unless told. A path judged before
        that is lost if it stays silent one more question's wait."""
        self.heard_elsewhere_ns = heard_ns
        if (heard_ns is not None and self.judged_ns and not self.witnessed_ns
                and heard_ns > self.judged_ns and self.state == SUSPECT):
            self.witnessed_ns = heard_ns
            due = heard_ns + self.question_wait()
            if not self._deadline or self._deadline > due:
                self._deadline = due

    def _clear_suspicion(self) -> None:
        # echoing: this suspicion began on the peer's confirmation and no question of ours has
        # gone unanswered yet, so ours go as echoes (REQUEST_ECHO), which make no one confirm.
        self.suspecting = self.echoing = False
        self.confirm_first_ns = self.confirms_sent = self.confirms_unanswered = 0
        self.judged_ns = 0  # when the window passed with every question unanswered
        self.witnessed_ns = 0  # when the peer was first heard on another path after that
        self.pinned: tuple[int, int, bool] | None = None
        self.recent: list[tuple[int, int, bool]] = []

    def _begin_suspicion(self, now: int) -> None:
        self._clear_suspicion()
        self.suspecting, self.confirm_first_ns = True, now
        if self.outstanding:
            self.pinned = (self.out_seq, self.sent_ns, self.confirming)

    def _match(self, echo_seq: int, echo_ns: int) -> tuple[int, int, bool] | None:
        """The request of this run a reply echoes (seq, send time, confirmation?), or None."""
        if self.outstanding and echo_seq == self.out_seq and echo_ns == self.sent_ns & U64_MAX:
            return (self.out_seq, self.sent_ns, self.confirming)
        if self.suspecting:
            for sent in ([self.pinned] if self.pinned else []) + self.recent:
                if echo_seq == sent[0] and echo_ns == sent[1] & U64_MAX:
                    return sent
        return None

    def request(self, now: int, confirm: bool = False) -> int:
        if not confirm and self.confirming and self._deadline and now < self._deadline:
            return 0  # a confirmation is waiting for its reply: it stands in for this request
        # The request outstanding is replaced: its miss counts now, unless this is a confirmation
        # sent before its deadline (the peer's request was overdue); it then stays answerable.
        if self._deadline and (not confirm or now >= self._deadline) and self._overdue(now):
            confirm = True
        seq = self._next_seq(now)
        if seq == 0:
            self.outstanding = self.confirming = False
            return 0
        self.outstanding, self.confirming, self.out_seq, self.sent_ns = True, confirm, seq, now
        if confirm:
            self.confirms_sent += 1
        if self.suspecting:
            self.recent = (self.recent + [(seq, now, confirm)])[-CONFIRM_RING:]
        if self.suspecting:
            wait = self.confirm_wait(now)
        elif self.confirm_ns > 0 or confirm or self.misses + 1 >= self.multiplier:
            wait = self.reply_timeout()
        else:
            wait = self.interval_ns
        self._deadline = now + wait
        return seq

    def deadline(self) -> int:
        """When the outstanding request's miss or the peer's silence counts (0: nothing pending)."""
        if self._deadline and (self.peer_deadline == 0 or self._deadline <= self.peer_deadline):
            return self._deadline
        return self.peer_deadline

    def _turn_suspect(self, now: int) -> None:
        """Told only once a confirmation too goes unanswered (see the C session)."""
        self._begin_suspicion(now)
        self.first_miss_ns = now
        self.state = SUSPECT
        self.told = False

    def _since_last_request(self, send_ns: int) -> int:
        """The peer's clock from its last scheduled request here to ``send_ns`` (wraps as C's)."""
        d = (send_ns - self.peer_sent_ns) & U64_MAX
        return d - (1 << 64) if d > U64_MAX >> 1 else d

    def _on_peer_schedule(self, send_ns: int) -> bool:
        t, prev = self.interval_ns, self.peer_sent_ns
        d = self._since_last_request(send_ns)
        if prev == 0 or d < t - t // 8:
            return False
        return d % t <= t // 8 or d % t >= t - t // 8

    def peer_slack(self) -> int:
        """How late the peer's next scheduled request may arrive: four mean deviations of its
        arrivals from the schedule, within [the timeout's floor, interval/4]."""
        return min(max(4 * self.peer_jitter, REPLY_TIMEOUT_FLOOR_NS), self.interval_ns // 4)

    def _note_peer_lateness(self, send_ns: int, now: int) -> None:
        t = self.interval_ns
        d = self._since_last_request(send_ns)
        dev = abs(now - self.peer_heard_ns - (d + t // 2) // t * t)
        self.peer_jitter += _cdiv(dev - self.peer_jitter, 4)

    def peer_request(self, seq: int, send_ns: int, now: int, active: int = 0) -> str:
        """A request of the peer's (already authenticated), its ``active`` mark: "ok" or the drop
        reason. A probe (or any mark but a confirmation's) is off the schedule and tells nothing."""
        code = self.frame(seq)
        if code == "ok" and self.confirm_ns > 0 and active == REQUEST_CONFIRM:
            # The peer does not hear us: confirm at once (as echoes: see ``echoing``).
            if self.state == UP:
                self.peer_deadline, self.peer_doubts = now, True
        elif code == "ok" and self.confirm_ns > 0 and active == 0:
            on = self._on_peer_schedule(send_ns)
            if on:
                self._note_peer_lateness(send_ns, now)
            self.peer_sent_ns, self.peer_heard_ns = send_ns, now
            self.peer_deadline = now + self.interval_ns + self.peer_slack() if on else 0
            self.peer_doubts = False
        return code

    def _overdue(self, now: int) -> bool:
        self._deadline = 0
        if self.confirm_ns == 0 or self.state not in (UP, SUSPECT):
            self._miss(now)
            return False
        if self.misses < MISSES_CAP:
            self.misses += 1
        self.oks = 0
        if self.state == UP:
            self._turn_suspect(now)
        elif self.confirming:
            self.confirms_unanswered += 1
            self.echoing = False  # our own evidence now: our questions say we doubt
            if not self.told:
                self._tell_suspect(now)
        silent_for = now - self.confirm_first_ns
        if (not self.judged_ns and self.confirms_unanswered >= self.confirms_needed()
                and silent_for >= self.confirm_window()):
            self.judged_ns = now
        if self.judged_ns and (silent_for >= self.multiplier * self.interval_ns
                               or self.heard_elsewhere_ns is None
                               or self.witnessed_ns and now - self.witnessed_ns >= self.question_wait()):
            self._lost(now)
            return False
        return True

    def _lost(self, now: int) -> None:
        self.state = LOST
        self._emit(model.HeartbeatLost(t_ns=now, path=0, misses=self.misses,
                                       first_miss_ns=self.first_miss_ns,
                                       confirms_sent=self.confirms_sent,
                                       confirm_first_ns=self.confirm_first_ns,
                                       judged_ns=self.judged_ns, witnessed_ns=self.witnessed_ns))
        self._clear_suspicion()

    def overdue(self, now: int) -> bool:
        """Run the deadlines that have passed; True: send a confirmation request now."""
        confirm = False
        if self._deadline and now >= self._deadline:
            confirm = self._overdue(now)
        if self.peer_deadline and now >= self.peer_deadline:
            self.peer_deadline = 0
            if self.confirm_ns > 0 and self.state == UP:
                self._turn_suspect(now)
                self.echoing = self.peer_doubts
                confirm = True
            self.peer_doubts = False
        return confirm

    def reply(self, seq: int, echo_seq: int, echo_ns: int, now: int) -> str:
        code = self.win.check(seq, self.window)
        sent = self._match(echo_seq, echo_ns) if code == "ok" else None
        if code == "ok" and sent is None:
            code = "late"
        if code != "ok":
            return code
        self.win.accept(seq)
        self.outstanding, self.confirming, self._deadline = False, False, 0
        if not self.heard:
            self.heard = True
            self.win.close_below(seq)
        rtt = now - sent[1]
        confirms_sent, confirm_first_ns = self.confirms_sent, self.confirm_first_ns
        self._clear_suspicion()
        self.misses = 0
        self.oks += 1
        self._update_rto(rtt)
        if self.state == SUSPECT:
            self.state = UP
            if self.told:
                self._emit(model.HeartbeatCleared(t_ns=now, path=0, rtt_ns=rtt,
                                                  confirms_sent=confirms_sent,
                                                  confirms_answered=int(sent[2]),
                                                  confirm_first_ns=confirm_first_ns))
        elif self.state != UP and self.oks >= self.recover_count:
            self.state = UP
            self._emit(model.HeartbeatRecovered(t_ns=now, path=0, replies=self.oks, rtt_ns=rtt))
        return "ok"

    def frame(self, seq: int) -> str:
        code = self.win.check(seq, self.window)
        if code == "ok":
            self.win.accept(seq)
        return code

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.state = UNKNOWN
        self.misses = self.oks = 0
        self.confirming = False
        self.peer_sent_ns = self.peer_deadline = self.peer_jitter = 0
        self.peer_doubts = False
        self._clear_suspicion()

    def drain(self) -> list[model.Event]:
        out, self.events = self.events, []
        return out
