"""Benchmark summaries: percentiles, spread and accuracy computed over exactly the queries sent."""

from __future__ import annotations

import numpy as np
import pytest

from bench.compare import RoundFigures, SchemeRun, _headline, _per_round, _rotated
from bench.load import Record
from bench.report import markdown_table, summarize


def _records(latencies_ms, codes=None, labels=None, rebuilt=()):
    codes = codes or ["OK"] * len(latencies_ms)
    labels = labels if labels is not None else [0] * len(latencies_ms)
    return [
        Record(i, ms / 1e3, code, label if code == "OK" else -1, i in rebuilt)
        for i, (ms, code, label) in enumerate(zip(latencies_ms, codes, labels, strict=True))
    ]


def test_summary_percentiles_mean_and_stddev_cover_every_query_errors_included():
    latencies = np.arange(1, 1001, dtype=float)  # 1..1000 ms
    codes = ["OK"] * 999 + ["UNAVAILABLE"]
    s = summarize("x", _records(latencies, codes), np.zeros(1000, dtype=int))
    assert s.queries == 1000 and s.answered == 999 and s.errors == {"UNAVAILABLE": 1}
    assert s.p50_ms == pytest.approx(np.percentile(latencies, 50))
    assert s.p999_ms == pytest.approx(np.percentile(latencies, 99.9))
    assert s.max_ms == 1000.0
    assert s.mean_ms == pytest.approx(500.5)
    assert s.stddev_ms == pytest.approx(np.std(latencies))


def test_accuracy_counts_answers_only_and_reconstructed_ones_separately():
    truth = np.array([1, 2, 3, 4])
    records = _records([5, 5, 5, 5], labels=[1, 2, 0, 4], rebuilt={2, 3})
    s = summarize("x", records, truth)
    assert s.accuracy == pytest.approx(0.75)
    assert s.reconstructed == 2 and s.reconstructed_accuracy == pytest.approx(0.5)
    assert "| x | 4 | 4 | 0 |" in markdown_table([s])


def test_a_query_recorded_twice_is_refused():
    records = _records([1, 2])
    with pytest.raises(ValueError, match="recorded twice"):
        summarize("x", [records[0], records[0]], np.zeros(2, dtype=int))


def test_each_round_starts_at_another_scheme():
    names = ["a", "b", "c"]
    assert [_rotated(names, r) for r in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_a_rounds_figures_are_its_own_queries_percentiles_and_the_cpu_shared_over_them():
    latencies = np.arange(1, 101, dtype=float)
    figures = RoundFigures.of(_records(latencies), cpu_s=0.5)
    assert figures.p50_ms == pytest.approx(np.percentile(latencies, 50))
    assert figures.p999_ms == pytest.approx(np.percentile(latencies, 99.9))
    assert figures.cpu_ms_per_query == pytest.approx(5.0)  # 500 ms over 100 queries


def test_the_report_prints_every_round_of_every_scheme_and_nothing_for_one_round():
    def run(name: str, rounds: tuple[RoundFigures, ...]) -> SchemeRun:
        summary = summarize(name, _records([1.0, 2.0]), np.zeros(2, dtype=int))
        return SchemeRun(summary, triton_calls=2, fault_events=0, rounds=rounds)

    slow, fast = RoundFigures(19.8, 140.4, 7.0), RoundFigures(4.7, 28.7, 5.1)
    lines = _per_round([run("none", (fast, slow)), run("hedge2", (slow, fast))])
    assert "| scheme | round 1 | round 2 |" in lines
    assert "| none | 4.7 / 28.7, 5.10 | 19.8 / 140.4, 7.00 |" in lines
    assert "| hedge2 | 19.8 / 140.4, 7.00 | 4.7 / 28.7, 5.10 |" in lines
    assert _per_round([run("none", (fast,))]) == []


def test_overview_rates_each_scheme_against_equal_resource_replication_in_the_same_run():
    from bench.overview import gap_table

    def run(name, p50, p999):
        return {"name": name, "p50_ms": p50, "p999_ms": p999}

    reports = {"stalls": {"runs": [run("equal", 5.0, 85.0), run("parm", 6.0, 26.0), run("hedge2", 5.0, 45.0)]}}
    table = gap_table(reports).splitlines()
    assert table[0].startswith("| profile (file) | none | equal | hedge2")
    row = table[2]
    assert row.startswith("| stalls | – | 80.0 | 40.0 (2.00×) |")
    assert "| 20.0 (4.00×) |" in row  # parm: 80 / 20


def test_cpu_breakdown_table_keeps_busy_processes_and_totals_each_scheme():
    from bench.cpu_breakdown import markdown

    table = markdown(
        {"none": {"frontend": 2.0, "idle": 0.0, "triton": 1.0}, "parm": {"frontend": 3.0, "idle": 0.0, "triton": 2.5}}
    )
    assert table.splitlines() == [
        "| process | none | parm |",
        "|---|---|---|",
        "| frontend | 2.00 | 3.00 |",
        "| triton | 1.00 | 2.50 |",
        "| total | 3.00 | 5.50 |",
    ]


def test_the_table_shows_each_tail_figure_with_its_interval_and_the_tail_it_rests_on():
    latencies = np.arange(1, 1001, dtype=float)  # 10 queries beyond p99, 1 beyond p99.9
    s = summarize("x", _records(latencies), np.zeros(1000, dtype=int), resamples=200)
    assert s.intervals["p99"].value == pytest.approx(s.p99_ms) and s.intervals["p99"].beyond == 10
    cells = markdown_table([s]).splitlines()[2].split(" | ")
    assert cells[4] == s.intervals["p50"].format(2) and cells[4].endswith("(n>q=500)")
    assert cells[6] == s.intervals["p99"].format(2) and cells[6].endswith("(n>q=10, thin)")
    assert cells[7] == s.intervals["p99.9"].format(2)


def test_each_headline_ratio_carries_its_interval():
    rng = np.random.default_rng(0)
    fast = rng.exponential(size=3000)

    def run(name: str, latencies_ms: np.ndarray) -> SchemeRun:
        records = _records(list(latencies_ms))
        return SchemeRun(
            summarize(name, records, np.zeros(3000, dtype=int), resamples=50), 3000, 0, latencies_ms=latencies_ms
        )

    lines = _headline({"hedge2": run("hedge2", 2 * fast), "parm": run("parm", fast)})
    (line,) = [line for line in lines if line.startswith("- hedge2")]
    ratio = line.split("-> ")[1].split(";")[0]
    low, high = (float(v) for v in ratio.split("[")[1].split("]")[0].split(", "))
    assert ratio.startswith("2.00x [") and low < 2.0 < high and "(n>q=3, thin)" in ratio
