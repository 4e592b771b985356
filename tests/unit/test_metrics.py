"""Prometheus metrics: the exposition text, and a real HTTP scrape on 127.0.0.1."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from hanet.metrics import DETECTION_BUCKETS, Metrics, MetricsError

PATHS = [
    {"index": 0, "name": "primary", "interface": "nic1", "health": "up", "carrier": True,
     "offline": False, "damped": False, "penalty": 0.0, "rtt_p50_us": 23.1, "rtt_p99_us": 60.2,
     "sent": 100, "received": 99, "drops": {"bad_mac": 1, "replay": 4},
     "filtered": 7, "rcvbuf_overflow": 2, "confirms": 5, "probes": 3},
    {"index": 1, "name": "alternate", "interface": "nic3", "health": "down", "carrier": False,
     "offline": True, "damped": True, "penalty": 2500.0, "rtt_p50_us": None, "rtt_p99_us": None,
     "sent": 50, "received": 0, "drops": {}},
]


def samples(text: bytes | str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} parsed with prometheus_client's own parser."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def metrics():
    m = Metrics("alpha", ["primary", "alternate"], states=("Starting", "Monitoring", "FailedOver"))
    yield m
    m.close()


def test_node_info(metrics):
    assert samples(metrics.render())[("hanet_node_info", (("node", "alpha"),))] == 1


def test_state_gauge_and_transition_counter(metrics):
    metrics.set_state("Starting")
    metrics.observe_transition("Starting", "Monitoring")
    metrics.observe_transition("Monitoring", "FailedOver", detection_s=0.0123)
    metrics.observe_transition("FailedOver", "Monitoring")
    metrics.observe_transition("Monitoring", "FailedOver", detection_s=0.0301)
    got = samples(metrics.render())
    assert got[("hanet_state", (("state", "FailedOver"),))] == 1
    assert got[("hanet_state", (("state", "Monitoring"),))] == 0
    assert got[("hanet_state", (("state", "Starting"),))] == 0
    assert got[("hanet_transitions_total", (("dst", "FailedOver"), ("src", "Monitoring")))] == 2
    assert got[("hanet_transitions_total", (("dst", "Monitoring"), ("src", "Starting")))] == 1


def test_states_first_seen_in_transitions_are_exported(metrics):
    metrics.observe_transition("Recovering", "Degraded")
    got = samples(metrics.render())
    assert got[("hanet_state", (("state", "Degraded"),))] == 1
    assert got[("hanet_state", (("state", "Recovering"),))] == 0


def test_detection_latency_histogram(metrics):
    metrics.observe_transition("Monitoring", "FailedOver", detection_s=0.0123)
    metrics.observe_transition("FailedOver", "Monitoring")  # no detection: not observed
    got = samples(metrics.render())
    assert got[("hanet_detection_latency_seconds_count", ())] == 1
    assert got[("hanet_detection_latency_seconds_sum", ())] == pytest.approx(0.0123)
    bucket = {dict(labels)["le"]: v for (name, labels), v in got.items()
              if name == "hanet_detection_latency_seconds_bucket"}
    assert bucket["0.0005"] == 0 and bucket["0.01"] == 0 and bucket["0.02"] == 1 and bucket["+Inf"] == 1
    assert DETECTION_BUCKETS[0] == 0.0005 and DETECTION_BUCKETS[-1] == 10.0
    assert len(bucket) == len(DETECTION_BUCKETS) + 1


def test_path_series(metrics):
    metrics.update_paths(PATHS)
    got = samples(metrics.render())
    assert got[("hanet_path_info", (("index", "0"), ("interface", "nic1"), ("path", "primary")))] == 1
    assert got[("hanet_path_health", (("health", "up"), ("path", "primary")))] == 1
    assert got[("hanet_path_health", (("health", "down"), ("path", "primary")))] == 0
    assert got[("hanet_path_health", (("health", "down"), ("path", "alternate")))] == 1
    assert got[("hanet_path_carrier", (("path", "primary"),))] == 1
    assert got[("hanet_path_carrier", (("path", "alternate"),))] == 0
    assert got[("hanet_path_offline", (("path", "alternate"),))] == 1
    assert got[("hanet_path_damped", (("path", "alternate"),))] == 1
    assert got[("hanet_path_penalty", (("path", "alternate"),))] == 2500
    assert got[("hanet_heartbeat_rtt_seconds", (("path", "primary"), ("quantile", "0.5")))] == pytest.approx(23.1e-6)
    assert got[("hanet_heartbeat_rtt_seconds", (("path", "primary"), ("quantile", "0.99")))] == pytest.approx(60.2e-6)
    assert not any(name == "hanet_heartbeat_rtt_seconds" and ("path", "alternate") in labels
                   for name, labels in got)  # no RTT measured: no series rather than a fake 0
    assert got[("hanet_heartbeat_sent_total", (("path", "primary"),))] == 100
    assert got[("hanet_heartbeat_received_total", (("path", "primary"),))] == 99
    assert got[("hanet_frames_dropped_total", (("path", "primary"), ("reason", "bad_mac")))] == 1
    assert got[("hanet_frames_dropped_total", (("path", "primary"), ("reason", "replay")))] == 4
    assert got[("hanet_frames_filtered_total", (("path", "primary"),))] == 7
    assert got[("hanet_frames_overflow_total", (("path", "primary"),))] == 2
    assert got[("hanet_heartbeat_confirms_total", (("path", "primary"),))] == 5
    assert got[("hanet_heartbeat_probes_total", (("path", "primary"),))] == 3
    assert ("hanet_heartbeat_confirms_total", (("path", "alternate"),)) not in got  # not reported


def test_path_snapshot_is_replaced_and_unknown_health_exported(metrics):
    metrics.update_paths(PATHS)
    metrics.update_paths([dict(PATHS[0], health="starting", sent=150), {"index": 7, "name": "bogus"}])
    got = samples(metrics.render())
    assert got[("hanet_heartbeat_sent_total", (("path", "primary"),))] == 150
    assert got[("hanet_path_health", (("health", "starting"), ("path", "primary")))] == 1
    assert got[("hanet_path_health", (("health", "up"), ("path", "primary")))] == 0
    assert not any(dict(labels).get("path") in ("alternate", "bogus") for _, labels in got)


def test_uses_its_own_registry():
    first, second = Metrics("alpha", ["a", "b"]), Metrics("beta", ["a", "b"])  # no duplicate-name clash
    first.set_state("Monitoring")
    assert b"hanet_state" in first.render()
    assert not any(name.startswith("hanet_") for family in REGISTRY.collect() for name in [family.name])
    assert samples(second.render())[("hanet_node_info", (("node", "beta"),))] == 1


def test_http_scrape(metrics):
    metrics.set_state("Monitoring")
    metrics.observe_transition("Monitoring", "FailedOver", detection_s=0.004)
    metrics.update_paths(PATHS)
    host, port = metrics.start_http("127.0.0.1:0")
    assert host == "127.0.0.1" and port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        got = samples(response.read())
    assert got[("hanet_state", (("state", "FailedOver"),))] == 1
    assert got[("hanet_transitions_total", (("dst", "FailedOver"), ("src", "Monitoring")))] == 1
    assert got[("hanet_detection_latency_seconds_count", ())] == 1
    assert got[("hanet_frames_dropped_total", (("path", "primary"), ("reason", "bad_mac")))] == 1
    assert got[("hanet_heartbeat_rtt_seconds", (("path", "primary"), ("quantile", "0.99")))] == pytest.approx(60.2e-6)
    metrics.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_port_in_use_is_a_clear_error(metrics):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}"):
            metrics.start_http(f"127.0.0.1:{port}")


@pytest.mark.parametrize("listen", ["9100", "127.0.0.1:", "127.0.0.1:http"])
def test_bad_listen_address(metrics, listen):
    with pytest.raises(MetricsError, match="HOST:PORT"):
        metrics.start_http(listen)


def test_start_twice_is_refused(metrics):
    metrics.start_http("127.0.0.1:0")
    with pytest.raises(MetricsError, match="already"):
        metrics.start_http("127.0.0.1:0")
