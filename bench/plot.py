"""PNG of the latency distributions written by bench/detection.py.

One column per setting. The first row is detection (fault to failure declared); a second row,
recovery (the UDP stream's gap), appears when some peer moved traffic. For each fault kind, each
peer's trials are a box plot with the individual trials drawn over it, on a log scale (the 1 ms and
100 ms settings differ by two orders of magnitude). A series without data is labelled with the
run's status ("not supported", "unavailable", "error").

    python bench/plot.py results.json out.png
"""
from __future__ import annotations

import json
import sys

METRICS = (("detection_ms", "detection latency, ms"), ("recovery_ms", "recovery (UDP gap), ms"))


class PlotUnavailable(RuntimeError):
    """matplotlib is not importable; the JSON results stand on their own."""


def _values(run: dict, kind: str, metric: str) -> list[float]:
    trials = (((run.get("faults") or {}).get(kind)) or {}).get("trials", [])
    return [t[metric] for t in trials if t.get(metric) is not None]


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:
        raise PlotUnavailable(f"matplotlib is not installed ({exc}); pip install matplotlib") from None

    settings, kinds, peers = result["settings"], result["faults"], result["peers"]
    runs = {(f"{r['interval_ms']:g}x{r['multiplier']}", r["peer"]): r for r in result["runs"]}
    metrics = [m for m in METRICS if m[0] == "detection_ms"
               or any(_values(r, k, m[0]) for r in result["runs"] for k in kinds)]
    fig, axes = plt.subplots(len(metrics), len(settings), figsize=(5.5 * len(settings), 4.6 * len(metrics)),
                             squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(1, len(peers))
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    for row, (metric, label) in enumerate(metrics):
        for ax, setting in zip(axes[row], settings):
            for j, peer in enumerate(peers):
                colour = colours[j % len(colours)]
                run = runs.get((setting, peer), {})
                for i, kind in enumerate(kinds):
                    x = i + (j - (len(peers) - 1) / 2) * width
                    values = _values(run, kind, metric)
                    if not values:
                        ax.text(x, 0.5, run.get("status") if run.get("status") != "ok" else "n/a", rotation=90,
                                ha="center", va="center", fontsize=7, color=colour, transform=ax.get_xaxis_transform())
                        continue
                    box = ax.boxplot([values], positions=[x], widths=width * 0.8, showfliers=False,
                                     patch_artist=True, manage_ticks=False)
                    for patch in box["boxes"]:
                        patch.set_facecolor(colour)
                        patch.set_alpha(0.35)
                    ax.scatter([x] * len(values), values, s=6, color=colour, zorder=3)
                ax.plot([], [], color=colour, label=peer, linewidth=6, alpha=0.5)
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_xlim(-0.6, len(kinds) - 0.4)
            ax.set_xticks(range(len(kinds)))
            ax.set_xticklabels(kinds, fontsize=8)
            ax.set_title(f"{setting} (interval ms x multiplier)")
            ax.set_ylabel(label)
            ax.grid(True, which="both", axis="y", alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"Fault to failure declared / to traffic flowing again, {result['trials']} trials per series")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/plot.py results.json out.png")
    with open(sys.argv[1]) as f:
        plot(json.load(f), sys.argv[2])
