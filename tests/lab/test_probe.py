"""The prober in two namespaces with real frames: replies, loss, recovery, carrier, hostile input."""
from __future__ import annotations

import os
import random
import socket
import time

import pytest
from nsrun import in_netns, wait_for

from hanet import config, frame, labnet, model, seqfloor, wire
from hanet.probe import Prober

pytestmark = pytest.mark.lab

ETH_P_HANET = 0x88B5
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
INTERVAL_MS = 10.0
MULTIPLIER = 3
TOLERANCE_NS = 100_000_000  # generous: scheduling on a busy 2-core VM, nft start-up


def node_config(tmp_path, node: str, peer: str, nics: tuple[str, str], *, poll_ms: float = 1.0,
                quality_ms: float = 0.0, peer_macs: tuple[str, str] = ("", ""),
                interval_ms: float = INTERVAL_MS, reply_timeout: str = '"auto"',
                confirm_ms: float = 0.0) -> config.Config:
    key_file = tmp_path / "heartbeat.key"
    if not key_file.exists():
        key_file.write_bytes(os.urandom(32).hex().encode())
        key_file.chmod(0o600)
    quality = f"[quality]\nenabled = true\nwindow_ms = {quality_ms}\n" if quality_ms else ""
    text = f"""
[node]
id = "{node}"
peer = "{peer}"
[[path]]
name = "primary"
interface = "{nics[0]}"
peer_mac = "{peer_macs[0]}"
[[path]]
name = "alternate"
interface = "{nics[1]}"
peer_mac = "{peer_macs[1]}"
[heartbeat]
interval_ms = {interval_ms}
multiplier = {MULTIPLIER}
reply_timeout_ms = {reply_timeout}
recover_count = 3
confirm_ms = {confirm_ms}
key_file = "{key_file}"
[link]
poll_interval_ms = {poll_ms}
{quality}
[identity]
address = "192.0.2.1/24"
"""
    return config.parse(text, file=str(tmp_path / f"{node}.toml"))


class Node:
    """A Prober started inside one namespace, with every event it has emitted so far."""

    def __init__(self, ns: labnet.Netns, cfg: config.Config, seq_start: int = 0):
        self.ns, self.cfg = ns, cfg
        self.prober = Prober(cfg, seq_start=seq_start)
        self.events: list[model.Event] = []
        with in_netns(ns.name):
            self.prober.start()

    def collect(self) -> list[model.Event]:
        self.events += self.prober.drain()
        return self.events

    def find(self, kind: type, path: int, after_ns: int = 0) -> model.Event | None:
        self.collect()
        return next((e for e in self.events
                     if isinstance(e, kind) and e.path == path and e.t_ns >= after_ns), None)

    def wait(self, kind: type, path: int, after_ns: int = 0, timeout_s: float = 5.0) -> model.Event:
        return wait_for(f"{kind.__name__} on path {path} in {self.ns.name}",
                        lambda: self.find(kind, path, after_ns), timeout_s=timeout_s)

    def stats(self, path: int) -> dict:
        return self.prober.stats()[path]


def start_pair(lab, tmp_path, **kw) -> tuple[Node, Node]:
    a = Node(lab.a, node_config(tmp_path, "alpha", "beta", ("nic1", "nic3"), **kw))
    try:
        b = Node(lab.b, node_config(tmp_path, "beta", "alpha", ("nic2", "nic4"), **kw))
    except Exception:
        a.prober.stop()
        raise
    return a, b


@pytest.fixture
def pair(lab, tmp_path):
    a, b = start_pair(lab, tmp_path)
    try:
        for node in (a, b):
            for path in (0, 1):
                node.wait(model.HeartbeatRecovered, path)
        yield a, b
    finally:
        a.prober.stop()
        b.prober.stop()


def lost_bound_ns() -> int:
    # Detection needs `multiplier` missed deadlines after the fault, plus up to one interval of
    # phase between the fault and the next deadline.
    return int((MULTIPLIER + 1) * INTERVAL_MS * 1e6) + TOLERANCE_NS


