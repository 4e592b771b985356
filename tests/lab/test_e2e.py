"""End to end: two real daemons in two namespaces, real faults, real failovers.

Every test's logs go through ``hanet replay --verify`` at teardown, and every namespace and daemon
is removed even when the test fails.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hanet import lab as labmod
from hanet.eventlog import reader

pytestmark = pytest.mark.lab

IDENTITY = {"alpha": {"192.0.2.1/24", "192.0.2.101/24", "2001:db8::1/64"},
            "beta": {"192.0.2.2/24", "192.0.2.102/24", "2001:db8::2/64"}}
NICS = {"alpha": ("nic1", "nic3"), "beta": ("nic2", "nic4")}
PEER_ADDRESS = {"alpha": "192.0.2.2", "beta": "192.0.2.1"}


def carried(lab: labmod.Lab, node: str) -> list[set[str]]:
    """The identity addresses found on each of the node's NICs."""
    ns = lab.netns(node)
    return [set(ns.addresses(nic)) & IDENTITY[node] for nic in NICS[node]]


def assert_identity_on(lab: labmod.Lab, node: str, path: int) -> None:
    found = carried(lab, node)
    assert found[path] == IDENTITY[node], found
    assert not found[1 - path], found
    macs = [lab.netns(node).mac(nic) for nic in NICS[node]]
    assert len(set(macs)) == 2, macs
    own_primary_mac = {"alpha": "02:00:00:00:0a:01", "beta": "02:00:00:00:0b:01"}[node]
    assert macs[path] == own_primary_mac, macs  # the identity MAC moved with the addresses


def wait_reachable(lab: labmod.Lab, node: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lab.netns(node).ping(PEER_ADDRESS[node], count=1, timeout_s=0.3):
            return
    pytest.fail(f"{node} cannot reach {PEER_ADDRESS[node]}")


def transitions(lab: labmod.Lab, node: str) -> list[dict]:
    return [e.record["tr"] for e in reader.read_file(lab.log_path(node), lambda d: None)
            if e.record["k"] == "transition" and e.record["tr"]["src"] != e.record["tr"]["dst"]]


@pytest.mark.parametrize("kind", ["carrier", "blackhole", "oneway"])
def test_fault_on_primary_fails_over_on_both_nodes_and_back(make_lab, kind):
    lab = make_lab()
    for node in ("alpha", "beta"):
        assert_identity_on(lab, node, 0)
    lab.fault(kind, "primary")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Alternate-Active", 10)
    for node in ("alpha", "beta"):
        assert_identity_on(lab, node, 1)
        wait_reachable(lab, node)
    # The peer reaches the carried routes' gateway over the alternate: routes moved too.
    routes = lab.netns("alpha").ip("-j", "route", "show", "203.0.113.0/24").stdout
    assert json.loads(routes)[0]["dev"] == "nic3"
    lab.heal("primary")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 15)
        assert_identity_on(lab, node, 0)
        wait_reachable(lab, node)


def test_random_loss_below_the_threshold_does_not_fail_over(make_lab):
    lab = make_lab(multiplier=6)
    before = {node: len(transitions(lab, node)) for node in ("alpha", "beta")}
    lab.fault("loss", "primary", percent=5)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for node in ("alpha", "beta"):
            assert lab.status(node)["state"] in ("Monitoring", "Suspect")
        time.sleep(0.1)
    for node in ("alpha", "beta"):
        assert not any(t["dst"] == "Failing-Over" for t in transitions(lab, node)[before[node]:])
        sent = lab.status(node)["paths"][0]
        assert sent["sent"] > 200  # probing went on all along


def test_flapping_primary_does_not_cause_a_transition_storm(make_lab):
    lab = make_lab()
    lab.fault("flap", "primary", hz=5, seconds=4)  # 20 carrier losses
    time.sleep(0.5)
    for node in ("alpha", "beta"):
        moves = [t for t in transitions(lab, node) if t["dst"] in ("Failing-Over", "Failing-Back")]
        # Damping (penalty 1000, suppress 3000) allows about three failures before the primary
        # is suppressed: far fewer moves than the 20 flaps.
        assert len(moves) <= 8, moves
        st = lab.status(node)
        assert st["state"] in ("Alternate-Active", "Monitoring", "Failing-Over", "Failing-Back")


