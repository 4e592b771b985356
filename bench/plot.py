"""PNG of the detection latency distributions written by bench/detection.py.

One panel per setting; for each fault kind, each peer's trials as a box plot with the individual
trials drawn over it, on a log scale (1 ms and 100 ms settings differ by two orders of magnitude).

    python bench/plot.py results.json out.png
"""
from __future__ import annotations

import json
import sys


class PlotUnavailable(RuntimeError):
    """matplotlib is not importable; the JSON results stand on their own."""


def plot(result: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:
        raise PlotUnavailable(f"matplotlib is not installed ({exc}); pip install matplotlib") from None

    settings = result["settings"]
    kinds = result["faults"]
    peers = result["peers"]
    runs = {(f"{r['interval_ms']:g}x{r['multiplier']}", r["peer"]): r for r in result["runs"]}
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.8 / max(1, len(peers))
    for ax, setting in zip(axes[0], settings):
        for j, peer in enumerate(peers):
            run = runs.get((setting, peer), {})
            series = run.get("faults") or {}
            for i, kind in enumerate(kinds):
                values = [t["detection_ms"] for t in (series.get(kind) or {}).get("trials", [])
                          if t.get("detection_ms") is not None]
                x = i + (j - (len(peers) - 1) / 2) * width
                if not values:
                    ax.text(x, 0.5, run.get("status", "no data"), rotation=90, ha="center", va="center",
                            fontsize=7, color=colours[j % len(colours)], transform=ax.get_xaxis_transform())
                    continue
                box = ax.boxplot([values], positions=[x], widths=width * 0.8, showfliers=False,
                                 patch_artist=True, manage_ticks=False)
                for patch in box["boxes"]:
                    patch.set_facecolor(colours[j % len(colours)])
                    patch.set_alpha(0.35)
                ax.scatter([x] * len(values), values, s=6, color=colours[j % len(colours)], zorder=3)
            ax.plot([], [], color=colours[j % len(colours)], label=peer, linewidth=6, alpha=0.5)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_xlim(-0.6, len(kinds) - 0.4)
        ax.set_xticks(range(len(kinds)))
        ax.set_xticklabels(kinds, fontsize=8)
        ax.set_title(f"{setting} (interval ms x multiplier)")
        ax.set_ylabel("detection latency, ms")
        ax.grid(True, which="both", axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Fault to failure declared, {result['trials']} trials per series")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/plot.py results.json out.png")
    with open(sys.argv[1]) as f:
        plot(json.load(f), sys.argv[2])
