"""Soak: many fault/heal cycles across fault kinds on a running two-node lab.

At the end both daemons must be alive, their RSS and open file descriptors flat, every carried
address on exactly one NIC, and ``replay --verify`` clean on both logs. Also reports the
convergence skew between the nodes (both enter Failing-Over) per cycle.

    python bench/soak.py --cycles 1000 --json soak.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hanet import lab as labmod  # noqa: E402
from hanet import replay  # noqa: E402
from hanet.eventlog import reader  # noqa: E402

KINDS = ("carrier", "blackhole", "oneway")
IDENTITY = {"alpha": {"192.0.2.1/24", "192.0.2.101/24", "2001:db8::1/64"},
            "beta": {"192.0.2.2/24", "192.0.2.102/24", "2001:db8::2/64"}}
NICS = {"alpha": ("nic1", "nic3"), "beta": ("nic2", "nic4")}
SOAK_CONFIG = {"failback": {"hold_down_ms": 100.0}, "damping": {"enabled": False}}


def process_figures(pid: int, reads: int = 3) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process.

    The fewest descriptors over a few reads 20 ms apart: a control connection or a netlink
    request open at the moment of one read is not a leak, and a leak shows in every read.
    """
    with open(f"/proc/{pid}/status") as fh:
        rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    fds = []
    for i in range(reads):
        if i:
            time.sleep(0.02)
        fds.append(len(os.listdir(f"/proc/{pid}/fd")))
    return rss, min(fds)


def holders(lab: labmod.Lab, node: str) -> list[int]:
    ns = lab.netns(node)
    return [i for i, nic in enumerate(NICS[node]) if set(ns.addresses(nic)) & IDENTITY[node]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))] if ordered else float("nan")


def failover_times(lab: labmod.Lab, node: str) -> list[int]:
    return [e.record["mono"] for e in reader.read_file(lab.log_path(node), lambda d: None)
            if e.record["k"] == "transition" and e.record["tr"]["dst"] == "Failing-Over"
            and e.record["tr"]["src"] != "Failing-Over"]


def cycle_skews(faults: list[tuple[str, int]], a: list[int], b: list[int]) -> dict[str, list[float]]:
    """Per fault kind, for each cycle: how far apart (ms) the two nodes' first moves after the
    fault were. A cycle in which a node did not move before the next fault counts for nothing."""
    out: dict[str, list[float]] = {}
    bounds = [t for _, t in faults[1:]] + [2 ** 63]
    for (kind, t_fault), t_next in zip(faults, bounds):
        first_a = next((t for t in a if t_fault <= t < t_next), None)
        first_b = next((t for t in b if t_fault <= t < t_next), None)
        if first_a is not None and first_b is not None:
            out.setdefault(kind, []).append(abs(first_a - first_b) / 1e6)
    return out


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
            "max": max(values, default=float("nan")),
            "mean": statistics.fmean(values) if values else float("nan")}


def run_soak(cycles: int, kinds: tuple[str, ...] = KINDS, workdir: str | None = None,
             sample_every: int = 50, progress=print) -> dict:
    lab = labmod.Lab.create(workdir, overrides=SOAK_CONFIG)
    samples: dict[str, list[tuple[int, int, int]]] = {"alpha": [], "beta": []}
    faults: list[tuple[str, int]] = []
    failures: list[str] = []
    started = time.monotonic()
    try:
        lab.start_daemons()
        for cycle in range(cycles):
            kind = kinds[cycle % len(kinds)]
            faults.append((kind, time.monotonic_ns()))
            lab.fault(kind, "primary")
            for node in ("alpha", "beta"):
                lab.wait_state(node, "Alternate-Active", 10)
            lab.heal("primary")
            for node in ("alpha", "beta"):
                lab.wait_state(node, "Monitoring", 10, all_paths_up=True)
            if cycle % sample_every == 0 or cycle == cycles - 1:
                for node in ("alpha", "beta"):
                    rss, fds = process_figures(lab.pids[node])
                    samples[node].append((cycle, rss, fds))
                progress(f"cycle {cycle + 1}/{cycles} ({kind}): "
                         + ", ".join(f"{n} rss {s[-1][1]} KiB fds {s[-1][2]}" for n, s in samples.items()))
        alive = {node: lab.daemon_alive(node) for node in ("alpha", "beta")}
        layout = {node: holders(lab, node) for node in ("alpha", "beta")}
        lab.stop_daemons()
        logs = [lab.log_path("alpha"), lab.log_path("beta")]
        verify_status = replay.main([*logs, "--verify"])
        skews_ms = cycle_skews(faults, failover_times(lab, "alpha"), failover_times(lab, "beta"))
    finally:
        lab.destroy()
    for node, rows in samples.items():
        # Flat: after the first sample (warm-up), growth stays within a small allowance.
        base = rows[1] if len(rows) > 2 else rows[0]
        if rows[-1][2] > base[2]:
            failures.append(f"{node}: open fds grew {base[2]} -> {rows[-1][2]}")
        if rows[-1][1] > base[1] * 1.10 + 2048:
            failures.append(f"{node}: RSS grew {base[1]} -> {rows[-1][1]} KiB")
    for node in ("alpha", "beta"):
        if not alive[node]:
            failures.append(f"{node} daemon died")
        if layout[node] != [0]:
            failures.append(f"{node}: identity on NICs {layout[node]}, expected exactly the primary")
    if verify_status != 0:
        failures.append("replay --verify failed")
    return {
        "cycles": cycles, "kinds": list(kinds), "seconds": round(time.monotonic() - started, 1),
        "samples": {n: [{"cycle": c, "rss_kib": r, "fds": f} for c, r, f in rows] for n, rows in samples.items()},
        "convergence_skew_ms": summary([x for values in skews_ms.values() for x in values]),
        "convergence_skew_ms_by_kind": {kind: summary(values) for kind, values in skews_ms.items()},
        "layout": layout, "alive": alive, "verify_exit": verify_status, "failures": failures,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    result = run_soak(args.cycles, tuple(args.kinds.split(",")))
    skew = result["convergence_skew_ms"]
    print(f"soak: {result['cycles']} cycles in {result['seconds']} s; convergence skew between nodes "
          f"p50 {skew['p50']:.2f} ms, p99 {skew['p99']:.2f} ms, max {skew['max']:.2f} ms")
    for kind, k in result["convergence_skew_ms_by_kind"].items():
        print(f"  {kind:<10} n {k['n']:>4}  skew p50 {k['p50']:.2f} ms, p99 {k['p99']:.2f} ms, max {k['max']:.2f} ms")
    for node, rows in result["samples"].items():
        print(f"{node}: RSS {rows[0]['rss_kib']} -> {rows[-1]['rss_kib']} KiB, fds {rows[0]['fds']} -> {rows[-1]['fds']}")
    print("failures: " + ("; ".join(result["failures"]) or "none"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
