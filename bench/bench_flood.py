"""Flood benchmark: junk frames with hanet's EtherType against a running daemon.

    python bench/bench_flood.py [--seconds S] [--setting 10x3] [--rt-priority N] [--confirm-ms MS]
                                [--modes auth,late,filtered,foreign] [--json FILE]

Two daemons (``hanet run``, bench/peers/hanet_peer.py) in a switched TwoNodeLab; a third
namespace, the attacker, is plugged into the primary cable's bridge and runs bench/flood_sender.c
(compiled here with cc) flat out on one core for S seconds per mode:

* ``auth``: frames that pass node a's socket filter (length, version, kind, a's peer id) with
  fresh sequence numbers and a wrong HMAC, the worst case: each costs node a one HMAC;
* ``late``: replies echoing no request: the same filter passes them, dropped before the HMAC;
* ``filtered``: another node id: refused by the kernel filter, never read;
* ``foreign``: random lengths and bytes: refused by the kernel filter.

For a rest phase and each mode it reports the frames/s sent, node a's CPU (% of one core, from
/proc), node a's heartbeat send lateness (p50/p99 of the prober's ring: at a 1 ms interval its
keeps the prober's 4096-sample ring within one phase; at the 10 ms default the figures span the
last 41 s), how node a counted the junk (drops by
reason, "filtered", receive-buffer overflow), and the false alarms: heartbeat suspect/lost events
and failover transitions of either node during the phase. The aim is none.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import hanet_peer  # noqa: E402
from bench.peers.hanet_peer import FAILURE_STATES, HanetPeer  # noqa: E402
from hanet import labnet  # noqa: E402

MODES = ("auth", "late", "filtered", "foreign")
SENDER_SRC = REPO / "bench" / "flood_sender.c"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def with_heartbeat_keys(extra: str):
    """hanet_peer's configuration with ``extra`` lines in its [heartbeat] section."""
    plain = hanet_peer.hanet_config

    def config(*args, **kw) -> str:
        return plain(*args, **kw).replace("[heartbeat]\n", f"[heartbeat]\n{extra}", 1)
    return config


def build_sender(workdir: str) -> str:
    exe = os.path.join(workdir, "flood_sender")
    subprocess.run(["cc", "-O2", "-o", exe, str(SENDER_SRC)], check=True)
    return exe


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def events_since(log: str, t0_ns: int) -> dict[str, int]:
    """Counts of heartbeat alarms and failure transitions in ``log`` at or after ``t0_ns``."""
    from hanet.eventlog import reader, schema
    out = {"suspect": 0, "lost": 0, "failover": 0}
    if not os.path.exists(log):
        return out
    for entry in reader.read_file(log, lambda damage: None):
        rec = entry.record
        if rec["mono"] < t0_ns:
            continue
        if rec["k"] == "event":
            kind = rec[schema.BODY_KEYS["event"]].get("type")
            if kind == "heartbeat.suspect":
                out["suspect"] += 1
            elif kind == "heartbeat.lost":
                out["lost"] += 1
        elif rec["k"] == schema.TRANSITION and rec[schema.BODY_KEYS[schema.TRANSITION]]["dst"] in FAILURE_STATES:
            out["failover"] += 1
    return out


def path_counts(status: dict) -> list[dict]:
    return [{"drops": dict(p.get("drops", {})), "filtered": p.get("filtered", 0),
             "rcvbuf_overflow": p.get("rcvbuf_overflow", 0), "received": p.get("received", 0),
             "sent": p.get("sent", 0), "send_lag_p50_ns": p.get("send_lag_p50_ns"),
             "send_lag_p99_ns": p.get("send_lag_p99_ns"), "send_lag_max_ns": p.get("send_lag_max_ns")}
            for p in status.get("paths", [])]


def delta(after: dict, before: dict) -> dict:
    drops = {k: v - before["drops"].get(k, 0) for k, v in after["drops"].items() if v - before["drops"].get(k, 0)}
    return {"drops": drops, "filtered": after["filtered"] - before["filtered"],
            "rcvbuf_overflow": after["rcvbuf_overflow"] - before["rcvbuf_overflow"],
            "replies": after["received"] - before["received"], "requests": after["sent"] - before["sent"],
            "send_lag_p50_us": round((after["send_lag_p50_ns"] or 0) / 1000, 1),
            "send_lag_p99_us": round((after["send_lag_p99_ns"] or 0) / 1000, 1)}