def test_blackhole_is_declared_within_multiplier_intervals_plus_the_reply_timeout(lab, tmp_path):
    # BFD's detection time: lost no later than multiplier x interval after the last reply, plus
    # the reply timeout. Waiting a whole interval per reply would land anywhere up to one more
    # interval later; a 100 ms interval makes that difference far larger than scheduling noise.
    interval_ms, timeout_ms, slack_ns = 100.0, 5.0, 30_000_000
    a, b = start_pair(lab, tmp_path, interval_ms=interval_ms, reply_timeout=str(timeout_ms))
    try:
        a.wait(model.HeartbeatRecovered, 0)
        assert a.stats(0)["reply_timeout_ns"] == int(timeout_ms * 1e6)
        t0 = time.monotonic_ns()
        labnet.drop_ingress(a.ns, "nic1")
        t1 = time.monotonic_ns()
        lost = a.wait(model.HeartbeatLost, 0, after_ns=t0)
        last_reply = a.stats(0)["last_reply_ns"]
        assert last_reply < t1
        bound = MULTIPLIER * interval_ms * 1e6 + timeout_ms * 1e6 + slack_ns
        assert lost.t_ns - last_reply <= bound, (lost.t_ns - last_reply) / 1e6
        suspect = a.find(model.HeartbeatSuspect, 0, after_ns=t0)
        # The first miss waits a whole interval: a slow reply alone never raises a suspect.
        assert suspect is not None and suspect.t_ns - last_reply <= 2 * interval_ms * 1e6 + slack_ns
    finally:
        a.prober.stop()
        b.prober.stop()


def test_auto_reply_timeout_follows_the_rtt(pair):
    a, _ = pair
    wait_for("RTT samples", lambda: a.stats(0)["received"] >= 20)
    # A veth RTT is tens of microseconds: the timeout converges to its floor, far below the
    # interval (an early sample taken while the host was busy may hold it up for a while: the
    # smoothing forgets it at 1/8 a reply).
    timeout = wait_for("the reply timeout near its floor",
                       lambda: (t := a.stats(0)["reply_timeout_ns"]) < INTERVAL_MS * 1e6 / 4 and t, timeout_s=10)
    assert timeout >= 250_000


def test_replies_flow_and_rtt_is_reported(pair):
    a, b = pair
    for node in (a, b):
        wait_for("20 replies on each path", lambda: all(s["received"] >= 20 for s in node.prober.stats()))
        for s in node.prober.stats():
            assert s["state"] == "up"
            assert 0 < s["rtt_p50_ns"] <= s["rtt_p99_ns"] <= s["rtt_max_ns"] < 50_000_000
            # a reply later than the next request ("late") is possible on a busy host; no other drop
            assert s["answered"] > 0 and set(s["drops"]) <= {"late"} and s["carrier"]
    assert [s["name"] for s in a.prober.stats()] == ["primary", "alternate"]


def test_blackhole_is_lost_then_recovered(pair):
    a, b = pair
    t0 = time.monotonic_ns()
    labnet.drop_ingress(a.ns, "nic1")
    t1 = time.monotonic_ns()
    for node in (a, b):
        lost = node.wait(model.HeartbeatLost, 0, after_ns=t0)
        assert lost.misses == MULTIPLIER
        assert t0 <= lost.first_miss_ns <= lost.t_ns
        assert lost.t_ns - t0 <= (t1 - t0) + lost_bound_ns()
        assert node.find(model.HeartbeatSuspect, 0, after_ns=t0) is not None
    assert a.find(model.HeartbeatLost, 1, after_ns=t0) is None
    assert a.stats(1)["state"] == "up"

    t2 = time.monotonic_ns()
    labnet.clear_ingress(a.ns, "nic1")
    for node in (a, b):
        recovered = node.wait(model.HeartbeatRecovered, 0, after_ns=t2)
        assert recovered.replies == 3 and recovered.rtt_ns > 0
        assert node.stats(0)["state"] == "up"


def test_one_way_drop_is_detected_by_both_nodes(pair):
    a, b = pair
    t0 = time.monotonic_ns()
    labnet.drop_ingress(b.ns, "nic4")  # only frames travelling a -> b on the alternate cable
    for node in (a, b):
        lost = node.wait(model.HeartbeatLost, 1, after_ns=t0)
        assert lost.send_lag_max_ns >= 0 and lost.recv_delay_max_ns >= 0
    assert a.stats(0)["state"] == "up" and b.stats(0)["state"] == "up"


def test_path_that_never_answers_is_lost(lab, tmp_path):
    a = Node(lab.a, node_config(tmp_path, "alpha", "beta", ("nic1", "nic3")))
    try:
        for path in (0, 1):
            lost = a.wait(model.HeartbeatLost, path)
            assert lost.misses == MULTIPLIER
        assert not any(isinstance(e, model.HeartbeatRecovered) for e in a.collect())
    finally:
        a.prober.stop()


