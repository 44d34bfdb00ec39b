"""Bootstrap intervals of latency figures (bench.stats): they cover the truth about as often as they claim,
narrow as the sample grows, count the tail they rest on exactly, and compare two runs."""

from __future__ import annotations

import numpy as np
import pytest

from bench import stats

TRIALS = 200
RESAMPLES = 300  # enough to place a 95% interval's ends; the report uses 2000


def _exponential_quantile(q: float, scale: float = 1.0) -> float:
    return -scale * np.log1p(-q)


@pytest.mark.parametrize(("figure", "q", "n"), [("p50", 0.5, 400), ("p99", 0.99, 1000)])
def test_the_interval_covers_the_true_quantile_in_most_seeded_runs(figure, q, n):
    rng = np.random.default_rng(2024)
    truth = _exponential_quantile(q)
    covered = 0
    for trial in range(TRIALS):
        estimate = stats.figures(rng.exponential(size=n), RESAMPLES, seed=trial)[figure]
        covered += estimate.low <= truth <= estimate.high
    # A percentile bootstrap of a tail quantile covers a little less than it claims; an interval that always
    # covers is too wide to tell schemes apart.
    assert 0.88 <= covered / TRIALS <= 0.99, covered


def test_the_interval_narrows_as_the_sample_grows():
    rng = np.random.default_rng(7)
    widths = {}
    for n in (1000, 16000):
        widths[n] = np.median([stats.figures(rng.exponential(size=n), 200, seed=s)["p99"].width for s in range(10)])
    assert 0.15 < widths[16000] / widths[1000] < 0.4  # about 1/sqrt(16) = 0.25


def test_the_count_beyond_a_quantile_is_exact_and_flags_a_thin_tail():
    latencies = np.arange(1, 1001, dtype=float)  # p99 = 990.01: 991..1000 lie beyond
    assert stats.beyond(latencies, 99) == 10
    assert stats.beyond(latencies, 50) == 500
    assert stats.beyond(np.full(100, 3.0), 99) == 0  # ties at the quantile are not beyond it
    estimates = stats.figures(latencies, 100)
    assert estimates["p99"].beyond == 10 and estimates["p99"].thin
    assert estimates["p50"].beyond == 500 and not estimates["p50"].thin
    assert estimates["gap"].beyond == estimates["p99.9"].beyond == 1


def test_figures_are_the_runs_own_percentiles_and_repeat_with_the_seed():
    latencies = np.random.default_rng(3).lognormal(size=5000)
    first, again = stats.figures(latencies, 300, seed=1), stats.figures(latencies, 300, seed=1)
    assert first == again
    assert first["p99"].value == pytest.approx(np.percentile(latencies, 99))
    assert first["gap"].value == pytest.approx(np.percentile(latencies, 99.9) - np.percentile(latencies, 50))
    assert stats.figures(latencies, 300, seed=2)["p99"] != first["p99"]


def test_a_ratio_of_two_runs_covers_their_true_ratio():
    rng = np.random.default_rng(5)
    slow, fast = rng.exponential(scale=3.0, size=20000), rng.exponential(scale=1.0, size=20000)
    estimate = stats.ratio(slow, fast, "p99", resamples=500)
    assert estimate.low < 3.0 < estimate.high and estimate.value == pytest.approx(
        np.percentile(slow, 99) / np.percentile(fast, 99)
    )
    assert estimate.beyond == min(stats.beyond(slow, 99), stats.beyond(fast, 99))
    same = stats.ratio(fast, fast, "gap", resamples=500)
    assert same.value == 1.0 and same.low < 1.0 < same.high  # resampled independently: not a point at 1


def test_the_format_shows_the_interval_and_the_tail_it_rests_on():
    assert stats.Estimate(41.23, 38.0, 45.9, 61).format(1) == "41.2 [38.0, 45.9] (n>q=61)"
    assert stats.Estimate(2.0, 1.5, 2.5, 9).format(2, unit="x") == "2.00x [1.50, 2.50] (n>q=9, thin)"
