"""Detection and recovery latency of hanet and its peers, fault by fault, in real namespaces.

    python bench/detection.py [--trials N] [--settings 1x3,10x3,100x3] \
        [--faults carrier,blackhole,oneway,busy-carrier] [--peers hanet,hanet_confirm,bfdd] \
        --json out.json [--plot out.png]

For each setting (heartbeat interval x multiplier), each peer (one adapter in bench/peers/) and
each fault kind (bench/faults.py), N trials of:
  wait until the peer sees the primary path up (bounded) -> random pause -> apply the fault ->
  detection = node a's failure declaration - fault time -> recovery = the 1 kHz UDP stream's gap
  around the fault (peers that move traffic only) -> heal.
Then min/p50/p95/p99/max per series, the peer's CPU at rest, the injection cost, and the ratio
hanet/bfdd where both ran. Settings below a peer's minimum interval are reported "not supported".
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import faults as faultlib  # noqa: E402
from bench import peers as peerlib  # noqa: E402
from bench.udpgap import UdpStream  # noqa: E402
from hanet import labnet  # noqa: E402

DEFAULT_SETTINGS = "1x3,10x3,100x3"
PERCENTILES = (50, 95, 99)
UP_TIMEOUT_S = 20.0  # bfdd restarts a session with 1 s slow-start packets: ~2 s to come up
MAX_CONSECUTIVE_FAILURES = 3
B_NODE_GRACE_S = 0.5  # how long to wait for node b's declaration once node a has declared


def parse_settings(text: str) -> list[tuple[float, int]]:
    settings = []
    for item in text.split(","):
        try:
            interval, mult = item.strip().lower().split("x")
            settings.append((float(interval), int(mult)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"setting {item!r} is not INTERVAL_MSxMULTIPLIER (e.g. 10x3)") from None
    return settings


def parse_list(known: tuple[str, ...] | None):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [s for s in items if known is not None and s not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; known: {', '.join(known)}")
        return items
    return parse


def stats(values: list[float]) -> dict | None:
    """min, nearest-rank percentiles (always a measured value), max, mean; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    out = {"n": n, "min": ordered[0]}
    for p in PERCENTILES:
        out[f"p{p}"] = ordered[max(0, math.ceil(p / 100 * n) - 1)]
    out["max"] = ordered[-1]
    out["mean"] = sum(ordered) / n
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 4)


# --------------------------------------------------------------------------- one trial series
def run_trial(peer: peerlib.Peer, injector: faultlib.Injector, kind: str, interval_ms: float,
              multiplier: int, stream: UdpStream | None) -> dict:
    detect_timeout = max(1.0, 20 * interval_ms * multiplier / 1000)
    time.sleep(random.uniform(0, interval_ms * multiplier / 1000))  # no phase lock with the tx timers
    try:
        try:
            inj = injector.apply(kind)
        except faultlib.FaultError as exc:
            return {"error": f"fault not applied: {exc}"}
        # From the earliest moment the fault may have begun: a carrier poll can beat the call's return.
        t_a = peer.detection_time_after(inj.t_start_ns, detect_timeout, node="a")
        t_b = peer.detection_time_after(inj.t_start_ns, B_NODE_GRACE_S if t_a else 0.0, node="b")
        gap = stream.gap_around(inj.t_fault_ns, detect_timeout + 2.0) if stream else None
    finally:
        injector.heal(kind)
    trial = {
        "t_fault_ns": inj.t_fault_ns,
        "inject_us": round(inj.cost_ns / 1e3, 1),
        "fault_after_start_us": round((inj.t_fault_ns - inj.t_start_ns) / 1e3, 1),
        "detection_ms": _ms(t_a - inj.t_fault_ns) if t_a else None,
        "detection_b_ms": _ms(t_b - inj.t_fault_ns) if t_b else None,
    }
    if inj.uncertainty_ns is not None:
        trial["fault_time_uncertainty_us"] = round(inj.uncertainty_ns / 1e3, 1)
    if inj.t_prior_ns is not None:
        trial["prior_change_ms"] = _ms(inj.t_fault_ns - inj.t_prior_ns)
    if stream:
        trial["recovery_ms"] = _ms(gap["gap_ns"]) if gap else None
        trial["lost"] = gap["lost"] if gap else None
    if t_a is None:
        trial["error"] = f"no failure declared within {detect_timeout:g} s"
    return trial


