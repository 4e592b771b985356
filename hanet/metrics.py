"""Prometheus metrics, on a registry of hanet's own (never prometheus_client's global one).

Series (``path`` is the configured path name):

    hanet_node_info{node}                           1
    hanet_state{state}                              1 for the current state, 0 for the others seen
    hanet_transitions_total{src,dst}                machine transitions
    hanet_detection_latency_seconds                 histogram: fault to decision, 0.5 ms .. 10 s
    hanet_path_info{path,index,interface}           1
    hanet_path_health{path,health}                  1 for the path's current health, 0 for the others
    hanet_path_carrier{path}, hanet_path_offline{path}, hanet_path_damped{path}     1/0
    hanet_path_penalty{path}                        flap-damping penalty
    hanet_heartbeat_rtt_seconds{path,quantile}      quantile 0.5 and 0.99 over the quality window
    hanet_heartbeat_sent_total{path}, hanet_heartbeat_received_total{path}
    hanet_frames_dropped_total{path,reason}
    hanet_frames_filtered_total{path}               refused by the kernel filter before hanet saw them
    hanet_frames_overflow_total{path}               passed the filter, found the receive ring full
    hanet_heartbeat_confirms_total{path}            confirmation requests sent (a silence questioned)
    hanet_heartbeat_probes_total{path}              probes sent because another path fell silent

Path series mirror the per-path dicts of the control socket's status (see hanet.control), pushed
with ``update_paths``; the HTTP thread reads the latest snapshot, so the loop never waits on it.
"""
from __future__ import annotations

import socket
import threading
from typing import Any, Iterable, Sequence
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

DETECTION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
HEALTH_STATES = ("up", "suspect", "down")  # always exported; other values appear once seen


class MetricsError(Exception):
    pass


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # no access log on stderr
        pass


