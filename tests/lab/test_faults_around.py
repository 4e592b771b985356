"""Faults around hanet, in real namespaces: a NIC that vanishes, a peer daemon that restarts, a
restart while a path is damped, and the enable delay as the kernel sees it."""
from __future__ import annotations

import datetime
import os
import signal
import time

import pytest

from test_e2e import IDENTITY, NICS, assert_identity_on, transitions, wait_reachable

pytestmark = pytest.mark.lab


def both_on_the_alternate(lab) -> None:
    """Both nodes settle in Alternate-Active with their identities on the alternate, reachable."""
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Alternate-Active", 10)
        assert_identity_on(lab, node, 1)
        wait_reachable(lab, node)


def test_nic_deleted_while_holding_the_identity_fails_over(make_lab):
    lab = make_lab()
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 10, all_paths_up=True)
    before = {node: len(transitions(lab, node)) for node in ("alpha", "beta")}
    lab.netns("alpha").ip("link", "del", "nic1")  # a veth pair: beta's nic2 goes with it
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Alternate-Active", 10)
    for node in ("alpha", "beta"):
        assert set(lab.netns(node).addresses(NICS[node][1])) & IDENTITY[node] == IDENTITY[node]
        wait_reachable(lab, node)
        st = lab.status(node)
        assert st["paths"][0]["present"] is False and st["paths"][1]["usable"] is True
        after = transitions(lab, node)[before[node]:]
        assert not [t for t in after if t["dst"] == "All-Paths-Down"], after


def test_peer_daemon_restarts_are_not_path_flaps(make_lab):
    """A rolling upgrade: beta's daemon restarted five times in 15 s. Every path falls silent at
    once each time: the peer is gone, not a path, so nothing is damped."""
    lab = make_lab()
    for _ in range(5):
        lab.stop_daemon("beta")
        time.sleep(1.0)
        lab.start_daemon("beta")
        lab.wait_state("beta", ("Monitoring", "Alternate-Active"), 10)
        time.sleep(1.0)
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 15, all_paths_up=True)
        st = lab.status(node)
        assert [p["penalty"] for p in st["paths"]] == [0.0, 0.0], st["paths"]
        assert not any(p["damped"] for p in st["paths"])
    for node in ("alpha", "beta"):
        assert_identity_on(lab, node, 0)
        wait_reachable(lab, node)
    reasons = [t["reason"] for t in transitions(lab, "alpha")]
    assert any("the peer or its daemon is gone" in r for r in reasons), reasons


def test_restart_while_damped_decays_and_fails_back(make_lab):
    damping = {"penalty": 1000.0, "suppress": 1500.0, "reuse": 900.0, "half_life_ms": 1500.0,
               "max_penalty": 4000.0}
    lab = make_lab(overrides={"damping": damping, "failback": {"hold_down_ms": 300.0}})
    for _ in range(3):  # flaps of the primary while the alternate still hears the peer
        lab.fault("carrier", "primary")
        lab.wait_state("alpha", "Alternate-Active", 10)
        time.sleep(0.1)
        lab.heal("primary")
        time.sleep(0.3)
    st = lab.status("alpha")
    assert st["paths"][0]["damped"] and st["state"] == "Alternate-Active", st["paths"][0]
    lab.stop_daemon("alpha")
    lab.start_daemon("alpha")
    st = lab.wait_state("alpha", "Alternate-Active", 10)
    assert st["paths"][0]["damped"], st["paths"][0]  # still damped after the restart
    first = st["paths"][0]["penalty"]
    time.sleep(0.5)
    assert lab.status("alpha")["paths"][0]["penalty"] < first  # shown decayed to now
    # The reuse timer was re-armed from the state: the primary comes back and both fail back.
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 15)
    for node in ("alpha", "beta"):
        assert_identity_on(lab, node, 0)
        wait_reachable(lab, node)


def test_enable_waits_for_the_delay_as_the_kernel_sees_it(make_lab):
    """Claim 15: the alternate's addresses appear no sooner than failover.enable_delay_ms after
    the move starts (the primary's addresses leave), both read from the kernel's notifications."""
    import subprocess

    delay_ms = 300.0
    lab = make_lab(overrides={"failover": {"enable_delay_ms": delay_ms}})
    # ip stamps each notification as it receives it (-ts): both ends of the interval come from
    # the same reader, so the pipe's buffering does not matter.
    monitor = subprocess.Popen(["ip", "-n", lab.netns("alpha").name, "-ts", "-o", "monitor", "address"],
                               stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)  # the monitor is subscribed
        lab.fault("carrier", "primary")
        lab.wait_state("alpha", "Alternate-Active", 5)
        time.sleep(0.2)
    finally:
        monitor.terminate()
        out, _ = monitor.communicate(timeout=5)
    removed = added = None
    for line in out.splitlines():
        if " 192.0.2.1/24 " not in line:
            continue
        stamp = datetime.datetime.fromisoformat(line[1:line.index("]")]).timestamp()
        if "Deleted" in line and " nic1 " in line and removed is None:
            removed = stamp
        elif "Deleted" not in line and " nic3 " in line and removed is not None and added is None:
            added = stamp
    assert removed is not None and added is not None, out
    assert (added - removed) * 1000 >= delay_ms - 1.0, (added - removed)


