"""The short-deadline phase's arithmetic, on synthetic timelines: answers counted in windows by when their
query was sent, and the time from a fault's end until the OK share is back to its level before the fault."""

from __future__ import annotations

import pytest

from bench.chaos_run import Recovery, RecoveryRule, ShortDeadlines, recovery, windows

RULE = RecoveryRule(window_s=0.25, baseline_s=2.0, tolerance=0.9, stay_s=1.0, min_baseline=0.5)


def _timeline(end_s: float, code_at, rate: float = 40.0) -> list[tuple[float, str]]:
    """One query every 1 / rate s from 0 to ``end_s``, its status ``code_at(t)``."""
    return [(n / rate, code_at(n / rate)) for n in range(int(end_s * rate))]


def test_answers_are_counted_by_status_in_whole_windows_from_the_start_given():
    answers = [(0.0, "OK"), (0.1, "OK"), (0.3, "UNAVAILABLE"), (0.49, "OK"), (0.5, "OK"), (0.9, "OK")]
    found = windows(answers, 0.25, 0.0, 0.75)  # the answer at 0.9 is past the last whole window
    assert [(w.start_s, w.counts) for w in found] == [
        (0.0, {"OK": 2}),
        (0.25, {"OK": 1, "UNAVAILABLE": 1}),
        (0.5, {"OK": 1}),
    ]
    assert [w.ok_share for w in found] == [1.0, 0.5, 1.0]
    assert windows(answers, 0.25, 1.0, 1.25)[0].ok_share is None  # no query sent in it


def test_a_timeline_that_recovers_gives_the_time_from_the_faults_end_to_its_first_recovered_window():
    # OK throughout but for the stall (3-4 s) and the 0.5 s after it, when every query is refused.
    answers = _timeline(10.0, lambda t: "RESOURCE_EXHAUSTED" if 3.0 <= t < 4.5 else "OK")
    r = recovery(answers, began_s=3.0, ended_s=4.0, end_s=10.0, rule=RULE)
    assert r == Recovery(baseline=1.0, level=0.9, recovery_s=0.5, left_s=6.0)
    assert r.verdict() == "500 ms"


def test_a_window_back_at_the_level_but_not_staying_there_is_not_the_recovery():
    def code_at(t: float) -> str:
        if 3.0 <= t < 4.25 or 4.5 <= t < 5.0:  # back for one window at 4.25, then refused again
            return "RESOURCE_EXHAUSTED"
        return "OK"

    r = recovery(_timeline(10.0, code_at), began_s=3.0, ended_s=4.0, end_s=10.0, rule=RULE)
    assert r.recovery_s == 1.0


def test_a_partial_recovery_counts_against_the_baseline_before_the_fault():
    def code_at(failing_after: int):  # 80 queries a second, 20 a window: 4 in 20 fail before the fault
        return lambda t: "X" if 3.0 <= t < 4.0 or round(t * 80) % 20 < (4 if t < 3.0 else failing_after) else "OK"

    r = recovery(_timeline(10.0, code_at(5), rate=80.0), began_s=3.0, ended_s=4.0, end_s=10.0, rule=RULE)
    assert r.baseline == pytest.approx(0.8) and r.level == pytest.approx(0.72)
    assert r.recovery_s == 0.0  # 75% after it: within 90% of the 80% before
    r = recovery(_timeline(10.0, code_at(6), rate=80.0), began_s=3.0, ended_s=4.0, end_s=10.0, rule=RULE)
    assert r.recovery_s is None  # 70% after it: not


def test_a_timeline_refused_for_good_after_the_fault_never_recovers():
    answers = _timeline(10.0, lambda t: "OK" if t < 3.0 else "RESOURCE_EXHAUSTED")
    r = recovery(answers, began_s=3.0, ended_s=4.0, end_s=10.0, rule=RULE)
    assert (r.baseline, r.recovery_s, r.left_s) == (1.0, None, 6.0)
    assert r.verdict() == "never (6.0 s of the run left)"


def test_a_fault_ending_less_than_the_stay_before_the_run_ends_cannot_be_seen_to_recover():
    answers = _timeline(10.0, lambda t: "UNAVAILABLE" if 8.0 <= t < 9.4 else "OK")
    r = recovery(answers, began_s=8.0, ended_s=9.4, end_s=10.0, rule=RULE)
    assert r.recovery_s is None and r.left_s == 0.6
    assert r.verdict() == "never (0.6 s of the run left)"


def test_a_fault_after_one_never_recovered_from_has_no_baseline_rather_than_an_instant_recovery():
    answers = _timeline(16.0, lambda t: "OK" if t < 3.0 else "RESOURCE_EXHAUSTED")
    r = recovery(answers, began_s=9.0, ended_s=10.0, end_s=16.0, rule=RULE)
    assert (r.baseline, r.level, r.recovery_s) == (0.0, None, None)
    assert r.verdict() == "no baseline (OK share 0% before the fault)"


def test_the_phase_stalls_every_triton_leaving_half_a_period_after_each_to_recover_in():
    phase = ShortDeadlines("m", None, duration_s=20.0, stall_s=1.0, every_s=6.0)  # type: ignore[arg-type]
    assert [(f.at_s, f.kind, f.hold_s) for f in phase.stalls()] == [
        (3.0, "stall_tritons", 1.0),
        (9.0, "stall_tritons", 1.0),
        (15.0, "stall_tritons", 1.0),
    ]
    assert [f.at_s for f in ShortDeadlines("m", None, duration_s=8.0).stalls()] == [3.0]  # type: ignore[arg-type]