def test_both_paths_down_then_either_returns(make_lab):
    lab = make_lab()
    lab.fault("blackhole", "primary")
    lab.fault("carrier", "alternate")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "All-Paths-Down", 10)
        assert sum(1 for found in carried(lab, node) if found) <= 1
    lab.heal("alternate")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Alternate-Active", 10)
        assert_identity_on(lab, node, 1)
        wait_reachable(lab, node)


@pytest.mark.parametrize("step", ["nic.disable", "nic.plumb", "nic.configure", "nic.enable", "nic.announce",
                                  "nic.routes"])
def test_kill_during_failover_then_restart_ends_consistent(make_lab, step):
    lab = make_lab(start=False)
    lab.start_daemon("beta")
    lab.start_daemon("alpha", env={"HANET_CRASH_AFTER": step})
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Monitoring", 10)
    # A watcher of every MAC change the kernel makes on alpha's NICs, across the crash and restart.
    macs = {nic: lab.netns("alpha").mac(nic) for nic in NICS["alpha"]}
    watcher = subprocess.Popen(["ip", "-n", lab.ns["alpha"], "-o", "monitor", "link"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        lab.fault("carrier", "primary")
        deadline = time.monotonic() + 10
        while lab.daemon_alive("alpha") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not lab.daemon_alive("alpha"), "the crash hook did not fire"
        lab.pids.pop("alpha", None)
        lab.start_daemon("alpha")
        lab.wait_state("alpha", "Alternate-Active", 10)
    finally:
        watcher.terminate()
        out, _ = watcher.communicate(timeout=5)
    for line in out.splitlines():  # "2: nic1: <...> ... link/ether 02:00:... brd ..."
        words = line.split()
        if len(words) > 2 and words[1].rstrip(":").split("@")[0] in macs and "link/ether" in words:
            macs[words[1].rstrip(":").split("@")[0]] = words[words.index("link/ether") + 1]
            assert len(set(macs.values())) == len(macs), (line, macs)  # I2 at every change
    assert_identity_on(lab, "alpha", 1)
    wait_reachable(lab, "alpha")


def test_sigterm_leaves_the_kernel_and_restart_resumes_without_moving(make_lab):
    lab = make_lab()
    lab.fault("blackhole", "primary")
    lab.wait_state("alpha", "Alternate-Active", 10)
    before = carried(lab, "alpha"), [lab.netns("alpha").mac(n) for n in NICS["alpha"]]
    assert lab.stop_daemon("alpha") == 0
    assert (carried(lab, "alpha"), [lab.netns("alpha").mac(n) for n in NICS["alpha"]]) == before
    records_before = sum(1 for _ in reader.read_file(lab.log_path("alpha"), lambda d: None))
    lab.start_daemon("alpha")
    st = lab.wait_state("alpha", "Alternate-Active", 10)
    assert st["active"] == 1
    time.sleep(0.3)
    after = [e.record for e in reader.read_file(lab.log_path("alpha"), lambda d: None)][records_before:]
    kernel = [a for r in after if r["k"] == "transition" for a in r["tr"]["actions"]
              if a["type"].startswith("nic.")]
    assert kernel == [], kernel
    assert carried(lab, "alpha") == before[0]


def _stderr_says(lab: labmod.Lab, node: str, text: str, timeout_s: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tail = lab.stderr_tail(node, 40)
        if text in tail:
            return tail
        time.sleep(0.02)
    pytest.fail(f"{node} never logged {text!r}:\n{lab.stderr_tail(node)}")


def test_sighup_applies_machine_parameters_names_restarts_and_survives_a_bad_file(make_lab):
    lab = make_lab()
    path = lab.config_path("alpha")
    with open(path) as fh:
        original = fh.read()
    assert "hold_down_ms = 1500.0" in original and "interval_ms = 10.0" in original
    with open(path, "w") as fh:
        fh.write(original.replace("hold_down_ms = 1500.0", "hold_down_ms = 300.0")
                 .replace("interval_ms = 10.0", "interval_ms = 20.0"))
    os.kill(lab.pids["alpha"], signal.SIGHUP)
    _stderr_says(lab, "alpha", "reloaded machine parameters; restart needed for: heartbeat")
    configs = [e.record["cfg"] for e in reader.read_file(lab.log_path("alpha"), lambda d: None)
               if e.record["k"] == "config"]
    assert configs[-1]["failback_hold_ns"] == 300_000_000, configs[-1]

    with open(path, "w") as fh:
        fh.write(original.replace("hold_down_ms = 1500.0", "hold_down_ms = -1.0"))
    os.kill(lab.pids["alpha"], signal.SIGHUP)
    tail = _stderr_says(lab, "alpha", "reload rejected")
    assert "failback.hold_down_ms" in tail
    assert lab.daemon_alive("alpha") and lab.status("alpha")["state"] == "Monitoring"
    # The rejected file changed nothing: the parameters from the good reload still hold.
    configs = [e.record["cfg"] for e in reader.read_file(lab.log_path("alpha"), lambda d: None)
               if e.record["k"] == "config"]
    assert configs[-1]["failback_hold_ns"] == 300_000_000


def test_operator_commands_over_the_control_socket(make_lab):
    from hanet import control

    lab = make_lab()
    sock = lab.socket_path("alpha")
    st = control.request(sock, "status")
    assert st["state"] == "Monitoring" and [p["health"] for p in st["paths"]] == ["up", "up"]
    assert st["paths"][0]["rtt_p50_us"] > 0
    reply = control.request(sock, "failover")
    assert reply["ok"], reply
    lab.wait_state("alpha", "Alternate-Active", 5)
    assert_identity_on(lab, "alpha", 1)
    reply = control.request(sock, "offline", interface="nic1")
    assert reply["ok"], reply
    refused = control.request(sock, "offline", interface="nic3")
    assert not refused["ok"] and "last usable" in refused["error"]
    assert control.request(sock, "failback")["ok"] is False  # nic1 is offline
    assert control.request(sock, "online", interface="nic1")["ok"]
    assert control.request(sock, "failback")["ok"]
    lab.wait_state("alpha", "Monitoring", 5)
    assert_identity_on(lab, "alpha", 0)
    bad = control.request(sock, "offline", interface="eth9")
    assert not bad["ok"] and "eth9" in bad["error"]
    whos = [e.record["e"].get("who", "") for e in reader.read_file(lab.log_path("alpha"), lambda d: None)
            if e.record["k"] == "event" and e.record["e"]["type"].startswith("operator.")]
    assert len(whos) == 6 and all(f"pid={os.getpid()}" in w and "uid=0" in w for w in whos), whos


def test_cli_status_and_failover(make_lab):
    lab = make_lab()
    sock = lab.socket_path("beta")
    out = subprocess.run([sys.executable, "-m", "hanet", "status", "-s", sock], capture_output=True, text=True)
    assert out.returncode == 0 and "Monitoring" in out.stdout and "nic2" in out.stdout
    out = subprocess.run([sys.executable, "-m", "hanet", "failover", "-s", sock, "--to", "alternate"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lab.wait_state("beta", "Alternate-Active", 5)
    out = subprocess.run([sys.executable, "-m", "hanet", "status", "-s", sock, "--json"], capture_output=True, text=True)
    assert json.loads(out.stdout)["active_name"] == "alternate"


def test_notify_protocol_against_a_real_socket(make_lab, tmp_path):
    import socket

    lab = make_lab(start=False)
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(0.2)
    try:
        lab.start_daemon("beta")
        lab.start_daemon("alpha", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        messages: list[tuple[float, str]] = []

        def collect(until: float) -> None:
            while time.monotonic() < until:
                try:
                    messages.append((time.monotonic(), listener.recv(4096).decode()))
                except socket.timeout:
                    pass

        collect(time.monotonic() + 2.0)
        texts = [t for _, t in messages]
        ready = [t for t in texts if "READY=1" in t]
        assert ready and "STATUS=Monitoring" in ready[0], texts
        assert lab.status("alpha")["state"] == "Monitoring"  # READY only once monitoring is live
        pings = [ts for ts, t in messages if t.strip() == "WATCHDOG=1"]
        assert 10 <= len(pings) <= 25, len(pings)  # every 100 ms (half of WATCHDOG_USEC)
        lab.fault("blackhole", "primary")
        lab.wait_state("alpha", "Alternate-Active", 10)
        collect(time.monotonic() + 0.5)
        assert any("STATUS=Alternate-Active" in t for _, t in messages), messages[-5:]
        # A stopped loop sends no pings: freeze the daemon, and nothing arrives.
        pid = lab.pids["alpha"]  # `ip netns exec` execs the daemon: same pid
        os.kill(pid, signal.SIGSTOP)
        messages.clear()
        collect(time.monotonic() + 0.6)
        os.kill(pid, signal.SIGCONT)
        assert not [t for _, t in messages if "WATCHDOG=1" in t]
        lab.stop_daemon("alpha")
        collect(time.monotonic() + 0.3)
        assert any("STOPPING=1" in t for _, t in messages), messages
    finally:
        listener.close()


def test_bad_config_exits_2_and_touches_nothing(make_lab):
    lab = make_lab(start=False)
    cfg = lab.config_path("alpha")
    with open(cfg) as fh:
        text = fh.read()
    before = lab.netns("alpha").ip("-j", "addr").stdout

    def hanet(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", lab.ns["alpha"], sys.executable, "-m", "hanet", *argv],
                              capture_output=True, text=True, timeout=30)

    with open(cfg, "w") as fh:  # a NIC that is not here: check names it (run would start without it)
        fh.write(text.replace('interface = "nic3"', 'interface = "nic9"'))
    proc = hanet("check", "-c", cfg)
    assert proc.returncode == 2 and "path[1].interface" in proc.stderr and "nic9" in proc.stderr
    with open(cfg, "w") as fh:  # no configured NIC here at all, and a bad value: run refuses
        fh.write(text.replace('"nic1"', '"nic8"').replace('"nic3"', '"nic9"').replace("multiplier = 3", "multiplier = 0"))
    proc = hanet("run", "-c", cfg)
    assert proc.returncode == 2 and "heartbeat.multiplier" in proc.stderr, proc.stderr
    with open(cfg, "w") as fh:
        fh.write(text.replace('"nic1"', '"nic8"').replace('"nic3"', '"nic9"'))
    proc = hanet("run", "-c", cfg)
    assert proc.returncode == 2 and "none of the configured interfaces" in proc.stderr, proc.stderr
    assert lab.netns("alpha").ip("-j", "addr").stdout == before
    assert not os.path.exists(lab.log_path("alpha"))


def test_dry_run_prints_actions_and_touches_nothing(make_lab):
    lab = make_lab(start=False)
    lab.start_daemon("beta")

    def layout():
        return carried(lab, "alpha"), [lab.netns("alpha").mac(n) for n in NICS["alpha"]]

    before = layout()
    proc = subprocess.Popen(["ip", "netns", "exec", lab.ns["alpha"], sys.executable, "-m", "hanet", "run",
                             "--dry-run", "-c", lab.config_path("alpha")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        lab.fault("carrier", "primary")
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert "would nic.disable" in out and "would nic.enable" in out, (out, err)
    assert "192.0.2.1/24" in out
    assert layout() == before
    assert not os.path.exists(lab.log_path("alpha"))


def entered(lab: labmod.Lab, node: str, state: str, after_ns: int) -> tuple[int, str]:
    """(monotonic time, trigger) of the node's first transition into ``state`` after ``after_ns``."""
    for e in reader.read_file(lab.log_path(node), lambda d: None):
        rec = e.record
        if rec["k"] == "transition" and rec["mono"] > after_ns and rec["tr"]["dst"] == state:
            return rec["mono"], rec["tr"]["trigger"]
    raise AssertionError(f"{node} never entered {state}")


@pytest.mark.parametrize("coordinate", [True, False])
def test_coordinated_convergence_when_only_one_node_sees_the_carrier(make_lab, coordinate):
    # A switch in each path: the fault takes down alpha's port only, so beta's carrier stays up and,
    # alone, beta would need 3 x 50 ms of missed heartbeats to notice.
    lab = make_lab(switched=True, interval_ms=50.0, overrides={"failover": {"coordinate": coordinate}})
    t0 = time.monotonic_ns()
    lab.fault("carrier", "primary")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Alternate-Active", 10)
    t_alpha, trigger_alpha = entered(lab, "alpha", "Failing-Over", t0)
    t_beta, trigger_beta = entered(lab, "beta", "Failing-Over", t0)
    skew_ms = abs(t_beta - t_alpha) / 1e6
    assert trigger_alpha == "link.down"
    if coordinate:
        assert trigger_beta == "peer.notice"
        assert skew_ms < 40, skew_ms  # a notice's flight, typically a few ms
    else:
        assert trigger_beta == "heartbeat.lost"
        assert skew_ms > 60, skew_ms  # beta waited for its own heartbeats
    for node in ("alpha", "beta"):
        assert_identity_on(lab, node, 1)
        wait_reachable(lab, node)


def test_lossy_primary_is_left_for_a_clean_alternate(make_lab):
    lab = make_lab(multiplier=20, overrides={"quality": {"enabled": True, "max_loss_percent": 10.0,
                                                         "window_ms": 500.0}})
    t0 = time.monotonic_ns()
    lab.fault("loss", "primary", percent=30)  # ~50 % of round trips lost, never 20 in a row
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Alternate-Active", 10)
        _, trigger = entered(lab, node, "Failing-Over", t0)
        assert trigger in ("path.quality", "peer.notice"), trigger
        assert_identity_on(lab, node, 1)


def test_carried_address_removed_by_hand_is_put_back(make_lab):
    lab = make_lab()
    lab.netns("alpha").ip("addr", "del", "192.0.2.101/24", "dev", "nic1")
    deadline = time.monotonic() + 5
    while "192.0.2.101/24" not in lab.netns("alpha").addresses("nic1") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert_identity_on(lab, "alpha", 0)
    events = [e.record["e"] for e in reader.read_file(lab.log_path("alpha"), lambda d: None) if e.record["k"] == "event"]
    assert any(e["type"] == "address.removed" and e["address"] == "192.0.2.101/24" for e in events)


def test_alternate_deleted_and_recreated_is_probed_again_and_usable(make_lab):
    from hanet import labnet

    lab = make_lab()
    labnet.sh("ip", "-n", lab.ns["alpha"], "link", "del", "nic3")  # takes beta's nic4 with it
    for node in ("alpha", "beta"):
        deadline = time.monotonic() + 5
        while lab.status(node)["paths"][1]["present"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not lab.status(node)["paths"][1]["present"]
    labnet.veth(lab.netns("alpha"), "nic3", lab.netns("beta"), "nic4",
                mac_a="02:00:00:00:0a:02", mac_b="02:00:00:00:0b:02")
    for node in ("alpha", "beta"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            path = lab.status(node)["paths"][1]
            if path["present"] and path["health"] == "up":
                break
            time.sleep(0.05)
        assert path["present"] and path["health"] == "up", path
    lab.fault("blackhole", "primary")
    for node in ("alpha", "beta"):
        lab.wait_state(node, "Alternate-Active", 10)
        assert_identity_on(lab, node, 1)
        wait_reachable(lab, node)
