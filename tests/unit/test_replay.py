"""hanet replay: timeline, damage reports and exit codes, jsonl, --verify and --stats."""
from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys

import msgpack
import pytest

from hanet import machine, model, replay
from hanet.eventlog import Writer, framing, open_logs, read_file, rotated_set
from hanet.eventlog.writer import FileOps

MS = 1_000_000


class ToyMachine:
    """A small deterministic stand-in with the machine's interface.

    Monitoring or Alternate-Active --heartbeat.lost on the active path--> Failing-Over
        (pause that path, enable the other)
    Failing-Over --action.done--> Alternate-Active;  anything else changes nothing.
    """

    def __init__(self, params, state="Monitoring", active=0, next_id=1):
        self.params, self.state, self.active, self.next_id = params, state, active, next_id

    @classmethod
    def from_params(cls, params):
        return cls(params)

    @classmethod
    def from_snapshot(cls, params, snap):
        return cls(params, snap["state"], snap["active"], snap["next_id"])

    def reconfigure(self, params):
        self.params = params

    def snapshot(self):
        return {"state": self.state, "active": self.active, "next_id": self.next_id}

    def _ids(self, count):
        first = self.next_id
        self.next_id += count
        return range(first, first + count)

    def step(self, event):
        src = self.state
        if src in ("Monitoring", "Alternate-Active") and event.type == "heartbeat.lost" \
                and event.path == self.active:
            a, b = self._ids(2)
            other = 1 - self.active
            actions = (model.PauseMonitoring(id=a, path=self.active), model.EnableNic(id=b, path=other))
            self.state, self.active = "Failing-Over", other
            return machine.Step(src, self.state, event.type, "active path lost", actions, self.active)
        if src == "Failing-Over" and event.type == "action.done":
            self.state = "Alternate-Active"
            return machine.Step(src, self.state, event.type, "failover done", (), self.active)
        return machine.Step(src, src, event.type, "no rule", (), self.active)


def record(path, node, events, *, start_mono=0, wall_offset=0, **kwargs):
    """Play the shell: write each event, step the machine, write the transition if it changed."""
    m = ToyMachine({"multiplier": 3})
    mono = itertools.count(start_mono, 1000)
    with Writer(path, node, params=lambda: m.params, snapshot=m.snapshot,
                mono_ns=lambda: next(mono), wall_ns=lambda: 1_700_000_000 * 10**9 + wall_offset + next(mono),
                **kwargs) as w:
        for event in events:
            cause = w.event(event)
            step = m.step(event)
            if step.changed:
                w.transition(step, cause)
    return path


def failover_events(t0=0):
    return [model.DaemonStarted(t_ns=t0, holder=0, carrier=(True, True)),
            model.HeartbeatSuspect(t_ns=t0 + 100 * MS, path=0, misses=1),
            model.HeartbeatLost(t_ns=t0 + 130 * MS, path=0, misses=3, first_miss_ns=t0 + 100 * MS),
            model.ActionDone(t_ns=t0 + 134 * MS, action_id=2, kind="nic.enable"),
            model.PathQuality(t_ns=t0 + 1134 * MS, path=1, loss_ppm=0)]


def entries_of(*paths):
    damage = []
    got = list(open_logs(paths, damage.append))
    assert damage == []
    return got


def rewrite(path, change):
    """Re-frame every record of ``path`` after ``change(record)``: valid CRCs, altered content."""
    out = b""
    for entry in read_file(path, pytest.fail):
        out += framing.frame(msgpack.packb(change(entry.record)))
    with open(path, "wb") as fh:
        fh.write(out)


@pytest.fixture
def toy_machine(monkeypatch):
    """The CLI's --verify folds through hanet.machine.Machine: make it the stand-in."""
    monkeypatch.setattr(machine, "Machine", ToyMachine, raising=False)


