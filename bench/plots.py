"""PNG plots of a comparison: latency tail (log axes) and the p99.9 - p50 gap per scheme."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display here
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench import stats  # noqa: E402


def latency_plots(out: Path, tag: str, schemes: list[str]) -> list[Path]:
    """Reads ``<tag>-<scheme>-latency.npy`` written by the run; returns the PNG paths."""
    latencies = {s: np.sort(np.load(out / f"{tag}-{s}-latency.npy")) * 1e3 for s in schemes}
    return [_tail_cdf(out, tag, latencies), _gap_bars(out, tag, latencies)]


def _tail_cdf(out: Path, tag: str, latencies: dict[str, np.ndarray]) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, ms in latencies.items():
        survival = 1.0 - np.arange(len(ms)) / len(ms)
        ax.step(ms, survival, where="post", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(max(1e-4, 0.5 / max(len(m) for m in latencies.values())), 1.0)
    for q in (1e-2, 1e-3):
        ax.axhline(q, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("share of queries slower (log): 1e-2 = p99, 1e-3 = p99.9")
    ax.set_title(f"Latency tail: {tag}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return _saved(fig, out / f"{tag}-tail.png")


def _gap_bars(out: Path, tag: str, latencies: dict[str, np.ndarray]) -> Path:
    names = list(latencies)
    gaps = [np.percentile(latencies[n], 99.9) - np.percentile(latencies[n], 50) for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(names, gaps, color=["tab:red" if n == "parm" else "tab:blue" for n in names])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylabel("p99.9 - p50 (ms)")
    ax.set_title(f"Tail gap per scheme: {tag}")
    return _saved(fig, out / f"{tag}-gap.png")


@dataclass(frozen=True)
class Published:
    """A paper's figure on a cost frontier: a range of latency (ms) at an extra load (a share), or, where
    the paper gives no point (``extra_load`` None), a note printed in the plot's corner."""

    label: str
    extra_load: float | None = None
    low_ms: float = float("nan")
    high_ms: float = float("nan")


def cost_frontier(
    out: Path,
    tag: str,
    points: dict[str, tuple[float, stats.Estimate, stats.Estimate]],
    line: tuple[str, ...] = (),
    published: tuple[Published, ...] = (),
) -> Path:
    """p99 (left) and p99.9 (right), each with its interval, against each scheme's extra inference load
    (calls per query over the uncoded baseline's, minus 1): what a lower tail costs. The schemes named in
    ``line`` (a sweep of one scheme's setting) are joined, in order of their load; ``published`` marks a
    paper's figures."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, (i, label) in zip(axes, ((1, "p99"), (2, "p99.9")), strict=True):
        for name, point in points.items():
            est = _at(point, i)
            x = 100 * point[0]
            err = np.nan_to_num([[est.value - est.low], [est.high - est.value]])
            swept = name in line
            ax.errorbar(x, est.value, yerr=err, fmt="o", ms=4 if swept else 6, capsize=3,
                        color="tab:blue" if swept else _colour(name), alpha=0.55 if est.thin else 1.0)  # fmt: skip
            ax.annotate(name, (x, est.value), textcoords="offset points", xytext=(5, 4), fontsize=7)
        swept_points = sorted((points[n][0], _at(points[n], i).value) for n in line if n in points)
        if len(swept_points) > 1:
            ax.plot([100 * x for x, _ in swept_points], [y for _, y in swept_points], "-", color="tab:blue",
                    lw=1, label="hedging, delay swept")  # fmt: skip
        _published(ax, published, label)
        ax.set_yscale("log")
        ax.set_xlabel("extra inference load (% calls per query over uncoded)")
        ax.set_title(f"{label} (faded: fewer than {stats.MIN_BEYOND} samples beyond)", fontsize=9)
        ax.grid(True, which="both", alpha=0.2)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("latency (ms, log)")
    fig.suptitle(f"Cost frontier: {tag}")
    return _saved(fig, out / f"{tag}-frontier.png")


def load_sweep(out: Path, tag: str, series: dict[str, list[tuple[float, stats.Estimate, stats.Estimate]]]) -> Path:
    """p99 (left) and p99.9 (right), each with its interval, against the deployed instances' utilisation:
    one line per scheme through its (utilisation, p99, p99.9) points."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for ax, (i, label) in zip(axes, ((1, "p99"), (2, "p99.9")), strict=True):
        for name, points in series.items():
            points = sorted(points, key=lambda p: p[0])
            xs, ests = [p[0] for p in points], [_at(p, i) for p in points]
            err = np.nan_to_num([[e.value - e.low for e in ests], [e.high - e.value for e in ests]])
            ax.errorbar(xs, [e.value for e in ests], yerr=err, fmt="o", ms=5, capsize=3, color=_colour(name),
                        ls="--" if name.startswith("hedge_") else "-", label=name)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("utilisation of the deployed instances under none")
        ax.set_title(f"{label} (intervals: 95% bootstrap)", fontsize=9)
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("latency (ms, log)")
    fig.suptitle(f"Tail against load: {tag}")
    return _saved(fig, out / f"{tag}.png")


def _at(point: tuple[float, stats.Estimate, stats.Estimate], i: int) -> stats.Estimate:
    return point[1] if i == 1 else point[2]


def _colour(name: str) -> str:
    for prefix, colour in (("parm", "tab:red"), ("collage", "tab:red"), ("approxifer", "tab:red")):
        if name.startswith(prefix):
            return colour
    return {"hedge": "tab:blue", "replicate": "tab:green", "equal": "tab:orange"}.get(name.split("_")[0], "black")


def _published(ax: plt.Axes, published: tuple[Published, ...], quantile: str) -> None:
    notes = []
    shown = [m for m in published if m.label.startswith(quantile + " ")]
    for mark, colour in zip(shown, ("grey", "tab:purple", "tab:brown", "tab:olive"), strict=False):
        if mark.extra_load is None:
            notes.append(mark.label)
            continue
        x = 100 * mark.extra_load
        ax.vlines(x, mark.low_ms, mark.high_ms, colors=colour, lw=6, alpha=0.35)
        ax.plot([x], [mark.low_ms], marker="*", color=colour, ms=10, ls="", label=mark.label)
    if notes:
        ax.text(0.02, 0.02, "\n".join(notes), transform=ax.transAxes, fontsize=7, va="bottom", color="dimgrey")


def accuracy_vs_k(results_json: Path, out: Path) -> Path:
    """ParM: deployed vs degraded-mode accuracy against k, per dataset and encoder (from export results)."""
    import json

    models = json.loads(results_json.read_text())["models"].values()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    for ax, dataset in zip(axes, ("mnist", "fashion"), strict=True):
        parity = [m for m in models if m["role"] == "parity" and m["dataset"] == dataset]
        for encoder, marker in (("add", "o"), ("concat", "s")):
            rows = sorted((m["k"], m["metrics"]["degraded_accuracy"]) for m in parity if m["encoder"] == encoder)
            ax.plot([k for k, _ in rows], [a * 100 for _, a in rows], marker=marker, label=f"ParM {encoder} (A_d)")
        deployed = parity[0]["metrics"]["deployed_accuracy"] * 100
        ax.axhline(deployed, color="black", ls="--", lw=1, label=f"deployed (A_a) {deployed:.2f}%")
        ax.set_xticks([2, 3, 4])
        ax.set_xlabel("k (queries per parity)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _saved(fig, out / "parm-accuracy-vs-k.png")


def _saved(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` as every plot here is written, and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import sys

    print(accuracy_vs_k(Path(sys.argv[1]), Path(sys.argv[2])))
