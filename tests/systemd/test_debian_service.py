"""hanet installed and run as Debian does, under a real systemd.

Two Debian 12 containers (systemd as PID 1) joined by two veth cables; the package from bin/package
is installed in each with apt, configured as an administrator would (two nodes, two paths, TEST-NET
addresses, one key from `hanet keygen`) and started with `systemctl enable --now hanet`. The tests
then look at it only through systemd, the journal, the kernel and the event log.
"""
from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import time

import pytest

import nspawn  # tests/systemd/nspawn.py
from hanet.lab import ALPHA, BETA, node_config

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: containers, cgroups, veth"),
]

PLANS = {"alpha": ALPHA, "beta": BETA}
PEER = {"alpha": "192.0.2.2", "beta": "192.0.2.1"}
CONFIG = "/etc/hanet/hanet.toml"
KEY = "/etc/hanet/heartbeat.key"
EVENTLOG = "/var/lib/hanet/events.hlog"
HOLD_DOWN_MS = 1500.0


class Node:
    """One container with hanet installed, seen the way an administrator sees it."""

    def __init__(self, name: str, box: nspawn.Container):
        self.name, self.box = name, box

    def show(self, *props: str) -> dict[str, str]:
        out = self.box.run("systemctl", "show", "hanet", *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, name: str) -> str:
        return self.show(name)[name]

    def status(self) -> dict:
        return json.loads(self.box.run("hanet", "status", "--json").stdout)

    def journal(self) -> list[str]:
        return self.box.run("journalctl", "--unit=hanet", "--output=cat", "--no-pager").stdout.splitlines()

    def wait_status_text(self, pattern: str, timeout_s: float = 15) -> str:
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.prop("StatusText")
            if re.search(pattern, text):
                return text
            time.sleep(0.1)
        paths = self.box.run("hanet", "status", "--json", check=False).stdout
        raise AssertionError(f"{self.name}: StatusText {text!r} never matched {pattern!r}\n"
                             + "\n".join(self.journal()[-30:]) + f"\nhanet status: {paths}")

    def wait_main_pid_change(self, old: str, timeout_s: float = 20) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.show("MainPID", "ActiveState", "SubState")
            if state["MainPID"] not in ("0", old) and (state["ActiveState"], state["SubState"]) == ("active", "running"):
                return state["MainPID"]
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: no new running daemon after {timeout_s} s: {self.show('MainPID', 'ActiveState', 'SubState', 'NRestarts')}\n"
                             + "\n".join(self.journal()[-30:]))

    def addresses(self, ifname: str) -> list[str]:
        out = json.loads(self.box.run("ip", "-j", "-4", "addr", "show", "dev", ifname).stdout)
        return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link.get("addr_info", [])]

    def records(self) -> list[dict]:
        """The daemon's event log, read from the host through the container's root."""
        from hanet.eventlog import reader

        path = f"/proc/{self.box.pid}/root{EVENTLOG}"
        return [entry.record for entry in reader.read_file(path, lambda damage: None)]

    def blackhole(self, ifname: str) -> None:
        self.box.run("nft", "-f", "-", input=f"""
table netdev hanet_test_{ifname} {{
  chain ingress {{ type filter hook ingress device "{ifname}" priority -500; policy drop; }}
}}
""")

    def heal(self, ifname: str) -> None:
        self.box.run("nft", "delete", "table", "netdev", f"hanet_test_{ifname}")


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """Two booted containers, cabled, with hanet installed, configured and started."""
    workdir = tmp_path_factory.mktemp("systemd")
    root, deb = nspawn.cached_root(), nspawn.hanet_deb()
    nspawn.sweep_stale()
    token = nspawn.unique_token()
    boxes = {name: nspawn.Container(nspawn.container_name(name, token), root, deb.parent, workdir)
             for name in PLANS}
    facts: dict[str, dict] = {}
    try:
        for box in boxes.values():
            box.boot()
        nspawn.cable(boxes["alpha"], "nic1", boxes["beta"], "nic2")  # primary
        nspawn.cable(boxes["alpha"], "nic3", boxes["beta"], "nic4")  # alternate
        key = None
        for name, box in boxes.items():
            node, plan = Node(name, box), PLANS[name]
            install = box.run("apt-get", "install", "--yes", "--no-install-recommends",
                              f"{nspawn.DEB_MOUNT}/{deb.name}", timeout=180)
            facts[name] = {"install": install.stdout,
                           "before_config": node.show("UnitFileState", "ActiveState", "ConditionResult"),
                           "user": box.run("getent", "passwd", "hanet").stdout.strip(),
                           "conffiles": box.run("dpkg-query", "-W", "-f=${Conffiles}", "hanet").stdout}
            # As an administrator would: the config, the shared key, the identity on the primary NIC.
            box.write(CONFIG, node_config(plan, "/unused", 20.0, 5, {
                "heartbeat": {"key_file": KEY},
                "failback": {"hold_down_ms": HOLD_DOWN_MS},
                # Paths are lost once at start (the peer's daemon is not up yet): no damping, so
                # the failback below does not wait for that penalty to decay.
                "damping": {"enabled": False},
                "eventlog": {"path": EVENTLOG},
                "control": {"socket": "/run/hanet/control.sock"},
            }), mode=0o640, group="hanet")
            if key is None:
                box.run("hanet", "keygen", KEY)
                key = box.read(KEY)
            else:
                box.write(KEY, key, mode=0o600)
            box.sh(f"chown hanet {KEY} && chmod 0600 {KEY}")
            nic = plan.nics[0]
            box.run("ip", "addr", "add", plan.address, "broadcast", "+", "dev", nic)
            box.run("ip", "addr", "add", plan.vip, "dev", nic)
            box.run("ip", "-6", "addr", "add", plan.ipv6, "dev", nic, "nodad")
            box.run("ip", "route", "add", plan.route_to, "via", plan.route_via, "dev", nic)
            facts[name]["check"] = box.run("hanet", "check", "-c", CONFIG, check=False)
        for name, box in boxes.items():
            node = Node(name, box)
            started = time.monotonic()
            facts[name]["start"] = box.run("systemctl", "enable", "--now", "hanet", check=False, timeout=60)
            facts[name]["start_s"] = time.monotonic() - started
            # Read at once: what `systemctl start` returning means.
            facts[name]["after_start"] = node.show("ActiveState", "SubState", "StatusText", "MainPID", "Type")
            facts[name]["journal_at_start"] = node.journal()
        yield {name: Node(name, box) for name, box in boxes.items()}, facts
    finally:
        for box in boxes.values():
            box.shutdown()