def _signed(key: bytes, node: str, path: int, seq: int, kind: int = frame.KIND_REQUEST) -> bytes:
    return frame.encode(key, frame.Frame(kind=kind, path=path, node_id=frame.node_id_field(node),
                                         seq=seq, send_ns=time.monotonic_ns()))


def _ethernet(payload: bytes, src: str = "02:00:00:00:0b:01") -> bytes:
    return frame.GROUP_MAC + bytes.fromhex(src.replace(":", "")) + ETH_P_HANET.to_bytes(2, "big") + payload


def test_hostile_frames_only_bump_drop_counters(pair):
    a, b = pair
    key = a.cfg.heartbeat.key
    with in_netns(b.ns.name):
        # ETH_P_ALL: only such taps see the frames this host sends.
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with raw:
        raw.bind(("nic2", ETH_P_ALL))
        raw.settimeout(1.0)

        # Capture a frame b itself sent to a: the one to replay.
        def capture() -> bytes | None:
            data, addr = raw.recvfrom(256)
            ours = addr[2] == PACKET_OUTGOING and data[12:14] == ETH_P_HANET.to_bytes(2, "big")
            return data if ours else None
        captured = wait_for("a frame sent by b", capture, timeout_s=2.0, every_s=0)
        a.collect()
        before_events = len(a.events)
        before = a.stats(0)["drops"]
        filtered_before = a.stats(0)["filtered"]
        frames_at_capture = a.stats(0)["received"] + a.stats(0)["answered"]

        rng = random.Random(7)
        far_future = time.clock_gettime_ns(time.CLOCK_REALTIME) + 10**15
        # Dropped in user space, each for its reason (the free checks before the HMAC).
        counted_here = {
            "replay": [captured],
            "auth": [_ethernet(_signed(os.urandom(32), "beta", 0, far_future))],
            "late": [_ethernet(_signed(key, "beta", 0, far_future + 4, kind=frame.KIND_REPLY))],
        }
        # Refused by the socket filter in the kernel: counted as "filtered", never read.
        filtered = [
            _ethernet(_signed(key, "mallory", 0, far_future + 1)),
            _ethernet(bytes([frame.VERSION, 9]) + _signed(key, "beta", 0, far_future + 3)[2:]),
            _ethernet(bytes([2]) + rng.randbytes(67)),
            _ethernet(bytes([frame.VERSION]) + rng.randbytes(20)),
            _ethernet(bytes([frame.VERSION]) + rng.randbytes(100)),
        ] + [_ethernet(rng.randbytes(rng.randrange(1, 120))) for _ in range(200)]
        for frames in counted_here.values():
            for data in frames:
                raw.send(data)
        for data in filtered:
            raw.send(data)

        def counted() -> dict | None:
            s = a.stats(0)
            drops = s["drops"]
            grew = all(drops.get(r, 0) > before.get(r, 0) for r in counted_here)
            return drops if grew and s["filtered"] - filtered_before >= len(filtered) else None
        drops = wait_for("drop counters for every injected reason", counted)
        # Nothing the kernel refused was read: the user-space counts grew by the injected ones
        # (and the odd genuine reply late on a busy host), not by the 205 filtered frames.
        assert sum(drops.values()) - sum(before.values()) <= len(counted_here) + 10

        # The replay of a frame older than the window is stale, not a replay.
        wait_for("the captured frame to fall out of the replay window",
                 lambda: a.stats(0)["received"] + a.stats(0)["answered"] > frames_at_capture + 200)
        raw.send(captured)
        wait_for("a stale drop", lambda: a.stats(0)["drops"].get("stale", 0) > before.get("stale", 0))

    a.collect()
    assert a.events[before_events:] == []
    assert a.stats(0)["state"] == "up" and a.stats(1)["state"] == "up"
    assert a.stats(0)["rcvbuf_overflow"] == 0 and a.stats(0)["rx_ring"]


def test_carrier_loss_is_polled_within_two_periods(lab, tmp_path):
    poll_ms = 5.0
    a, b = start_pair(lab, tmp_path, poll_ms=poll_ms)
    try:
        assert a.prober.carrier(0) and a.prober.carrier(1)
        t0 = time.monotonic_ns()
        labnet.carrier_down(lab.b, "nic2")
        t1 = time.monotonic_ns()
        down = a.wait(model.LinkDown, 0, after_ns=t0)
        assert down.source == "poll"
        assert down.t_ns - t0 <= (t1 - t0) + 2 * poll_ms * 1e6 + TOLERANCE_NS
        assert not a.prober.carrier(0) and a.prober.carrier(1)
        t2 = time.monotonic_ns()
        labnet.carrier_up(lab.b, "nic2")
        a.wait(model.LinkUp, 0, after_ns=t2)
        assert a.prober.carrier(0)
    finally:
        a.prober.stop()
        b.prober.stop()