# --------------------------------------------------------------------------- timeline
def test_timeline_merges_two_nodes_one_line_per_record(tmp_path, capsys):
    alpha = record(str(tmp_path / "alpha.hlog"), "alpha", failover_events())
    beta = record(str(tmp_path / "beta.hlog"), "beta", failover_events()[:2], wall_offset=200)
    assert replay.main([alpha, beta]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(entries_of(alpha, beta))
    assert lines[0].startswith("+0.000 ms alpha    config ")
    assert lines[1].startswith("+0.000 ms beta     config ")  # 0.2 us later
    assert any("alpha    event heartbeat.lost path=0 misses=3 first_miss_ns=100000000" in line for line in lines)
    transition = next(line for line in lines if " transition " in line)
    assert ("alpha    transition Monitoring -> Failing-Over [heartbeat.lost] active=1 "
            "actions=probe.pause(path=0),nic.enable(path=1)") in transition
    times = [float(line.split()[0]) for line in lines]
    assert times == sorted(times)


def test_damage_is_reported_with_offset_and_exit_status(tmp_path, capsys):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())
    entries = entries_of(path)
    victim = entries[3]
    with open(path, "r+b") as fh:
        fh.seek(victim.offset + framing.HEADER_SIZE + 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 1]))
    assert replay.main([path]) == 3
    out, err = capsys.readouterr()
    skipped = entries[4].offset - victim.offset
    assert err.strip() == f"alpha events.hlog @ offset {victim.offset}: corrupt record (crc mismatch), skipped {skipped} bytes"
    assert len(out.splitlines()) == len(entries) - 1
    assert replay.main(["--allow-damage", path]) == 0


def test_torn_tail_is_reported(tmp_path, capsys):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 3)
    assert replay.main([path]) == 3
    assert ": torn tail (truncated payload)" in capsys.readouterr().err


def test_unreadable_file_and_bad_usage_exit_2(tmp_path, capsys):
    assert replay.main([str(tmp_path / "missing.hlog")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert replay.main([]) == 2
    assert replay.main(["--verify", "--stats", str(tmp_path)]) == 2


def test_rotated_siblings_are_read_with_the_log(tmp_path, capsys):
    path = str(tmp_path / "events.hlog")
    events = [model.HeartbeatSuspect(t_ns=i, path=1) for i in range(200)]
    record(path, "alpha", events, rotate_bytes=4096, keep=10)
    assert len(rotated_set(path)) > 2
    assert replay.main([path]) == 0
    assert sum(" event " in line for line in capsys.readouterr().out.splitlines()) == 200


# --------------------------------------------------------------------------- jsonl
def test_jsonl_streams_records_with_file_offset_and_hex_bytes(tmp_path, capsys):
    path = str(tmp_path / "events.hlog")
    with Writer(path, "alpha", params=lambda: {"key_id": b"\x01\xab"}) as w:
        w.event(model.LinkDown(t_ns=7, path=1))
    assert replay.main(["--format", "jsonl", path]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    entries = entries_of(path)
    assert [(d["file"], d["offset"], d["n"]) for d in lines] == [(e.file, e.offset, e.record["n"]) for e in entries]
    assert lines[0]["cfg"] == {"key_id": "01ab"}
    assert lines[1]["e"] == {"type": "link.down", "t_ns": 7, "path": 1, "source": "poll"}


# --------------------------------------------------------------------------- verify
def test_verify_accepts_a_faithful_log(tmp_path, capsys, toy_machine):
    alpha = record(str(tmp_path / "alpha.hlog"), "alpha", failover_events())
    beta = record(str(tmp_path / "beta.hlog"), "beta", failover_events(5 * MS))
    result = replay.verify(entries_of(alpha, beta), machine_factory=ToyMachine)
    assert result.mismatch is None
    assert (result.events, result.transitions, result.unverified) == (10, 4, 0)
    assert replay.main(["--verify", alpha, beta]) == 0
    assert "verify: ok, 4 transitions match over 10 events" in capsys.readouterr().out


def test_verify_names_a_tampered_transition_record(tmp_path, capsys, toy_machine):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())

    def tamper(rec):
        if rec["k"] == "transition" and rec["tr"]["dst"] == "Alternate-Active":
            rec["tr"]["dst"] = "Monitoring"
        return rec
    rewrite(path, tamper)
    tampered = next(e for e in entries_of(path) if e.record["k"] == "transition"
                    and e.record["tr"]["dst"] == "Monitoring")
    result = replay.verify(entries_of(path), machine_factory=ToyMachine)
    assert result.mismatch.entry == tampered
    assert str(result.mismatch) == (f"mismatch at alpha events.hlog @ offset {tampered.offset} "
                                    f"(n={tampered.record['n']}): dst: recorded 'Monitoring', "
                                    f"replayed 'Alternate-Active'")
    assert replay.main(["--verify", path]) == 1
    assert f"@ offset {tampered.offset}" in capsys.readouterr().out


def test_verify_finds_a_changed_action(tmp_path, toy_machine):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())

    def tamper(rec):
        if rec["k"] == "transition" and rec["tr"]["actions"]:
            rec["tr"]["actions"][1]["path"] = 0
        return rec
    rewrite(path, tamper)
    result = replay.verify(entries_of(path), machine_factory=ToyMachine)
    assert result.mismatch.detail.startswith("actions[1]: recorded {'type': 'nic.enable', 'id': 2, 'path': 0}")


def test_verify_finds_a_missing_and_an_extra_transition(tmp_path, toy_machine):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())
    entries = entries_of(path)
    lost = next(e for e in entries if e.record["k"] == "event" and e.record["e"]["type"] == "heartbeat.lost")
    rewrite(path, lambda rec: rec if rec["k"] != "transition" or rec["tr"]["cause"] != lost.record["n"]
            else {**rec, "k": "snapshot", "s": {}})  # the transition record is gone
    result = replay.verify(entries_of(path), machine_factory=ToyMachine)
    assert result.mismatch.entry.offset == lost.offset
    assert "replay made transition Monitoring -> Failing-Over [heartbeat.lost] that the log does not record" \
        in result.mismatch.detail

    # A transition recorded for an event that changes nothing.
    path2 = str(tmp_path / "extra.hlog")
    with Writer(path2, "alpha", params=lambda: {}) as w:
        cause = w.event(model.PathQuality(t_ns=1, path=0))
        w.transition(machine.Step("Monitoring", "Suspect", "path.quality", "?", (), 0), cause)
    result = replay.verify(entries_of(path2), machine_factory=ToyMachine)
    assert "replay made none" in result.mismatch.detail