def test_package_installs_user_unit_and_conffile_and_waits_for_configuration(nodes):
    _, facts = nodes
    for name, fact in facts.items():
        assert fact["user"].startswith("hanet:") and fact["user"].endswith(":/nonexistent:/usr/sbin/nologin")
        assert "/etc/hanet/hanet.toml" in fact["conffiles"]
        # Enabled by the package, but not started: the key did not exist yet.
        before = fact["before_config"]
        assert before["UnitFileState"] == "enabled", before
        assert before["ActiveState"] == "inactive" and before["ConditionResult"] == "no", before
        assert fact["check"].returncode == 0, fact["check"].stderr


def test_start_returns_once_ready_with_state_in_status_text(nodes):
    _, facts = nodes
    for name, fact in facts.items():
        assert fact["start"].returncode == 0, fact["start"].stderr + "\n".join(fact["journal_at_start"][-20:])
        after = fact["after_start"]
        # Type=notify: `systemctl start` waits for READY=1, so the unit is running the moment it returns.
        assert after["Type"] == "notify"
        assert (after["ActiveState"], after["SubState"]) == ("active", "running"), after
        assert re.fullmatch(r"(Monitoring|Starting|Alternate-Active) active=\w+", after["StatusText"]), after
        assert any(" ready state=" in line for line in fact["journal_at_start"]), fact["journal_at_start"][-20:]
        assert fact["start_s"] < 30


def test_status_text_and_hanet_status_agree(nodes):
    pair, _ = nodes
    for node in pair.values():
        text = node.wait_status_text(r"^Monitoring active=primary$")
        st = node.status()
        assert f"{st['state']} active={st['paths'][st['active']]['name']}" == text
        # The peer started after this node, so a path may still be recovering: both come up.
        deadline = time.monotonic() + 10
        while [p["health"] for p in st["paths"]] != ["up", "up"] and time.monotonic() < deadline:
            time.sleep(0.2)
            st = node.status()
        assert [p["health"] for p in st["paths"]] == ["up", "up"], (
            json.dumps(st["paths"], indent=1) + "\n" + "\n".join(node.journal()[-30:]))
        assert all(p["answered"] > 0 for p in st["paths"])