def test_carrier_read_on_demand_does_not_wait_for_the_poll(lab, tmp_path):
    # What the daemon does when a link notification arrives: read the bits now, not at the next poll.
    a, b = start_pair(lab, tmp_path, poll_ms=60000.0)
    try:
        a.collect()
        labnet.carrier_down(lab.b, "nic2")
        assert a.find(model.LinkDown, 0) is None  # the loop's next poll is a minute away
        t0 = time.monotonic_ns()
        a.prober.poll_carrier_now()  # from the root namespace: the socket is bound to its own
        down = a.find(model.LinkDown, 0)
        assert down is not None and down.source == "poll" and down.t_ns >= t0
        assert not a.prober.carrier(0) and a.prober.carrier(1)
    finally:
        a.prober.stop()
        b.prober.stop()


def test_vanished_interface_is_link_down_then_rebind_recovers(pair):
    a, b = pair
    t0 = time.monotonic_ns()
    a.ns.ip("link", "del", "nic1")  # deletes the whole veth pair: b's nic2 goes too
    a.wait(model.LinkDown, 0, after_ns=t0)
    a.wait(model.HeartbeatLost, 0, after_ns=t0)
    b.wait(model.HeartbeatLost, 0, after_ns=t0)
    received = a.stats(1)["received"]
    wait_for("path 1 still probed", lambda: a.stats(1)["received"] > received + 5)

    labnet.veth(a.ns, "nic1", b.ns, "nic2")
    t1 = time.monotonic_ns()
    for node in (a, b):
        with in_netns(node.ns.name):
            assert node.prober.rebind(0) > 0
    a.wait(model.LinkUp, 0, after_ns=t0)
    for node in (a, b):
        node.wait(model.HeartbeatRecovered, 0, after_ns=t1)


def test_peer_notice_is_delivered_once(pair):
    a, b = pair
    t0 = time.monotonic_ns()
    a.prober.send_notice(1, 1)
    notice = b.wait(model.PeerNotice, 1, after_ns=t0)
    assert notice.active == 1 and notice.peer_seq > 0
    wait_for("all copies sent", lambda: a.stats(1)["notices_sent"] == 3)
    wait_for("the copies to arrive", lambda: b.stats(1)["received"] > 0 and b.collect() is not None
             and len([e for e in b.events if isinstance(e, model.PeerNotice)]) == 1
             and b.stats(1)["notices_received"] == 1)
    a.prober.send_notice(1, 0)
    second = b.wait(model.PeerNotice, 1, after_ns=notice.t_ns + 1)
    assert second.active == 0 and second.peer_seq > notice.peer_seq