def log_alpha_to(lab, log_file: str) -> None:
    """Point alpha's event log (and its sequence floor beside it) at ``log_file``."""
    with open(lab.config_path("alpha")) as fh:
        text = fh.read()
    with open(lab.config_path("alpha"), "w") as fh:
        fh.write(text.replace(f'"{lab.log_path("alpha")}"', f'"{log_file}"'))


def log_recovers_then_replays(lab, log_file: str) -> int:
    """Once alpha says its log is writable again: fail back, stop alpha, and replay its log."""
    from hanet import replay

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and lab.status("alpha")["eventlog_degraded"]:
        time.sleep(0.1)
    assert lab.status("alpha")["eventlog_degraded"] is None
    lab.heal("primary")
    lab.wait_state("alpha", "Monitoring", 15)
    lab.stop_daemon("alpha")
    return replay.main([log_file, "--verify"])


def test_a_full_disk_under_the_log_never_stops_a_failover(make_lab, tmp_path):
    """alpha's event log on a 64 KiB tmpfs that is full from the start: alpha fails over all the
    same, says its log is degraded, and writes again (with a gap record) once space returns."""
    import subprocess

    from hanet import replay

    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    try:
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill it: bounded by the tmpfs size
            for _ in range(1024):
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        lab = make_lab(start=False)
        log_file = str(mount / "alpha.hlog")
        log_alpha_to(lab, log_file)
        lab.start_daemons()
        st = lab.wait_state("alpha", "Monitoring", 10)
        assert st["eventlog_degraded"], st
        lab.fault("carrier", "primary")
        both_on_the_alternate(lab)
        filler.unlink()
        # The gap is damage with its place, never a mismatch.
        assert log_recovers_then_replays(lab, log_file) == replay.EXIT_DAMAGE
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def freezable_fs(tmp_path):
    """An ext4 file system on a loop device (tmpfs cannot be frozen), mounted for the test; thawed
    and unmounted after it, even when the test fails."""
    import subprocess

    image, mount = tmp_path / "fs.img", tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "16M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True)  # EINVAL if not frozen
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # still busy: detach


def test_a_frozen_file_system_under_the_log_never_holds_up_a_failover(freezable_fs, make_lab):
    """alpha starts with its event log (and sequence floor) on a frozen file system, where every
    write and fdatasync blocks as on a hung disk: it starts, fails over all the same and says its
    log is stalled; thawed, it writes every record it held, in order, and the log replays."""
    import subprocess

    from hanet import replay

    lab = make_lab(start=False)
    log_file = str(freezable_fs / "alpha.hlog")
    log_alpha_to(lab, log_file)
    subprocess.run(["fsfreeze", "-f", str(freezable_fs)], check=True)
    try:
        lab.start_daemons()
        lab.wait_state("alpha", "Monitoring", 10)
        lab.fault("carrier", "primary")
        both_on_the_alternate(lab)
        assert "stalled" in (lab.status("alpha")["eventlog_degraded"] or ""), lab.status("alpha")
    finally:
        subprocess.run(["fsfreeze", "-u", str(freezable_fs)], check=True)
    assert log_recovers_then_replays(lab, log_file) == replay.EXIT_OK  # nothing lost: held, not dropped


def _bytes_waiting(fd: int) -> int:
    import fcntl
    import struct
    import termios
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_log_reader_that_stops_reading_never_holds_up_a_failover(make_lab):
    """alpha's stderr (its log lines; journald's stream under systemd) is a pipe of one page that
    nobody reads, as when journald hangs: alpha fails over all the same, and answers status."""
    import fcntl

    lab = make_lab(start=False)
    path = os.path.join(lab.workdir, "alpha.stderr")
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(reader, 1031, 4096)  # F_SETPIPE_SZ: one page, which the first lines fill
        lab.start_daemon("alpha")  # opens the pipe for writing
        os.unlink(path)
        open(path, "wb").close()  # later readers of the stderr file find a plain, empty one
        lab.start_daemon("beta")
        for node in ("alpha", "beta"):
            lab.wait_state(node, "Monitoring", 15)
        for _ in range(400):  # each reload logs a line: fill the pipe (bounded)
            if _bytes_waiting(reader) > 4096 - 256:  # the next line no longer fits
                break
            os.kill(lab.pids["alpha"], signal.SIGHUP)
            time.sleep(0.01)
        assert _bytes_waiting(reader) > 4096 - 256
        lab.fault("carrier", "primary")
        both_on_the_alternate(lab)
        assert lab.status("alpha")["state"] == "Alternate-Active"
    finally:
        os.close(reader)  # the daemon's next line gets EPIPE: nothing waits on it any more