def test_verify_a_rotated_file_alone_from_its_snapshot(tmp_path, toy_machine):
    path = str(tmp_path / "events.hlog")
    events = failover_events() + [model.PathQuality(t_ns=2000 * MS + i, path=1) for i in range(100)]
    events += [model.HeartbeatLost(t_ns=3000 * MS, path=1, misses=3)]  # fails back over to path 0
    record(path, "alpha", events, rotate_bytes=4096, keep=10)
    newest = rotated_set(path)[-1]
    result = replay.verify(entries_of(newest), machine_factory=ToyMachine)
    assert result.mismatch is None and result.transitions == 1 and result.unverified == 0


def test_verify_notes_a_step_cut_off_by_a_restart(tmp_path, toy_machine):
    path = str(tmp_path / "events.hlog")
    with Writer(path, "alpha", params=lambda: {}) as w:  # the daemon died before the transition
        w.event(model.HeartbeatLost(t_ns=1, path=0, misses=3))
    record(path, "alpha", [model.PathQuality(t_ns=2, path=0)])
    result = replay.verify(entries_of(path), machine_factory=ToyMachine)
    assert result.mismatch is None
    assert result.unwritten and "not recorded before the daemon restarted" in result.unwritten[0]


def test_verify_with_the_real_machine(tmp_path):
    """A failover recorded by the real machine re-folds exactly; a tampered reason is no mismatch
    (reasons are words), a tampered active path is."""
    path = str(tmp_path / "events.hlog")
    mach = machine.Machine(machine.Params(paths=("p0", "p1")))
    queue = [model.DaemonStarted(t_ns=1, holder=0, carrier=(True, True)),
             model.HeartbeatRecovered(t_ns=2, path=0, replies=3),
             model.HeartbeatRecovered(t_ns=3, path=1, replies=3),
             model.HeartbeatLost(t_ns=40 * MS, path=0, misses=3, first_miss_ns=10 * MS)]
    now = 40 * MS
    with Writer(path, "alpha", params=lambda: mach.params.to_dict(), snapshot=mach.snapshot) as w:
        for _ in range(100):  # bounded: the sequence settles well within this
            if not queue:
                break
            event = queue.pop(0)
            cause = w.event(event)
            step = mach.step(event)
            if step.changed:
                w.transition(step, cause)
            for action in step.actions:  # every action succeeds, 1 ms apart
                now += MS
                if not isinstance(action, (model.StartTimer, model.CancelTimer)):
                    queue.append(model.ActionDone(t_ns=now, action_id=action.id, kind=action.type))
    assert mach.state == "Alternate-Active"
    result = replay.verify(entries_of(path))
    assert result.mismatch is None and result.transitions >= 3 and result.unverified == 0

    rewrite(path, lambda rec: {**rec, "tr": {**rec["tr"], "reason": "edited"}} if rec["k"] == "transition" else rec)
    assert replay.verify(entries_of(path)).mismatch is None
    rewrite(path, lambda rec: {**rec, "tr": {**rec["tr"], "active": 0}}
            if rec["k"] == "transition" and rec["tr"]["dst"] == "Alternate-Active" else rec)
    assert replay.verify(entries_of(path)).mismatch.detail == "active: recorded 0, replayed 1"