def run_series(series: dict, peer: peerlib.Peer, injector: faultlib.Injector, kind: str, interval_ms: float,
               multiplier: int, trials: int, stream: UdpStream | None) -> None:
    """Fills ``series`` in place, so an interrupted run still reports the trials it completed."""
    results = series["trials"] = []
    try:
        _trials(results, peer, injector, kind, interval_ms, multiplier, trials, stream)
    finally:
        ok = [t for t in results if "error" not in t]
        series.update({
            "detection_ms": stats([t["detection_ms"] for t in ok]),
            "detection_b_ms": stats([t["detection_b_ms"] for t in ok if t.get("detection_b_ms") is not None]),
            "recovery_ms": stats([t["recovery_ms"] for t in ok if t.get("recovery_ms") is not None]) if stream else None,
            "recovery_note": None if stream else f"{peer.name} only detects; it moves no traffic",
            "inject_us": stats([t["inject_us"] for t in results if "inject_us" in t]),
            "failed": len(results) - len(ok),
        })


def _trials(results: list, peer: peerlib.Peer, injector: faultlib.Injector, kind: str, interval_ms: float,
            multiplier: int, trials: int, stream: UdpStream | None) -> None:
    failures_in_row = 0
    for i in range(trials):
        if not peer.wait_up(UP_TIMEOUT_S):
            results.append({"error": f"primary path not up within {UP_TIMEOUT_S:g} s"})
            failures_in_row += 1
            if failures_in_row >= MAX_CONSECUTIVE_FAILURES:
                break
            continue
        trial = run_trial(peer, injector, kind, interval_ms, multiplier, stream)
        results.append(trial)
        failures_in_row = failures_in_row + 1 if "error" in trial else 0
        det = trial["detection_ms"]
        print(f"  {peer.name} {interval_ms:g}x{multiplier} {kind} #{i + 1}: detection "
              f"{'-' if det is None else f'{det:.2f} ms'}"
              + (f", recovery {trial['recovery_ms']} ms" if "recovery_ms" in trial else ""), flush=True)
        if failures_in_row >= MAX_CONSECUTIVE_FAILURES:
            break


def run_peer(run: dict, kinds: list[str], trials: int, cpu_seconds: float) -> None:
    """Fills ``run`` ({"peer", "interval_ms", "multiplier"}) in place with status and series."""
    name, interval_ms, multiplier = run["peer"], run["interval_ms"], run["multiplier"]
    run["status"] = "interrupted"  # until it ends otherwise
    # Other work on the host (other labs toggling links, builds) shows in the figures: record it.
    run["loadavg_at_start"] = os.getloadavg()
    try:
        peer = peerlib.load(name)
    except peerlib.PeerUnavailable as exc:
        run.update({"status": "unavailable", "reason": str(exc)})
        return
    if interval_ms < peer.min_interval_ms:
        run.update({"status": "not supported", "reason": f"{name}'s minimum interval is {peer.min_interval_ms:g} ms"})
        return
    lab = labnet.TwoNodeLab.create("bd")
    injector = stream = None
    try:
        injector = faultlib.Injector(lab)
        try:
            peer.start(lab, interval_ms, multiplier)
        except (peerlib.PeerUnavailable, peerlib.NotSupported) as exc:
            status = "not supported" if isinstance(exc, peerlib.NotSupported) else "unavailable"
            run.update({"status": status, "reason": str(exc)})
            return
        try:
            up = peer.wait_up(UP_TIMEOUT_S)
        except peerlib.PeerUnavailable as exc:
            run.update({"status": "error", "reason": str(exc)})
            return
        if not up:
            run.update({"status": "error", "reason": f"never came up within {UP_TIMEOUT_S:g} s"})
            return
        run["cpu_at_rest_percent"] = peer.cpu_at_rest(cpu_seconds)
        run["cpu_window_s"] = cpu_seconds
        if peer.moves_traffic and peer.service_addresses():
            src, dst = peer.service_addresses()
            stream = UdpStream(lab.a.name, lab.b.name, src, dst)
            if not stream.wait_flowing(5.0):
                run.update({"status": "error", "reason": f"no UDP traffic {src} -> {dst}"})
                return
        run["faults"] = {}
        try:
            for kind in kinds:
                run["faults"][kind] = {}
                run_series(run["faults"][kind], peer, injector, kind, interval_ms, multiplier, trials, stream)
        except (peerlib.PeerUnavailable, faultlib.FaultError) as exc:
            run.update({"status": "error", "reason": f"series aborted: {exc}"})
            return
        run["status"] = "ok"
    finally:
        if stream:
            run["stream"] = stream.close()
        peer.stop()
        if injector:
            injector.close()
        lab.close()