def test_a_path_renamed_between_runs_starts_cleanly_with_a_record(make_lab):
    """The configuration changed while the daemon was down (a path removed, one added): the
    restart adapts the folded state by path name, says what changed, and never crash-loops."""
    from hanet.eventlog import reader

    lab = make_lab()
    lab.wait_state("alpha", "Monitoring", 10, all_paths_up=True)
    lab.stop_daemon("alpha")
    with open(lab.config_path("alpha")) as fh:
        text = fh.read()
    with open(lab.config_path("alpha"), "w") as fh:
        fh.write(text.replace('name = "alternate"', 'name = "backup"'))
    lab.start_daemon("alpha")
    st = lab.wait_state("alpha", "Monitoring", 10, all_paths_up=True)
    assert st["config_changes"] == ["path 'backup' added", "path 'alternate' removed"], st["config_changes"]
    configs = [e.record["cfg"] for e in reader.read_file(lab.log_path("alpha"), lambda d: None)
               if e.record["k"] == "config"]
    assert configs[-1]["paths"] == ["primary", "backup"]
    assert configs[-1]["changes"] == st["config_changes"]
    assert_identity_on(lab, "alpha", 0)
    wait_reachable(lab, "alpha")


def test_asymmetric_damping_still_ends_on_one_cable(make_lab):
    """alpha damps a flapping primary, beta (damping off) does not: beta fails back and tells
    alpha, which follows onto a path it hears, damped or not. Both end on the same cable."""
    lab = make_lab(start=False, overrides={"failback": {"hold_down_ms": 300.0}})
    with open(lab.config_path("beta"), "a") as fh:
        fh.write("\n[damping]\nenabled = false\n")
    with open(lab.config_path("alpha"), "a") as fh:
        fh.write("\n[damping]\npenalty = 1000.0\nsuppress = 1500.0\nreuse = 900.0\nhalf_life_ms = 60000.0\n")
    lab.start_daemons()
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 10, all_paths_up=True)
    for _ in range(3):
        lab.fault("carrier", "primary")
        lab.wait_state("alpha", "Alternate-Active", 10)
        time.sleep(0.1)
        lab.heal("primary")
        time.sleep(0.3)
    assert lab.status("alpha")["paths"][0]["damped"]
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 15)
    assert lab.status("alpha")["paths"][0]["damped"]  # it followed; it did not decide
    for node in ("alpha", "beta"):
        assert_identity_on(lab, node, 0)
        wait_reachable(lab, node)


@pytest.mark.parametrize("step", ["nic.disable", "nic.plumb", "nic.configure", "nic.enable"])
def test_a_step_that_fails_mid_move_is_retried_and_bookkeeping_still_runs(make_lab, step):
    lab = make_lab(start=False)
    lab.start_daemon("alpha", env={"HANET_FAIL_STEP": step})
    lab.start_daemon("beta")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 10, all_paths_up=True)
    lab.fault("carrier", "primary")
    both_on_the_alternate(lab)
    from hanet.eventlog import reader
    reasons = [e.record["tr"]["reason"] for e in reader.read_file(lab.log_path("alpha"), lambda d: None)
               if e.record["k"] == "transition"]
    assert "a step failed: issue the move again" in reasons or step == "nic.disable", reasons
    assert any("failed" in r for r in reasons), reasons
    # The primary's monitoring was resumed despite the failed step: the failback comes.
    lab.heal("primary")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 15)
        assert_identity_on(lab, node, 0)


def test_start_with_a_nic_missing_then_it_returns(make_lab):
    """hanet run starts with the alternate cable unplugged (marked gone in status and the log);
    when the NIC comes back its probe is rebound, the path is heard, and a failover can use it."""
    from hanet import labnet
    from hanet.eventlog import reader

    lab = make_lab(start=False)
    lab.netns("alpha").ip("link", "del", "nic3")  # the veth pair: beta's nic4 goes too
    lab.start_daemon("alpha")
    lab.start_daemon("beta")
    for node in ("alpha", "beta"):
        lab.wait_state(node, ("Monitoring", "All-Paths-Down"), 10)
        deadline = time.monotonic() + 10
        while not (st := lab.status(node))["paths"][0]["usable"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert st["state"] == "Monitoring" and st["paths"][0]["usable"], st
        assert st["paths"][1]["present"] is False and not st["paths"][1]["usable"], st["paths"]
    started = [e.record["e"] for e in reader.read_file(lab.log_path("alpha"), lambda d: None)
               if e.record["k"] == "event" and e.record["e"]["type"] == "daemon.started"]
    assert started[-1]["present"] == [True, False]
    labnet.veth(lab.netns("alpha"), "nic3", lab.netns("beta"), "nic4",
                mac_a="02:00:00:00:0a:02", mac_b="02:00:00:00:0b:02")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 10, all_paths_up=True)
    lab.fault("carrier", "primary")
    both_on_the_alternate(lab)