# --------------------------------------------------------------------------- stats
def test_stats_detection_failover_and_time_per_path(tmp_path, capsys):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())
    nodes = replay.stats(entries_of(path))
    alpha = nodes["alpha"].summary()
    assert alpha["detection"]["all_ms"] == [30.0]   # suspect at 100 ms, declared at 130 ms
    assert alpha["failover"]["all_ms"] == [4.0]     # Failing-Over at 130 ms, settled at 134 ms
    assert alpha["path_s"] == {"0": 0.130, "1": 1.004}
    assert replay.main(["--stats", "--json", path]) == 0
    assert json.loads(capsys.readouterr().out)["alpha"]["detection"]["median_ms"] == 30.0
    assert replay.main(["--stats", path]) == 0
    out = capsys.readouterr().out
    assert "detections: 1, median 30.000 ms" in out and "path 1 1.004 s" in out


def test_stats_ignores_signs_on_a_path_that_was_not_active(tmp_path):
    events = failover_events()
    events.insert(1, model.LinkDown(t_ns=50 * MS, path=1))  # the standby path, not the active one
    path = record(str(tmp_path / "events.hlog"), "alpha", events)
    assert replay.stats(entries_of(path))["alpha"].detections_ns == [30 * MS]


# --------------------------------------------------------------------------- module entry
def test_python_dash_m_runs_replay(tmp_path):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-m", "hanet.replay", "--format", "jsonl", path],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == len(entries_of(path))


def test_verify_folds_a_path_added_between_runs(tmp_path):
    path = str(tmp_path / "events.hlog")
    with Writer(path, "alpha", params=lambda: {"paths": ["p0", "p1"]}) as w:
        w.event(model.LinkDown(t_ns=1, path=0))
    with Writer(path, "alpha", params=lambda: {"paths": ["p0", "p1", "p2"]}) as w:  # a path added
        w.event(model.LinkDown(t_ns=2, path=2))
    result = replay.verify(entries_of(path))
    assert result.mismatch is None and result.events == 2


# --------------------------------------------------------------------------- bad input, exit codes
def test_exit_codes_tell_bad_input_apart(tmp_path, capsys):
    good = record(str(tmp_path / "good.hlog"), "alpha", failover_events())
    assert replay.main([good]) == replay.EXIT_OK
    capsys.readouterr()

    garbage = tmp_path / "garbage.hlog"
    garbage.write_bytes(b"this is not an event log\n" * 40)
    assert replay.main([str(garbage)]) == replay.EXIT_DAMAGE
    assert capsys.readouterr().err.strip() == \
        "? garbage.hlog @ offset 0: corrupt record (garbage), skipped 1000 bytes"

    truncated = tmp_path / "truncated.hlog"
    data = open(good, "rb").read()
    last = entries_of(good)[-1].offset
    truncated.write_bytes(data[:last + 5])
    assert replay.main([str(truncated)]) == replay.EXIT_DAMAGE
    assert capsys.readouterr().err.strip() == \
        f"alpha truncated.hlog @ offset {last}: torn tail (truncated header), 5 bytes"

    shaped = tmp_path / "shaped.hlog"
    entries = entries_of(good)
    victim = entries[2]
    bad = framing.frame(msgpack.packb({**victim.record, "n": str(victim.record["n"])}))
    shaped.write_bytes(data[:victim.offset] + bad + data[entries[3].offset:])
    for mode in ([], ["--verify"], ["--stats"], ["--format", "jsonl"]):
        assert replay.main(mode + [str(shaped)]) == replay.EXIT_DAMAGE, mode
        err = capsys.readouterr().err
        assert f"alpha shaped.hlog @ offset {victim.offset}: corrupt record (bad record: n is a str, not int)" in err
    assert replay.main(["--allow-damage", str(shaped)]) == replay.EXIT_OK
    capsys.readouterr()

    missing = str(tmp_path / "missing.hlog")
    assert replay.main([good, missing]) == replay.EXIT_USAGE
    assert capsys.readouterr().err.strip() == f"hanet replay: cannot read {missing}: No such file or directory"
    assert replay.main([str(tmp_path)]) == replay.EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err
    assert replay.main(["--no-such-flag", good]) == replay.EXIT_USAGE


