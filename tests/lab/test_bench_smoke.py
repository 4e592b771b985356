"""The detection benchmark end to end, small: its one command, its fault injector, its gap meter."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.faults import Injector
from bench.udpgap import UdpStream
from hanet import labnet

REPO = Path(__file__).resolve().parents[2]
BFDD = "/usr/lib/frr/bfdd"

pytestmark = [pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]


@pytest.mark.skipif(not os.access(BFDD, os.X_OK), reason="frr's bfdd is not installed")
def test_bfdd_blackhole_three_trials_give_sane_json(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "detection.py"), "--trials", "3", "--settings", "10x3",
         "--faults", "blackhole", "--peers", "bfdd", "--cpu-seconds", "1", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["status"] == "ok", run
    series = run["faults"]["blackhole"]
    assert series["failed"] == 0, series["trials"]
    detection = series["detection_ms"]
    assert detection["n"] == 3
    # 3 x 10 ms without packets, bounded generously: never before 10 ms, never near a second.
    assert 10 < detection["min"] <= detection["p50"] <= detection["max"] < 500
    assert series["recovery_ms"] is None and "moves no traffic" in series["recovery_note"]
    assert 0 < series["inject_us"]["p50"] < 100_000
    assert set(run["cpu_at_rest_percent"]) == {"a", "b"}
    assert all(0 < pct < 100 for pct in run["cpu_at_rest_percent"].values())
    # Nothing left behind: no namespace of that process.
    assert not [ns for ns in labnet.list_namespaces() if f"-{proc.pid}-" in ns]


def test_gap_meter_spans_a_timed_blackhole(lab):
    lab.a.ip("addr", "add", "198.51.100.1/30", "dev", "nic1")
    lab.b.ip("addr", "add", "198.51.100.2/30", "dev", "nic2")
    injector = Injector(lab)
    stream = None
    try:
        stream = UdpStream(lab.a.name, lab.b.name, "198.51.100.1", "198.51.100.2", duration_s=60)
        assert stream.wait_flowing(5.0)
        inj = injector.apply("blackhole")
        time.sleep(0.05)  # the fault's length, the quantity under measurement
        injector.heal("blackhole")
        gap = stream.gap_around(inj.t_fault_ns, timeout=5.0)
        assert gap is not None, "traffic did not flow again after the blackhole was healed"
        assert 50 <= gap["gap_ns"] / 1e6 < 250, gap
        assert gap["start_ns"] <= inj.t_fault_ns < gap["end_ns"]
        assert gap["lost"] >= 25, gap  # ~50 ticks at 1 kHz, allowing for the sender's skipped ticks
    finally:
        if stream:
            stream.close()
        injector.close()


def test_injector_carrier_fault_is_seen_by_the_peer_and_healed(lab):
    injector = Injector(lab)
    try:
        inj = injector.apply("busy-carrier")
        assert inj.t_prior_ns is not None and inj.t_fault_ns - inj.t_prior_ns >= 20_000_000
        assert "NO-CARRIER" in lab.a.link("nic1")["flags"]
        injector.heal("busy-carrier")
        deadline = time.monotonic() + 5.0
        while "LOWER_UP" not in lab.a.link("nic1")["flags"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "LOWER_UP" in lab.a.link("nic1")["flags"]
    finally:
        injector.close()
