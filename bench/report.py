"""Summaries of a load run: latency percentiles, accuracy, how many answers were reconstructed."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

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

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(name: str, records: list[Record], labels: np.ndarray) -> Summary:
    """Latency over every query (errors included: a failure is a slow answer too), accuracy over answers."""
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
    )


def _accuracy(records: list[Record], labels: np.ndarray) -> float:
    if not records:
        return float("nan")
    return float(np.mean([r.label == labels[r.index] for r in records]))


def markdown_table(summaries: list[Summary]) -> str:
    head = (
        "| run | queries | answered | errors | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | mean ms | stddev ms "
        "| accuracy | reconstructed | accuracy of reconstructed |"
    )
    rows = [head, "|" + "---|" * 14]
    for s in summaries:
        errors = ", ".join(f"{k} {v}" for k, v in s.errors.items()) or "0"
        rows.append(
            f"| {s.name} | {s.queries} | {s.answered} | {errors} | {s.p50_ms:.2f} | {s.p90_ms:.2f} | {s.p99_ms:.2f} "
            f"| {s.p999_ms:.2f} | {s.max_ms:.1f} | {s.mean_ms:.2f} | {s.stddev_ms:.2f} | {s.accuracy:.2%} "
            f"| {s.reconstructed} | {s.reconstructed_accuracy:.2%} |"
        )
    return "\n".join(rows)