def test_a_notice_tells_whether_it_crossed_ours_and_an_overtaken_one_is_dropped(pair):
    a, b = pair
    t0 = time.monotonic_ns()
    a.prober.send_notice(1, 1)
    first = b.wait(model.PeerNotice, 1, after_ns=t0)
    assert not first.crossed  # b had sent no notice
    b.prober.send_notice(1, 1, first.peer_seq)
    answer = a.wait(model.PeerNotice, 1, after_ns=t0)
    assert not answer.crossed  # b had acted on a's latest: an answer, not a crossing
    b.prober.send_notice(1, 1)
    unaware = a.wait(model.PeerNotice, 1, after_ns=answer.t_ns + 1)
    assert unaware.crossed and unaware.peer_seq > answer.peer_seq
    b.prober.stop()  # from here b's notices are made by hand, with the key

    key = a.cfg.heartbeat.key
    seq = time.clock_gettime_ns(time.CLOCK_REALTIME)  # above all b sent: its seqs start at its start time
    with in_netns(b.ns.name):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_HANET))

    def notice(notice_id: int, seen: int, active: int = 0) -> model.PeerNotice | None:
        nonlocal seq
        seq += 1
        before = a.stats(1)
        raw.send(_ethernet(frame.encode(key, frame.Frame(
            kind=frame.KIND_NOTICE, path=1, active=active, node_id=frame.node_id_field("beta"), seq=seq,
            send_ns=time.monotonic_ns(), echo_seq=notice_id, echo_ns=seen)), src="02:00:00:00:0b:02"))
        wait_for("the frame counted", lambda: sum(a.stats(1)["drops"].values()) + a.stats(1)["notices_received"]
                 > sum(before["drops"].values()) + before["notices_received"], timeout_s=2.0)
        a.collect()
        return next((e for e in a.events if isinstance(e, model.PeerNotice) and e.peer_seq == notice_id), None)

    with raw:
        raw.bind(("nic4", ETH_P_HANET))
        crossing = notice(answer.peer_seq + 10, seen=0)
        assert crossing is not None and crossing.crossed  # sent before b had heard a's notice
        informed = notice(answer.peer_seq + 20, seen=2**64 - 1)
        assert informed is not None and not informed.crossed
        outdated = a.stats(1)["drops"].get("outdated", 0)
        assert notice(answer.peer_seq + 15, seen=2**64 - 1) is None  # overtaken by the one above
        assert a.stats(1)["drops"]["outdated"] == outdated + 1
        received = a.stats(1)["notices_received"]
        seq += 1
        raw.send(_ethernet(frame.encode(key, frame.Frame(
            kind=frame.KIND_NOTICE, path=1, active=0, node_id=frame.node_id_field("beta"), seq=seq,
            send_ns=time.monotonic_ns(), echo_seq=answer.peer_seq + 20, echo_ns=0)), src="02:00:00:00:0b:02"))
        time.sleep(0.05)  # a copy of the newest: neither news nor a drop
        assert a.stats(1)["notices_received"] == received
        assert a.stats(1)["drops"]["outdated"] == outdated + 1


def test_pause_suppresses_events_and_resume_starts_fresh(pair):
    a, b = pair
    a.prober.pause(0)
    t0 = time.monotonic_ns()
    labnet.drop_ingress(a.ns, "nic1")
    wait_for("path 0 judged lost while paused", lambda: a.stats(0)["state"] == "lost")
    b.wait(model.HeartbeatLost, 0, after_ns=t0)  # b is not paused
    assert a.find(model.HeartbeatLost, 0, after_ns=t0) is None
    assert a.find(model.HeartbeatSuspect, 0, after_ns=t0) is None

    labnet.clear_ingress(a.ns, "nic1")
    wait_for("path 0 up while paused", lambda: a.stats(0)["state"] == "up")
    t1 = time.monotonic_ns()
    a.prober.resume(0)
    recovered = a.wait(model.HeartbeatRecovered, 0, after_ns=t1)
    assert recovered.replies == 3


def test_quality_window_reports_loss_and_rtt(lab, tmp_path):
    a, b = start_pair(lab, tmp_path, quality_ms=100.0)
    try:
        quality = a.wait(model.PathQuality, 1, after_ns=a.wait(model.HeartbeatRecovered, 1).t_ns)
        assert quality.loss_ppm < 1_000_000 and 0 < quality.rtt_p50_ns <= quality.rtt_p99_ns
    finally:
        a.prober.stop()
        b.prober.stop()


def test_restarted_peer_is_accepted_not_taken_for_a_replay(pair):
    a, b = pair
    t0 = time.monotonic_ns()
    b.prober.stop()
    a.wait(model.HeartbeatLost, 0, after_ns=t0)
    restarted = Node(b.ns, b.cfg)
    try:
        t1 = time.monotonic_ns()
        for path in (0, 1):
            a.wait(model.HeartbeatRecovered, path, after_ns=t1)
        assert not {"replay", "stale"} & a.stats(0)["drops"].keys()
    finally:
        restarted.prober.stop()


def test_restart_after_the_wall_clock_stepped_back(pair, tmp_path):
    # b restarts an hour "earlier" by the wall clock. Counting from the clock alone, all its frames
    # are older than what a has seen and are dropped as stale; from the reserved floor they are not.
    a, b = pair
    floor_file = str(tmp_path / "beta.hlog.seq")
    now = time.clock_gettime_ns(time.CLOCK_REALTIME)
    hour_ago = now - 3600 * 10**9
    started: list[Node] = []

    def restart(seq_start: int) -> int:
        (started[-1] if started else b).prober.stop()
        # Lost first, so that coming back is an event.
        wait_for("a to see path 0 lost", lambda: a.stats(0)["state"] == "lost")
        t = time.monotonic_ns()
        started.append(Node(b.ns, b.cfg, seq_start=seq_start))
        return t

    try:
        t0 = restart(seqfloor.reserve(floor_file, now))
        a.wait(model.HeartbeatRecovered, 0, after_ns=t0)

        t1 = restart(hour_ago)
        wait_for("stale drops", lambda: a.stats(0)["drops"].get("stale", 0) > 20)
        assert a.find(model.HeartbeatRecovered, 0, after_ns=t1) is None

        t2 = restart(seqfloor.reserve(floor_file, hour_ago))
        a.wait(model.HeartbeatRecovered, 0, after_ns=t2)
        a.wait(model.HeartbeatRecovered, 1, after_ns=t2)
    finally:
        for node in started:
            node.prober.stop()