def _serve(host: str, port: int, registry: CollectorRegistry) -> tuple[Any, threading.Thread]:
    """prometheus_client's start_http_server, from parts every version since 0.16 (Debian 12's)
    has: its start_http_server hands back the server, needed to stop it, only from 0.17 on."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingWSGIServer,), {"address_family": family})
    httpd = make_server(host, port, make_wsgi_app(registry), server_class, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread


class Metrics:
    def __init__(self, node_id: str, path_names: Sequence[str], states: Iterable[str] = ()):
        self.registry = CollectorRegistry()
        Info("hanet_node", "This node's identity.", registry=self.registry).info({"node": node_id})
        self._state = Gauge("hanet_state", "1 for the state the machine is in, 0 for the others.",
                            ["state"], registry=self.registry)
        self._states: list[str] = []
        for state in states:
            self._known_state(state)
        self._transitions = Counter("hanet_transitions", "State machine transitions.",
                                    ["src", "dst"], registry=self.registry)
        self._detection = Histogram("hanet_detection_latency_seconds",
                                    "Time from a path fault to the decision that acted on it.",
                                    buckets=DETECTION_BUCKETS, registry=self.registry)
        self._eventlog_degraded = Gauge("hanet_eventlog_degraded",
                                        "1 while the event log cannot be written (the daemon acts all the same).",
                                        registry=self.registry)
        self._paths = _PathCollector(tuple(path_names))
        self.registry.register(self._paths)
        self._http = None
        self._http_thread: threading.Thread | None = None

    def set_state(self, state: str) -> None:
        self._known_state(state)
        for s in self._states:
            self._state.labels(state=s).set(1 if s == state else 0)

    def observe_transition(self, src: str, dst: str, detection_s: float | None = None) -> None:
        self._known_state(src)
        self._transitions.labels(src=src, dst=dst).inc()
        self.set_state(dst)
        if detection_s is not None:
            self._detection.observe(detection_s)

    def set_eventlog_degraded(self, degraded: bool) -> None:
        self._eventlog_degraded.set(1 if degraded else 0)

    def update_paths(self, stats: list[dict]) -> None:
        """Replace the per-path snapshot with ``stats`` (the status dict's "paths" list)."""
        self._paths.snapshot = tuple(stats)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def start_http(self, listen: str) -> tuple[str, int]:
        """Serve /metrics on "host:port" ("[::1]:9100" for IPv6; port 0 picks a free one) from a
        daemon thread. Returns the address actually bound."""
        if self._http is not None:
            raise MetricsError("metrics endpoint already started")
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise MetricsError(f"metrics listen address must be HOST:PORT, got {listen!r}")
        try:
            self._http, self._http_thread = _serve(host, int(port), self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot listen for metrics on {listen}: {exc.strerror or exc}") from None
        return host, self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http_thread.join(timeout=5)
            self._http = self._http_thread = None

    def _known_state(self, state: str) -> None:
        if state not in self._states:
            self._states.append(state)
            self._state.labels(state=state).set(0)


class _PathCollector:
    """Builds the per-path families from the latest snapshot at each scrape."""

    def __init__(self, path_names: tuple[str, ...]):
        self.path_names = path_names
        self.snapshot: tuple[dict, ...] = ()
        self._health_seen = list(HEALTH_STATES)

    def describe(self):
        return []  # families are built per scrape; nothing to check at registration

    def collect(self):
        snapshot = self.snapshot
        info = GaugeMetricFamily("hanet_path_info", "Path index and interface.",
                                 labels=["path", "index", "interface"])
        health = GaugeMetricFamily("hanet_path_health", "1 for the path's heartbeat health.",
                                   labels=["path", "health"])
        flags = {name: GaugeMetricFamily(f"hanet_path_{name}", doc, labels=["path"]) for name, doc in (
            ("carrier", "1 when the NIC has carrier."),
            ("offline", "1 when an operator has set the path offline."),
            ("damped", "1 when flap damping suppresses the path."))}
        penalty = GaugeMetricFamily("hanet_path_penalty", "Flap-damping penalty.", labels=["path"])
        rtt = GaugeMetricFamily("hanet_heartbeat_rtt_seconds", "Heartbeat round-trip time.",
                                labels=["path", "quantile"])
        sent = CounterMetricFamily("hanet_heartbeat_sent", "Heartbeat requests sent.", labels=["path"])
        received = CounterMetricFamily("hanet_heartbeat_received", "Heartbeat replies received.",
                                       labels=["path"])
        dropped = CounterMetricFamily("hanet_frames_dropped", "Received frames dropped, by reason.",
                                      labels=["path", "reason"])
        counters = {key: CounterMetricFamily(name, doc, labels=["path"]) for key, name, doc in (
            ("filtered", "hanet_frames_filtered", "Frames refused by the kernel filter."),
            ("rcvbuf_overflow", "hanet_frames_overflow", "Frames that found the receive ring full."),
            ("confirms", "hanet_heartbeat_confirms", "Confirmation requests sent."),
            ("probes", "hanet_heartbeat_probes", "Probes sent because another path fell silent."))}
        for p in snapshot:
            index = p.get("index")
            if not isinstance(index, int) or not 0 <= index < len(self.path_names):
                continue
            name = self.path_names[index]
            info.add_metric([name, str(index), str(p.get("interface", ""))], 1)
            current = str(p.get("health", "unknown"))
            if current not in self._health_seen:
                self._health_seen.append(current)
            for h in self._health_seen:
                health.add_metric([name, h], 1 if h == current else 0)
            for flag, family in flags.items():
                if flag in p:
                    family.add_metric([name], 1 if p[flag] else 0)
            penalty.add_metric([name], float(p.get("penalty", 0.0)))
            for quantile, key in (("0.5", "rtt_p50_us"), ("0.99", "rtt_p99_us")):
                if p.get(key) is not None:
                    rtt.add_metric([name, quantile], p[key] / 1e6)
            sent.add_metric([name], p.get("sent", 0))
            received.add_metric([name], p.get("received", 0))
            for reason, count in sorted((p.get("drops") or {}).items()):
                dropped.add_metric([name, reason], count)
            for key, family in counters.items():
                if key in p:
                    family.add_metric([name], p[key])
        yield info
        yield health
        yield from flags.values()
        yield from (penalty, rtt, sent, received, dropped)
        yield from counters.values()
