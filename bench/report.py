"""Summaries of a load run: latency percentiles, accuracy, how many answers were reconstructed.

p50, p99, p99.9 and the gap p99.9 − p50 also carry a 95% bootstrap interval and the number of samples
beyond the quantile (:mod:`bench.stats`); the table shows them as ``41.20 [38.00, 45.90] (n>q=61)``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from bench import stats
from bench.load import Record

PERCENTILES = (50, 90, 99, 99.9)


@dataclass(frozen=True)
class Summary:
    name: str
    queries: int
    answered: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    stddev_ms: float
    accuracy: float  # over answered queries
    reconstructed: int
    reconstructed_accuracy: float  # NaN when nothing was reconstructed
    # p50, p99, p99.9 and gap (p99.9 - p50) in ms with their intervals (bench.stats); empty: not computed
    intervals: dict[str, stats.Estimate] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(
    name: str, records: list[Record], labels: np.ndarray, resamples: int = stats.RESAMPLES, seed: int = stats.SEED
) -> Summary:
    """Latency over every query (errors included: a failure is a slow answer too), accuracy over answers;
    the tail figures' intervals from ``resamples`` seeded bootstrap resamples."""
    if len({r.index for r in records}) != len(records):
        raise ValueError(f"{name}: a query was recorded twice")
    latencies_ms = np.array([r.latency_s for r in records]) * 1e3
    ok = [r for r in records if r.code == "OK"]
    rebuilt = [r for r in ok if r.reconstructed]
    p50, p90, p99, p999 = np.percentile(latencies_ms, PERCENTILES)
    return Summary(
        name=name,
        queries=len(records),
        answered=len(ok),
        errors=dict(Counter(r.code for r in records if r.code != "OK")),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        p999_ms=p999,
        max_ms=float(latencies_ms.max()),
        mean_ms=float(latencies_ms.mean()),
        stddev_ms=float(latencies_ms.std()),
        accuracy=_accuracy(ok, labels),
        reconstructed=len(rebuilt),
        reconstructed_accuracy=_accuracy(rebuilt, labels),
        intervals=stats.figures(latencies_ms, resamples, seed),
    )


def _accuracy(records: list[Record], labels: np.ndarray) -> float:
    if not records:
        return float("nan")
    return float(np.mean([r.label == labels[r.index] for r in records]))


def markdown_table(summaries: list[Summary]) -> str:
    """One row per run. p50, p99 and p99.9 read ``value [95% interval] (n>q=samples beyond)``, flagged
    ``thin`` under 30 samples beyond (:mod:`bench.stats`)."""
    head = (
        "| run | queries | answered | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | mean ms | stddev ms "
        "| accuracy | reconstructed | accuracy of reconstructed |"
    )
    rows = [head, "|" + "---|" * 14]
    for s in summaries:
        errors = ", ".join(f"{k} {v}" for k, v in s.errors.items()) or "0"
        p50, p99, p999 = (
            _with_interval(s, name, value)
            for name, value in (("p50", s.p50_ms), ("p99", s.p99_ms), ("p99.9", s.p999_ms))
        )
        rows.append(
            f"| {s.name} | {s.queries} | {s.answered} | {errors} | {p50} | {s.p90_ms:.2f} | {p99} "
            f"| {p999} | {s.max_ms:.1f} | {s.mean_ms:.2f} | {s.stddev_ms:.2f} | {s.accuracy:.2%} "
            f"| {s.reconstructed} | {s.reconstructed_accuracy:.2%} |"
        )
    return "\n".join(rows)


def _with_interval(summary: Summary, name: str, value: float) -> str:
    estimate = summary.intervals.get(name)
    return estimate.format(2) if estimate is not None else f"{value:.2f}"