def test_peer_mac_when_configured_must_match(lab, tmp_path):
    # b's NICs are 02:00:00:00:0b:01 and :02 (TwoNodeLab). The configured peer MACs form one set
    # accepted on every path; :02 is not in it, so b's alternate frames never pass the filter.
    a = Node(lab.a, node_config(tmp_path, "alpha", "beta", ("nic1", "nic3"),
                                peer_macs=("02:00:00:00:0b:01", "02:00:00:00:0b:99")))
    b = Node(lab.b, node_config(tmp_path, "beta", "alpha", ("nic2", "nic4")))
    try:
        a.wait(model.HeartbeatRecovered, 0)
        a.wait(model.HeartbeatLost, 1)
        assert a.stats(1)["filtered"] > 0 and a.stats(1)["received"] == 0
        assert a.stats(0)["filtered"] == 0 and "src_mac" not in a.stats(0)["drops"]
    finally:
        a.prober.stop()
        b.prober.stop()


def test_peer_mac_set_survives_the_peers_mac_swap(lab, tmp_path):
    # A failover on b swaps its NICs' MACs: each path then hears the other path's configured MAC.
    macs = ("02:00:00:00:0b:01", "02:00:00:00:0b:02")
    a = Node(lab.a, node_config(tmp_path, "alpha", "beta", ("nic1", "nic3"), peer_macs=macs))
    b = Node(lab.b, node_config(tmp_path, "beta", "alpha", ("nic2", "nic4")))
    try:
        for path in (0, 1):
            a.wait(model.HeartbeatRecovered, path)
        t0 = time.monotonic_ns()
        lab.b.ip("link", "set", "nic2", "address", "02:00:00:00:0b:77")
        lab.b.ip("link", "set", "nic4", "address", macs[0])
        lab.b.ip("link", "set", "nic2", "address", macs[1])
        received = [a.stats(p)["received"] for p in (0, 1)]
        wait_for("replies on both paths after the swap",
                 lambda: all(a.stats(p)["received"] > received[p] + 20 for p in (0, 1)))
        assert a.find(model.HeartbeatLost, 0, after_ns=t0) is None
        assert a.find(model.HeartbeatLost, 1, after_ns=t0) is None
        assert "src_mac" not in a.stats(0)["drops"] and "src_mac" not in a.stats(1)["drops"]
    finally:
        a.prober.stop()
        b.prober.stop()


def test_crossed_cables_are_named_once(lab, tmp_path, caplog):
    # Re-cable: a's nic1 to b's alternate (nic4), a's nic3 to b's primary (nic2).
    lab.a.ip("link", "del", "nic1")
    lab.a.ip("link", "del", "nic3")
    labnet.veth(lab.a, "nic1", lab.b, "nic4", mac_a="02:00:00:00:0a:01", mac_b="02:00:00:00:0b:02")
    labnet.veth(lab.a, "nic3", lab.b, "nic2", mac_a="02:00:00:00:0a:02", mac_b="02:00:00:00:0b:01")
    caplog.set_level("WARNING", logger="hanet")
    a, b = start_pair(lab, tmp_path)
    try:
        for path, heard in ((0, 1), (1, 0)):
            crossed = a.wait(model.PathCrossed, path)
            assert crossed.peer_path == heard
            b.wait(model.PathCrossed, path)
        wait_for("path 0 lost on a", lambda: a.stats(0)["state"] == "lost")
        sent = a.stats(0)["sent"]
        wait_for("more frames", lambda: a.stats(0)["sent"] > sent + 20)
        a.collect()
        # Once per change, not once per frame; the frames themselves are dropped as "path".
        assert len([e for e in a.events if isinstance(e, model.PathCrossed)]) == 2
        assert a.stats(0)["peer_path"] == 1 and a.stats(1)["peer_path"] == 0
        assert a.stats(0)["drops"]["path"] > 20 and a.stats(0)["crossed"] == 1
        assert not any(isinstance(e, model.HeartbeatRecovered) for e in a.events)
        lines = [r.getMessage() for r in caplog.records if " hears " in r.getMessage()]
        assert any(line.startswith("nic1 hears beta's path 1 (alternate)") for line in lines), lines
        assert any(line.startswith("nic3 hears beta's path 0 (primary)") for line in lines), lines
    finally:
        a.prober.stop()
        b.prober.stop()


