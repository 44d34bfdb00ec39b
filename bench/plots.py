"""PNG plots of a comparison: latency tail (log axes) and the p99.9 - p50 gap per scheme."""

from __future__ import annotations

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
    path = out / f"{tag}-tail.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _gap_bars(out: Path, tag: str, latencies: dict[str, np.ndarray]) -> Path:
    names = list(latencies)
    gaps = [np.percentile(latencies[n], 99.9) - np.percentile(latencies[n], 50) for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bars = ax.bar(names, gaps, color=["tab:red" if n == "parm" else "tab:blue" for n in names])
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylabel("p99.9 - p50 (ms)")
    ax.set_title(f"Tail gap per scheme: {tag}")
    path = out / f"{tag}-gap.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cost_frontier(out: Path, tag: str, points: dict[str, tuple[float, stats.Estimate, stats.Estimate]]) -> Path:
    """p99 and p99.9 (each with its interval) against the extra
    inference load of each scheme (calls per query over the uncoded baseline's, minus 1): what a lower tail
    costs. Error bars are the estimates' intervals."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, marker in (("p99", "o"), ("p99.9", "s")):
        xs = np.array([100 * p[0] for p in points.values()])
        est = [p[1] if label == "p99" else p[2] for p in points.values()]
        ys = np.array([e.value for e in est])
        err = np.array([[e.value - e.low for e in est], [e.high - e.value for e in est]])
        ax.errorbar(xs, ys, yerr=np.nan_to_num(err), fmt=marker, capsize=3, label=label)
        if label == "p99.9":
            for name, x, y in zip(points, xs, ys, strict=True):
                ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("extra inference load (% calls per query over uncoded)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(f"Cost frontier: {tag}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    path = out / f"{tag}-frontier.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    path = out / "parm-accuracy-vs-k.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import sys

    print(accuracy_vs_k(Path(sys.argv[1]), Path(sys.argv[2])))
