"""Event-log rates: appends (buffered, write-through, and with the transition fsync policy) and
decoding (framing + CRC + msgpack + schema check), on a real file system; appends while the disk
refuses every write; reading files crafted to make the search for intact frames slow.

    python bench/bench_eventlog.py [--records N] [--repeats R] [--dir DIR] [--json FILE]

Rates are records per second over R runs: the median and the slowest run, by wall-clock time
and by the process's CPU time (the CPU rate is steadier when other work shares the 2 cores).
The transition fsync policy is reported as per-transition latency (median, p99), wall clock.
Degraded appends (every write fails with ENOSPC, a retry on each append) are per-append latency.
Crafted files are headers back to back, each claiming a payload of half the file with a wrong
CRC: seconds of CPU to read 1 MiB and 4 MiB (the search is linear: about 4x from one to the other).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from hanet import machine, model
from hanet.eventlog import Writer, framing, read_file, reader
from hanet.eventlog.writer import FileOps

EVENTS = (
    model.HeartbeatSuspect(t_ns=1_000_000_000, path=0, misses=1, send_lag_max_ns=12_000, recv_delay_max_ns=30_000),
    model.HeartbeatCleared(t_ns=1_010_000_000, path=0, rtt_ns=81_000),
    model.PathQuality(t_ns=1_020_000_000, path=1, loss_ppm=1200, rtt_p50_ns=80_000, rtt_p99_ns=240_000),
    model.HeartbeatLost(t_ns=1_030_000_000, path=0, misses=3, first_miss_ns=1_000_000_000,
                        send_lag_max_ns=12_000, recv_delay_max_ns=30_000),
)
STEP = machine.Step(src="Monitoring", dst="Failing-Over", trigger="heartbeat.lost",
                    reason="heartbeats lost on the active path", active=1,
                    actions=(model.PauseMonitoring(id=1, path=0), model.DisableNic(id=2, path=0),
                             model.ConfigureNic(id=3, path=1, from_path=0, layout=("02:00:00:00:00:01", "02:00:00:00:00:03")),
                             model.EnableNic(id=4, path=1), model.Announce(id=5, path=1, count=3),
                             model.MoveRoutes(id=6, path=1)))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def append_rate(directory: str, records: int, buffer_bytes: int) -> tuple[float, float]:
    """Events and one transition in ten, durability "none": the cost of encoding and writing."""
    path = os.path.join(directory, f"append-{buffer_bytes}.hlog")
    if os.path.exists(path):
        os.unlink(path)
    with Writer(path, "alpha", durability="none", rotate_bytes=1 << 40, buffer_bytes=buffer_bytes,
                max_pending_bytes=max(buffer_bytes, 1 << 20)) as w:
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(records):
            if i % 10 == 9:
                w.transition(STEP, i)
            else:
                w.event(EVENTS[i & 3])
        w.flush()
        return records / (time.perf_counter() - start), records / (time.process_time() - cpu)


def transition_latencies(directory: str, count: int) -> list[float]:
    """Seconds per durable transition append (write + fdatasync), with an event before each."""
    path = os.path.join(directory, "durable.hlog")
    out = []
    with Writer(path, "alpha", durability="transition", rotate_bytes=1 << 40) as w:
        for i in range(count):
            cause = w.event(EVENTS[3])
            start = time.perf_counter()
            w.transition(STEP, cause)
            out.append(time.perf_counter() - start)
    return out


def decode_rate(path: str) -> tuple[float, float]:
    """Wall and CPU rate of reading every record of ``path`` (framing, CRC, msgpack, schema)."""
    damage: list = []
    start, cpu = time.perf_counter(), time.process_time()
    count = 0
    for _entry in read_file(path, damage.append):
        count += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if damage:
        raise SystemExit(f"bench file is damaged: {damage[0]}")
    return count / wall, count / cpu


class FullDisk(FileOps):
    """Every write fails as on a full disk."""

    def write(self, fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def degraded_latencies(directory: str, count: int) -> list[float]:
    """Seconds per append while every write fails, retrying on each append (the worst case)."""
    path = os.path.join(directory, "degraded.hlog")
    out = []
    w = Writer(path, "alpha", durability="transition", rotate_bytes=1 << 40, ops=FullDisk(),
               retry_interval_ns=0, max_pending_bytes=64 * 1024)
    for i in range(count):
        start = time.perf_counter()
        if i % 10 == 9:
            w.transition(STEP, i)
        else:
            w.event(EVENTS[i & 3])
        out.append(time.perf_counter() - start)
    assert w.degraded is not None and w.counters.records_lost > 0
    w.close()
    return out


def crafted_read_seconds(size: int, repeats: int) -> float:
    """Median CPU seconds to read ``size`` bytes of headers that each claim half the file."""
    unit = framing.HEADER.pack(framing.MAGIC, size // 2, 0)
    buf = (unit * (size // len(unit) + 1))[:size]
    runs = []
    for _ in range(repeats):
        damage: list = []
        cpu = time.process_time()
        for _entry in reader.decode("crafted", buf, damage.append):
            pass
        runs.append(time.process_time() - cpu)
    return statistics.median(runs)


def summarise(runs: list[tuple[float, float]]) -> dict[str, float]:
    wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
    return {"median_per_s": statistics.median(wall), "slowest_per_s": min(wall),
            "cpu_median_per_s": statistics.median(cpu), "cpu_slowest_per_s": min(cpu)}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--transitions", type=int, default=500, help="durable transitions to time")
    ap.add_argument("--dir", default=None, help="where to write (default: a new dir in /var/tmp)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="hanet-bench-", dir=args.dir or "/var/tmp")
    try:
        results: dict = {"records": args.records, "repeats": args.repeats, "transition_every": 10}
        for label, buffer_bytes in (("append_write_through", 0), ("append_buffered_64k", 65536)):
            results[label] = summarise([append_rate(directory, args.records, buffer_bytes)
                                        for _ in range(args.repeats)])
        path = os.path.join(directory, "append-65536.hlog")
        results["file_bytes"] = os.path.getsize(path)
        results["decode"] = summarise([decode_rate(path) for _ in range(args.repeats)])
        lat = transition_latencies(directory, args.transitions)
        results["transition_fsync"] = {"count": len(lat), "median_us": statistics.median(lat) * 1e6,
                                       "p99_us": quantile(lat, 0.99) * 1e6,
                                       "per_s": len(lat) / sum(lat)}
        lat = degraded_latencies(directory, 20_000)
        results["append_degraded"] = {"count": len(lat), "median_us": statistics.median(lat) * 1e6,
                                      "p99_us": quantile(lat, 0.99) * 1e6}
        results["crafted_read_cpu_s"] = {f"{mib}MiB": crafted_read_seconds(mib << 20, min(args.repeats, 3))
                                         for mib in (1, 4)}
    finally:
        shutil.rmtree(directory)

    print(f"records per run: {args.records} (1 transition in 10), {args.repeats} runs, "
          f"file {results['file_bytes']} bytes")
    for label in ("append_write_through", "append_buffered_64k", "decode"):
        r = results[label]
        print(f"{label:22s} median {r['median_per_s']:>9,.0f} rec/s  slowest {r['slowest_per_s']:>9,.0f}"
              f"   | by CPU time: median {r['cpu_median_per_s']:>9,.0f}  slowest {r['cpu_slowest_per_s']:>9,.0f}")
    t = results["transition_fsync"]
    print(f"{'transition_fsync':22s} median {t['median_us']:8.1f} us   p99 {t['p99_us']:8.1f} us"
          f"   ({t['per_s']:,.0f} durable transitions/s, {t['count']} timed)")
    t = results["append_degraded"]
    print(f"{'append_degraded':22s} median {t['median_us']:8.1f} us   p99 {t['p99_us']:8.1f} us"
          f"   (every write fails, {t['count']} timed)")
    c = results["crafted_read_cpu_s"]
    print(f"{'crafted_read':22s} 1 MiB {c['1MiB']:.3f} s CPU   4 MiB {c['4MiB']:.3f} s CPU")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