def test_replayed_notice_after_a_restart_changes_nothing(pair):
    a, b = pair
    with in_netns(b.ns.name):
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with raw:
        raw.bind(("nic2", ETH_P_ALL))
        raw.settimeout(1.0)
        b.prober.send_notice(0, 1)

        def capture() -> bytes | None:
            data, addr = raw.recvfrom(256)
            notice = (addr[2] == PACKET_OUTGOING and data[12:14] == ETH_P_HANET.to_bytes(2, "big")
                      and data[15] == frame.KIND_NOTICE)
            return data if notice else None
        recorded = wait_for("b's notice on the wire", capture, timeout_s=2.0, every_s=0)
        a.wait(model.PeerNotice, 0)  # the genuine one was delivered

        a.prober.stop()
        restarted = Node(a.ns, a.cfg)
        try:
            # At once, while the path is not yet heard in this run, and on after it is.
            sent = 0
            t_end = time.monotonic() + 0.3
            while time.monotonic() < t_end:
                raw.send(recorded)
                sent += 1
                time.sleep(0.005)
            restarted.wait(model.HeartbeatRecovered, 0)
            drops = restarted.stats(0)["drops"]
            wait_for("every replay dropped",
                     lambda: sum(restarted.stats(0)["drops"].get(r, 0)
                                 for r in ("unheard", "replay", "stale")) >= sent)
            assert restarted.find(model.PeerNotice, 0) is None
            assert restarted.stats(0)["notices_received"] == 0
            assert drops.get("unheard", 0) + drops.get("replay", 0) + drops.get("stale", 0) > 0
        finally:
            restarted.prober.stop()