def test_a_wrong_shaped_event_is_damage_not_a_mismatch(tmp_path, capsys, toy_machine):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())
    rewrite(path, lambda rec: {**rec, "e": {**rec["e"], "path": "zero"}}
            if rec["k"] == "event" and rec["e"]["type"] == "heartbeat.lost" else rec)
    assert replay.main(["--verify", path]) == replay.EXIT_DAMAGE
    out, err = capsys.readouterr()
    assert "verify: ok" in out and "field path is a str" in err


def test_an_unusable_config_is_damage_not_a_mismatch(tmp_path, capsys):
    path = str(tmp_path / "events.hlog")
    with Writer(path, "alpha", params=lambda: {"paths": 3}) as w:  # not what Params takes
        w.event(model.LinkDown(t_ns=1, path=0))
    assert replay.main(["--verify", path]) == replay.EXIT_DAMAGE
    out, err = capsys.readouterr()
    assert "verify: ok" in out
    assert "alpha events.hlog @ offset 0: corrupt record (bad record: config the machine cannot use" in err


class FullDisk(FileOps):
    """Writes fail with ENOSPC while ``full`` is set."""
    full = False

    def write(self, fd, data):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


def record_with_a_full_disk(path):
    """The failover of failover_events(), with the disk full from the heartbeat.lost event
    through its transition: the event is held and written later, after it the gap record,
    which names the transition as lost."""
    m = ToyMachine({"multiplier": 3})
    ops = FullDisk()
    mono = itertools.count(0, 1000)
    with Writer(path, "alpha", params=lambda: m.params, snapshot=m.snapshot, ops=ops,
                max_pending_bytes=0, retry_interval_ns=0, mono_ns=lambda: next(mono),
                wall_ns=lambda: 1_700_000_000 * 10**9 + next(mono)) as w:
        for event in failover_events():
            ops.full = event.type == "heartbeat.lost"
            cause = w.event(event)
            step = m.step(event)
            if step.changed:
                w.transition(step, cause)
    return path


def test_a_gap_is_damage_with_its_place_never_a_mismatch(tmp_path, capsys, toy_machine):
    path = record_with_a_full_disk(str(tmp_path / "events.hlog"))
    entries = entries_of_with_damage(path)
    gap = next(e for e in entries if e.record["k"] == "gap")
    lost = gap.record["g"]["lost"]
    assert len(lost) == 1 and lost[0][1] == lost[0][0] == gap.record["n"] + 1  # the transition
    expected = (f"alpha events.hlog @ offset {gap.offset}: gap (n={gap.record['n']}): records "
                f"{lost[0][0]} lost (ENOSPC: write {path}: No space left on device)")

    assert replay.main([path]) == replay.EXIT_DAMAGE
    out, err = capsys.readouterr()
    assert err.strip() == expected
    assert f"alpha    gap lost={lost[0][0]}-{lost[0][1]} unsure=- errno=ENOSPC" in out

    # Folding on across the gap, the replayed failover would have no transition record: a
    # mismatch. The gap restarts the fold at the snapshot written after it instead.
    assert replay.main(["--verify", path]) == replay.EXIT_DAMAGE
    out, err = capsys.readouterr()
    assert err.strip() == expected
    assert "verify: ok, 1 transitions match" in out and "1 gaps" in out

    assert replay.main(["--stats", path]) == replay.EXIT_DAMAGE
    assert capsys.readouterr().err.strip() == expected
    assert replay.main(["--verify", "--allow-damage", path]) == replay.EXIT_OK


def entries_of_with_damage(*paths):
    return list(open_logs(paths, lambda damage: None))


def test_a_flipped_byte_before_a_transition_is_damage_not_a_mismatch(tmp_path, capsys, toy_machine):
    path = record(str(tmp_path / "events.hlog"), "alpha", failover_events())
    lost = next(e for e in entries_of(path) if e.record["k"] == "event"
                and e.record["e"]["type"] == "heartbeat.lost")
    with open(path, "r+b") as fh:  # the event that caused the failover is unreadable now
        fh.seek(lost.offset + framing.HEADER_SIZE + 3)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x10]))
    assert replay.main(["--verify", path]) == replay.EXIT_DAMAGE
    out, err = capsys.readouterr()
    assert f"@ offset {lost.offset}: corrupt record (crc mismatch)" in err
    assert "verify: ok" in out and "records unverifiable" in out