def test_failover_between_containers_keeps_traffic_flowing(nodes):
    pair, _ = nodes
    alpha, beta = pair["alpha"], pair["beta"]
    alpha.wait_status_text(r"^Monitoring active=primary$")
    beta.wait_status_text(r"^Monitoring active=primary$")
    assert alpha.box.run("ping", "-n", "-q", "-c", "3", "-i", "0.05", "-W", "1", PEER["alpha"], check=False).returncode == 0
    pinger = subprocess.Popen(
        ["nsenter", f"--target={alpha.box.pid}", "--mount", "--net", "--pid", "--root", "--wd",
         "ping", "-n", "-q", "-c", "100", "-i", "0.03", "-W", "1", PEER["alpha"]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        # The primary cable silently drops everything; its carrier stays up: only heartbeats see it.
        alpha.blackhole("nic1")
        beta.blackhole("nic2")
        alpha.wait_status_text(r"^Alternate-Active active=alternate$", 10)
        beta.wait_status_text(r"^Alternate-Active active=alternate$", 10)
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
            pinger.wait()
    sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
    assert got >= sent * 0.8, out  # a few lost while the fault was being detected, no more
    assert sorted(alpha.addresses("nic3")) == sorted([ALPHA.address, ALPHA.vip]) and alpha.addresses("nic1") == []
    assert sorted(beta.addresses("nic4")) == sorted([BETA.address, BETA.vip]) and beta.addresses("nic2") == []
    assert alpha.box.run("ping", "-n", "-q", "-c", "5", "-i", "0.05", "-W", "1", PEER["alpha"], check=False).returncode == 0

    alpha.heal("nic1")
    beta.heal("nic2")
    alpha.wait_status_text(r"^Monitoring active=primary$", HOLD_DOWN_MS / 1000 + 10)
    beta.wait_status_text(r"^Monitoring active=primary$", HOLD_DOWN_MS / 1000 + 10)
    assert sorted(alpha.addresses("nic1")) == sorted([ALPHA.address, ALPHA.vip])


def _journal_events(lines: list[str]) -> collections.Counter:
    return collections.Counter(m.group(1) for line in lines if (m := re.match(r"hanet: \w+ event (\S+)", line)))


def _logged_events(records: list[dict]) -> collections.Counter:
    """Events the daemon logs a line for: every one but an action.done that changed nothing."""
    causes = {r["tr"]["cause"] for r in records if r["k"] == "transition"}
    return collections.Counter(r["e"]["type"] for r in records if r["k"] == "event"
                               and (r["e"]["type"] != "action.done" or r["n"] in causes))


def test_journal_has_one_line_per_event_and_per_transition(nodes):
    pair, _ = nodes
    for node in pair.values():
        deadline = time.monotonic() + 10
        while True:  # equal once the journal has caught up with the log (it is written first)
            journal, records = node.journal(), node.records()
            transitions = [r["tr"] for r in records if r["k"] == "transition" and r["tr"]["src"] != r["tr"]["dst"]]
            lines = [line for line in journal if " transition " in line]
            caught_up = _journal_events(journal) == _logged_events(records) and len(lines) == len(transitions)
            if caught_up or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert _journal_events(journal) == _logged_events(records)
        assert sum(_journal_events(journal).values()) > 4  # the failover and failback are in it
        assert len(lines) == len(transitions), (lines, transitions)
        for line, tr in zip(lines, transitions):
            assert f"transition {tr['src']} -> {tr['dst']} " in line, (line, tr)


def test_reload_applies_machine_parameters(nodes):
    pair, _ = nodes
    alpha = pair["alpha"]
    text = alpha.box.read(CONFIG)
    assert f"hold_down_ms = {HOLD_DOWN_MS}" in text
    alpha.box.write(CONFIG, text.replace(f"hold_down_ms = {HOLD_DOWN_MS}", "hold_down_ms = 700.0"),
                    mode=0o640, group="hanet")
    pid = alpha.prop("MainPID")
    alpha.box.run("systemctl", "reload", "hanet")
    deadline = time.monotonic() + 10
    while not any("reloaded machine parameters" in line for line in alpha.journal()):
        assert time.monotonic() < deadline, alpha.journal()[-20:]
        time.sleep(0.1)
    configs = [r["cfg"] for r in alpha.records() if r["k"] == "config"]
    assert configs[-1]["failback_hold_ns"] == 700_000_000, configs[-1]
    assert alpha.prop("MainPID") == pid  # applied in place, not by a restart


def test_hung_daemon_is_killed_by_the_watchdog_and_resumes_from_its_log(nodes):
    pair, _ = nodes
    alpha = pair["alpha"]
    alpha.wait_status_text(r"^Monitoring active=primary$")
    before = alpha.show("MainPID", "NRestarts", "WatchdogUSec")
    assert before["WatchdogUSec"] == "3s"
    journal_before = len(alpha.journal())
    alpha.box.run("kill", "-STOP", before["MainPID"])
    new_pid = alpha.wait_main_pid_change(before["MainPID"], timeout_s=20)
    assert int(alpha.prop("NRestarts")) == int(before["NRestarts"]) + 1
    alpha.wait_status_text(r"^Monitoring active=primary$")
    since = alpha.journal()[journal_before:]
    assert any("Watchdog timeout" in line for line in since), since
    # It folded its log and found the identity where it was: nothing moved.
    reconciled = [line for line in since if " reconciled " in line]
    assert reconciled and re.search(r"holder=(0|primary)\b", reconciled[-1]), reconciled
    assert int(re.search(r"restored_records=(\d+)", reconciled[-1]).group(1)) > 0, reconciled
    assert not [line for line in since if " transition " in line and "Failing-Over" in line], since
    assert sorted(alpha.addresses("nic1")) == sorted([ALPHA.address, ALPHA.vip]) and alpha.addresses("nic3") == []
    assert new_pid != before["MainPID"]


def test_kill_9_is_restarted_by_restart_on_failure(nodes):
    pair, _ = nodes
    beta = pair["beta"]
    beta.wait_status_text(r"^Monitoring active=primary$")
    before = beta.show("MainPID", "NRestarts")
    beta.box.run("kill", "-KILL", before["MainPID"])
    beta.wait_main_pid_change(before["MainPID"])
    assert int(beta.prop("NRestarts")) == int(before["NRestarts"]) + 1
    beta.wait_status_text(r"^Monitoring active=primary$")
    assert sorted(beta.addresses("nic2")) == sorted([BETA.address, BETA.vip])


def test_hardening_is_in_force(nodes):
    pair, _ = nodes
    for node in pair.values():
        pid = node.prop("MainPID")
        status = node.box.read(f"/proc/{pid}/status")
        caps = {k: int(v, 16) for k, v in re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.M)}
        cap_net_admin, cap_net_raw = 12, 13
        assert caps["CapEff"] == (1 << cap_net_admin) | (1 << cap_net_raw), hex(caps["CapEff"])
        assert caps["CapBnd"] == caps["CapEff"], hex(caps["CapBnd"])
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M)
        assert re.search(r"^Seccomp:\s+2$", status, re.M)  # a system call filter is loaded
        uid = node.box.run("id", "-u", "hanet").stdout.strip()
        assert re.search(rf"^Uid:\s+{uid}\s", status, re.M)
        # In the daemon's own mount namespace, even root can write only its state and runtime dirs.
        def write(path: str) -> subprocess.CompletedProcess:
            return node.box.run("nsenter", f"--target={pid}", "--mount", "/bin/sh", "-c",
                                f"echo x > {path} && rm {path}", check=False)
        for allowed in ("/var/lib/hanet/probe", "/run/hanet/probe"):
            result = write(allowed)
            assert result.returncode == 0, (allowed, result.stderr)
        for denied in ("/etc/hanet/probe", "/usr/probe", "/var/probe", "/root/probe"):
            result = write(denied)
            assert result.returncode != 0 and ("Read-only file system" in result.stderr
                                               or "No such file" in result.stderr), (denied, result.stderr)
        # Its /tmp is its own.
        assert node.box.run("nsenter", f"--target={pid}", "--mount", "stat", "-c", "%d:%i", "/tmp").stdout != \
            node.box.run("stat", "-c", "%d:%i", "/tmp").stdout