# --------------------------------------------------------------------------- the report
def compare(runs: list[dict], kinds: list[str], ours: str = "hanet", theirs: str = "bfdd") -> list[dict]:
    """hanet/bfdd ratios of detection p50 and p99 per setting and fault; a row wherever either ran,
    with a note saying why a side has no figure."""
    index = {(r["peer"], r["interval_ms"], r["multiplier"]): r for r in runs}
    settings = dict.fromkeys((r["interval_ms"], r["multiplier"]) for r in runs)
    rows = []
    for interval, mult in settings:
        sides = {peer: index.get((peer, interval, mult)) for peer in (ours, theirs)}
        if any(run is None for run in sides.values()):
            continue
        for kind in kinds:
            row = {"ours": ours, "interval_ms": interval, "multiplier": mult, "fault": kind}
            detection = {}
            for peer, run in sides.items():
                detection[peer] = ((run.get("faults") or {}).get(kind) or {}).get("detection_ms")
                if detection[peer] is None:
                    row[f"{peer}_note"] = f"{run.get('status')}: {run.get('reason', 'no detection')}"
            for q in ("p50", "p99"):
                a, b = detection[ours], detection[theirs]
                row[f"{ours}_{q}"] = a and a[q]
                row[f"{theirs}_{q}"] = b and b[q]
                row[f"ratio_{q}"] = round(a[q] / b[q], 4) if a and b and b[q] else None
            rows.append(row)
    return rows


def _wall_minus_mono_ns() -> int:
    # How far the wall clock moved against CLOCK_MONOTONIC over the run bounds the error of
    # detectors that stamp their logs with the wall clock (bfdd), which are converted per lookup.
    return time.time_ns() - time.monotonic_ns()


def environment() -> dict:
    def first_line(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return ""
    try:
        clocksource = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource").read_text().strip()
    except OSError:
        clocksource = ""
    return {"kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "bfdd": first_line(["/usr/lib/frr/bfdd", "--version"]), "clocksource": clocksource,
            "loadavg_at_start": os.getloadavg(), "started_wall": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def print_summary(result: dict) -> None:
    print("\npeer           setting  fault         n  failed  det p50   det p99   det max   recov p50  recov p99  inj p50 us  cpu%(a,b)")
    for run in result["runs"]:
        setting = f"{run['interval_ms']:g}x{run['multiplier']}"
        if run.get("status") != "ok":
            print(f"{run['peer']:<14} {setting:<8} {run.get('status')}: {run.get('reason', '')}")
        if not run.get("faults"):
            continue
        cpu = run.get("cpu_at_rest_percent", {})
        for kind, s in run["faults"].items():
            d, r, i = s["detection_ms"] or {}, s["recovery_ms"] or {}, s["inject_us"] or {}
            print(f"{run['peer']:<14} {setting:<8} {kind:<13} {d.get('n', 0):>2}  {s['failed']:>6}  "
                  f"{d.get('p50', '-'):>8}  {d.get('p99', '-'):>8}  {d.get('max', '-'):>8}  "
                  f"{r.get('p50', '-'):>9}  {r.get('p99', '-'):>9}  {i.get('p50', '-'):>10}  "
                  f"{cpu.get('a', '-')},{cpu.get('b', '-')}")
    for row in result["comparison"]:
        print(f"{row['ours']}/bfdd {row['interval_ms']:g}x{row['multiplier']} {row['fault']}: "
              f"p50 {row['ratio_p50'] or '-'}  p99 {row['ratio_p99'] or '-'}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same clean-up path as Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--settings", type=parse_settings, default=parse_settings(DEFAULT_SETTINGS),
                        help="INTERVAL_MSxMULTIPLIER, comma-separated (default %(default)s)")
    parser.add_argument("--faults", type=parse_list(faultlib.Injector.KINDS), default=list(faultlib.Injector.KINDS))
    parser.add_argument("--peers", type=parse_list(None), default=["hanet", "hanet_confirm", "bfdd"])
    parser.add_argument("--cpu-seconds", type=float, default=5.0, help="CPU-at-rest window per peer and setting")
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--plot", help="PNG of the detection latency distributions (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random pre-fault pauses")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, nftables)")
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    random.seed(args.seed)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored (a background job)
    labnet.sweep_stale()

    offset_at_start = _wall_minus_mono_ns()
    result = {"environment": environment(), "trials": args.trials, "faults": args.faults,
              "settings": [f"{i:g}x{m}" for i, m in args.settings], "peers": args.peers, "runs": []}
    try:
        for interval_ms, multiplier in args.settings:
            for name in args.peers:
                print(f"{name} at {interval_ms:g} ms x {multiplier}", flush=True)
                run = {"peer": name, "interval_ms": interval_ms, "multiplier": multiplier}
                result["runs"].append(run)
                run_peer(run, args.faults, args.trials, args.cpu_seconds)
    except KeyboardInterrupt:
        result["interrupted"] = True
        print("interrupted: writing what was measured", file=sys.stderr)
    result["comparison"] = [row for ours in ("hanet", "hanet_confirm")
                            for row in compare(result["runs"], args.faults, ours=ours)]
    result["environment"]["wall_minus_mono_drift_us"] = round((_wall_minus_mono_ns() - offset_at_start) / 1e3, 1)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print_summary(result)
    print(f"\nwrote {args.json}")
    if args.plot:
        from bench import plot
        try:
            plot.plot(result, args.plot)
            print(f"wrote {args.plot}")
        except plot.PlotUnavailable as exc:
            print(f"no plot: {exc}")
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
