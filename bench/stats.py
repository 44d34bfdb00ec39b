"""Confidence intervals for latency figures: percentile bootstrap, seeded, numpy only.

A tail quantile of one run is an estimate from few samples: p99.9 of 9,000 queries rests on the 9 slowest.
Each figure here comes with

- a 95% percentile-bootstrap interval: the run's latencies are resampled with replacement ``resamples``
  times (2000 by default, seeded, so a report repeats), the figure is computed on every resample, and the
  interval is the 2.5th to 97.5th percentile of those values. p50, p99, p99.9 and the gap p99.9 − p50 of
  one run come from the same resamples;
- ``beyond``: how many samples lie above the estimate (strictly), the tail the figure rests on; with fewer
  than :data:`MIN_BEYOND` the figure is flagged *thin*: its interval is too optimistic to trust, since the
  bootstrap cannot invent samples slower than the slowest seen.

A ratio of two runs' figures (``ratio``) resamples each run independently and takes the ratio resample by
resample. Percentiles use numpy's default (linear interpolation), as :mod:`bench.report` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
MIN_BEYOND = 30  # samples beyond a quantile, below which its interval is flagged
SEED = 0
# Figures of one run, by name: a percentile, or "gap" (p99.9 - p50).
PERCENTILES = {"p50": 50.0, "p99": 99.0, "p99.9": 99.9}
GAP = "gap"
_CHUNK_ELEMENTS = 1 << 22  # resampled values held at once (32 MiB of float64)

Seed = int | np.random.SeedSequence


@dataclass(frozen=True)
class Estimate:
    """A figure, its bootstrap interval, and (for a quantile, a gap or a ratio of them) the samples
    beyond the quantile it rests on (a gap or a ratio: the fewest of those it is made of)."""

    value: float
    low: float
    high: float
    beyond: int | None = None

    @property
    def thin(self) -> bool:
        return self.beyond is not None and self.beyond < MIN_BEYOND

    @property
    def width(self) -> float:
        return self.high - self.low

    def format(self, digits: int = 1, unit: str = "") -> str:
        """``41.2 [38.0, 45.9] (n>q=61)``; a thin figure reads ``(n>q=9, thin)``."""
        text = f"{self.value:.{digits}f}{unit} [{self.low:.{digits}f}, {self.high:.{digits}f}]"
        if self.beyond is not None:
            text += f" (n>q={self.beyond}{', thin' if self.thin else ''})"
        return text


def beyond(samples: np.ndarray, percentile: float) -> int:
    """How many samples are strictly greater than their ``percentile`` (0-100) estimate."""
    values = np.asarray(samples, dtype=float)
    return int(np.count_nonzero(values > np.percentile(values, percentile)))


def resampled(
    samples: np.ndarray, percentiles: list[float], resamples: int = RESAMPLES, seed: Seed = SEED
) -> np.ndarray:
    """``(resamples, len(percentiles))``: the percentiles of ``resamples`` bootstrap resamples of ``samples``."""
    values = np.asarray(samples, dtype=float)
    if values.ndim != 1 or not len(values):
        raise ValueError(f"need a non-empty 1-D sample, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(percentiles)))
    rows = max(1, _CHUNK_ELEMENTS // len(values))
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        drawn = values[rng.integers(0, len(values), size=(stop - start, len(values)))]
        out[start:stop] = np.percentile(drawn, percentiles, axis=1).T
    return out


@dataclass(frozen=True)
class Bootstrap:
    """One run's figures (:data:`PERCENTILES` and :data:`GAP`): the estimates, every resample's value,
    and the samples beyond each. Keep one per run to compare runs without resampling again."""

    point: dict[str, float]
    draws: dict[str, np.ndarray]
    beyond: dict[str, int]

    @classmethod
    def of(cls, samples: np.ndarray, resamples: int = RESAMPLES, seed: Seed = SEED) -> Bootstrap:
        values = np.asarray(samples, dtype=float)
        quantiles = list(PERCENTILES.values())
        point = {name: float(v[0]) for name, v in _figures_of(np.percentile(values, quantiles)[None, :]).items()}
        counts = {name: beyond(values, q) for name, q in PERCENTILES.items()}
        counts[GAP] = counts["p99.9"]  # the gap's uncertainty is its p99.9's
        return cls(point, _figures_of(resampled(values, quantiles, resamples, seed)), counts)

    def estimates(self) -> dict[str, Estimate]:
        return {name: _estimate(self.point[name], self.draws[name], self.beyond[name]) for name in self.point}

    def ratio(self, other: Bootstrap, figure: str = GAP) -> Estimate:
        """This run's ``figure`` over ``other``'s, resample by resample (the two must be drawn independently,
        with different seeds); its tail count is the smaller of the two."""
        with np.errstate(divide="ignore", invalid="ignore"):
            value = self.point[figure] / other.point[figure]
            draws = self.draws[figure] / other.draws[figure]
        return _estimate(value, draws, min(self.beyond[figure], other.beyond[figure]))


def figures(samples: np.ndarray, resamples: int = RESAMPLES, seed: Seed = SEED) -> dict[str, Estimate]:
    """p50, p99, p99.9 and the gap p99.9 − p50 of one run, each with its interval and tail count."""
    return Bootstrap.of(samples, resamples, seed).estimates()


def ratio(
    numerator: np.ndarray, denominator: np.ndarray, figure: str = GAP, resamples: int = RESAMPLES, seed: int = SEED
) -> Estimate:
    """``figure`` (a name of :data:`PERCENTILES`, or :data:`GAP`) of one run over the other's, each run
    resampled independently (two streams of one seed)."""
    first, second = np.random.SeedSequence(seed).spawn(2)
    return Bootstrap.of(numerator, resamples, first).ratio(Bootstrap.of(denominator, resamples, second), figure)


def _figures_of(percentiles: np.ndarray) -> dict[str, np.ndarray]:
    """Columns in :data:`PERCENTILES` order -> each figure's values, the gap included."""
    named = {name: percentiles[:, i] for i, name in enumerate(PERCENTILES)}
    return {**named, GAP: named["p99.9"] - named["p50"]}


def _estimate(value: float, draws: np.ndarray, count: int) -> Estimate:
    """The figure and the central ``LEVEL`` of its resampled values (an undefined ratio's draws skipped)."""
    finite = draws[~np.isnan(draws)]
    if not len(finite):
        return Estimate(float(value), float("nan"), float("nan"), count)
    tail = (1 - LEVEL) / 2
    low, high = np.quantile(finite, [tail, 1 - tail])
    return Estimate(float(value), float(low), float(high), count)