def phase(peer: HanetPeer, attacker: labnet.Netns, sender: str, mode: str | None, seconds: float) -> dict:
    a, b = peer.nodes["a"], peer.nodes["b"]
    before = path_counts(a.status())
    t0 = time.monotonic_ns()
    cpu0 = cpu_seconds(a.proc.pid)
    sent = {"sent": 0, "seconds": seconds, "rate": 0}
    if mode is None:
        time.sleep(seconds)
    else:
        out = attacker.run(sender, "atk0", mode, str(seconds), "beta").stdout
        sent = json.loads(out.strip().splitlines()[-1])
    cpu1 = cpu_seconds(a.proc.pid)
    t1 = time.monotonic_ns()
    time.sleep(0.2)  # alarms raised by the last junk frames land in the log
    after = path_counts(a.status())
    return {
        "mode": mode or "rest", "frames_sent": sent["sent"], "rate_fps": round(sent["rate"]),
        "daemon_cpu_percent": round(100 * (cpu1 - cpu0) / ((t1 - t0) / 1e9), 1),
        "alarms_a": events_since(a.eventlog, t0), "alarms_b": events_since(b.eventlog, t0),
        "paths": [delta(x, y) for x, y in zip(after, before)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--setting", default="10x3", help="INTERVAL_MSxMULTIPLIER of both daemons")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rt-priority", type=int, default=0,
                    help="heartbeat.rt_priority of both daemons (SCHED_FIFO; 0 = normal)")
    ap.add_argument("--confirm-ms", type=float, default=0.0,
                    help="heartbeat.confirm_ms of both daemons (confirmation probing; 0 = off)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    if args.rt_priority:
        hanet_peer.hanet_config = with_heartbeat_keys(f"rt_priority = {args.rt_priority}\n")
    interval, multiplier = args.setting.lower().split("x")
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}")
    labnet.sweep_stale()
    result = {"setting": args.setting, "seconds": args.seconds, "rt_priority": args.rt_priority,
              "confirm_ms": args.confirm_ms, "phases": [],
              "host": {"cpus": os.cpu_count(), "kernel": platform.release()}}
    with tempfile.TemporaryDirectory(prefix="hanet-flood-") as work:
        sender = build_sender(work)
        lab = labnet.TwoNodeLab.create("fl", switched=True)
        attacker = None
        peer = HanetPeer()
        peer.confirm_ms = args.confirm_ms or None
        try:
            attacker = labnet.Netns.create("flx")
            labnet.veth(attacker, "atk0", lab.switch, "x0")
            lab.switch.ip("link", "set", "x0", "master", "br0")
            # The sender's random source MACs would grow the software bridge's MAC table without
            # bound (a million entries in 5 s), which stalls every CPU of this host, SCHED_FIFO
            # tasks too, for up to ~100 ms. A real switch's table is bounded and stops learning
            # when full; a port that learns nothing is that switch, and keeps the host measured.
            lab.switch.run("bridge", "link", "set", "dev", "x0", "learning", "off")
            peer.start(lab, float(interval), int(multiplier))
            if not peer.wait_up(20.0):
                raise SystemExit("the daemons did not come up")
            time.sleep(1.0)
            for mode in [None, *modes]:
                res = phase(peer, attacker, sender, mode, args.seconds)
                result["phases"].append(res)
                p0 = res["paths"][0]
                print(f"{res['mode']:9s} {res['rate_fps']:>9,d} frames/s  cpu {res['daemon_cpu_percent']:5.1f} %  "
                      f"lag p99 {p0['send_lag_p99_us']:7.1f} us  alarms a={res['alarms_a']} b={res['alarms_b']}  "
                      f"drops={p0['drops']} filtered={p0['filtered']} overflow={p0['rcvbuf_overflow']}",
                      flush=True)
                time.sleep(1.0)
        finally:
            peer.stop()
            if attacker is not None:
                attacker.delete()
            lab.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