def _thread_cpu_s(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_nic_set_down_does_not_make_the_loop_spin(pair):
    # A down NIC leaves a pending error on its socket; unless it is read, poll() reports it again
    # at once and the loop would spin a whole core until the NIC came back.
    a, b = pair
    for node, nic in ((a, "nic1"), (b, "nic2")):
        node.ns.ip("link", "set", nic, "down")
    tid = a.prober._thread.native_id
    time.sleep(0.2)
    cpu0, t0 = _thread_cpu_s(tid), time.monotonic()
    time.sleep(1.0)
    share = (_thread_cpu_s(tid) - cpu0) / (time.monotonic() - t0)
    assert share < 0.5, f"probe loop used {share:.0%} of a core with its NIC down"
    a.wait(model.LinkDown, 0)


def test_confirmation_probing_declares_a_blackhole_confirm_ms_after_the_first_overdue_reply(lab, tmp_path):
    # 100 ms x 3 with 5 ms confirmations. The first request after the last reply goes up to an
    # interval later and waits only the RTT estimate; its overdue reply starts confirmations,
    # and 5 ms later (two of them unanswered at least) the path is lost: by one interval plus
    # about 5 ms after the last reply, where the plain schedule takes 3 x 100 ms plus the timeout.
    interval_ms, confirm_ms, slack_ns = 100.0, 5.0, 30_000_000
    a, b = start_pair(lab, tmp_path, interval_ms=interval_ms, confirm_ms=confirm_ms)
    try:
        a.wait(model.HeartbeatRecovered, 0)
        t0 = time.monotonic_ns()
        labnet.drop_ingress(a.ns, "nic1")
        lost = a.wait(model.HeartbeatLost, 0, after_ns=t0)
        last_reply = a.stats(0)["last_reply_ns"]
        assert lost.t_ns - last_reply <= (interval_ms + confirm_ms) * 1e6 + slack_ns, \
            (lost.t_ns - last_reply) / 1e6
        assert lost.t_ns - lost.confirm_first_ns >= confirm_ms * 1e6  # never before the floor
        assert lost.confirms_sent >= 2 and a.stats(0)["confirms"] == lost.confirms_sent
        assert a.stats(1)["probes"] >= 1  # the peer's answer on the alternate ruled out its stall
        labnet.clear_ingress(a.ns, "nic1")
        a.wait(model.HeartbeatRecovered, 0, after_ns=lost.t_ns)
    finally:
        a.prober.stop()
        b.prober.stop()


def test_a_peer_silent_on_every_path_for_longer_than_the_window_is_not_lost(lab, tmp_path):
    # Everything from b stops reaching a on both cables at once for about 40 ms: longer than the
    # 5 ms window, shorter than BFD's 3 x 50 ms. That is what a stopped or starved peer looks like,
    # and a failover to the other path would not help: neither path is lost, both stay up.
    # (b still hears a, and rightly loses both paths: a does not answer it.)
    interval_ms, confirm_ms = 50.0, 5.0
    a, b = start_pair(lab, tmp_path, interval_ms=interval_ms, confirm_ms=confirm_ms)
    try:
        for path in (0, 1):
            a.wait(model.HeartbeatRecovered, path)
        time.sleep(0.3)
        t0 = time.monotonic_ns()
        labnet.drop_ingress(a.ns, ("nic1", "nic3"))
        try:
            time.sleep(0.04)
        finally:
            labnet.clear_ingress(a.ns, ("nic1", "nic3"))
        t1 = time.monotonic_ns()
        assert (t1 - t0) / 1e6 < MULTIPLIER * interval_ms - 20, "the silence ran too long to judge"
        time.sleep(3 * interval_ms / 1000)
        events = [e for e in a.collect() if e.t_ns >= t0]
        assert [e for e in events if isinstance(e, model.HeartbeatLost)] == [], "\n".join(f"{(e.t_ns - t0)/1e6:.2f} {e!r}" for e in events)
        assert sum(isinstance(e, model.HeartbeatSuspect) for e in events) >= 1  # it was questioned
        assert a.stats(0)["state"] == a.stats(1)["state"] == "up"
    finally:
        a.prober.stop()
        b.prober.stop()


def test_with_confirmation_probing_the_higher_node_id_sends_half_an_interval_after_the_other(lab, tmp_path):
    # The two start within milliseconds of each other, so their schedules begin nearly in phase;
    # "beta" (the higher id) moves its requests half an interval after alpha's, so one node's
    # frame crosses each path every half interval.
    interval_ns = 100_000_000
    a, b = start_pair(lab, tmp_path, interval_ms=interval_ns / 1e6, confirm_ms=5.0)
    try:
        for node in (a, b):
            for path in (0, 1):
                node.wait(model.HeartbeatRecovered, path)
        time.sleep(12 * interval_ns / 1e9)  # a sixteenth of an interval a request, half at most
        for path in (0, 1):
            st = b.stats(path)
            offset = (st["next_send_ns"] - st["peer_request_ns"]) % interval_ns
            assert abs(offset - interval_ns / 2) <= interval_ns / 16 + 2_000_000, (path, offset / 1e6)
    finally:
        a.prober.stop()
        b.prober.stop()


def test_the_peers_requests_missing_are_questioned_and_an_answered_confirmation_keeps_the_path(lab, tmp_path):
    # Only the peer's requests are dropped on a.nic1 (its replies pass): BFD's rule sees nothing
    # wrong on a; with confirmation probing the missing request makes the path suspect, and the
    # confirmation, answered at once, clears it without an event. The peer's schedule is expected
    # again only once one of its requests arrives, so the question is asked once, not every interval.
    interval_ms = 20.0
    a, b = start_pair(lab, tmp_path, interval_ms=interval_ms, confirm_ms=5.0)
    try:
        a.wait(model.HeartbeatRecovered, 0)
        time.sleep(0.2)
        t0, confirms0 = time.monotonic_ns(), a.stats(0)["confirms"]
        labnet.drop_ingress(a.ns, "nic1", match=f"ether type 0x{ETH_P_HANET:04x} @nh,8,8 {wire.KIND_REQUEST}")
        try:
            time.sleep(10 * interval_ms / 1000)
        finally:
            labnet.clear_ingress(a.ns, "nic1")
        assert 1 <= a.stats(0)["confirms"] - confirms0 <= 3  # asked once (a late reply may add one)
        assert a.stats(0)["state"] == "up"
        assert [e for e in a.collect() if e.t_ns >= t0 and e.path == 0
                and isinstance(e, (model.HeartbeatSuspect, model.HeartbeatLost))] == []
    finally:
        a.prober.stop()
        b.prober.stop()
