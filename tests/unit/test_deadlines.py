"""Straggler deadlines and fill timeouts, fixed and adaptive (one class, fed latencies and arrivals)."""

from __future__ import annotations

import pytest

from frontend.core.deadlines import DeadlinePolicy, LatencyWindow, RouteDeadlines


def _deadlines(policy: DeadlinePolicy, latencies_ms=(), group_size=2) -> RouteDeadlines:
    window = LatencyWindow(refresh=10)
    for ms in latencies_ms:
        window.record(ms / 1e3)
    return RouteDeadlines(policy, window, group_size)


def test_fixed_deadlines_are_what_was_set():
    d = _deadlines(DeadlinePolicy(straggler_ms=8, fill_ms=5), latencies_ms=[1] * 100)
    assert (d.straggler_s(), d.fill_s()) == (0.008, 0.005)


def test_the_adaptive_straggler_deadline_follows_the_quantile_between_floor_and_cap():
    policy = DeadlinePolicy(straggler_ms=20, straggler_quantile=0.9, straggler_floor_ms=2)
    assert _deadlines(policy, [3] * 80 + [6] * 20).straggler_s() == pytest.approx(0.006, abs=3e-4)
    assert _deadlines(policy, [0.5] * 100).straggler_s() == 0.002  # the floor
    assert _deadlines(policy, [50] * 100).straggler_s() == 0.020  # the cap


def test_the_adaptive_fill_timeout_leaves_time_for_the_parity_and_follows_the_arrival_rate():
    policy = DeadlinePolicy(straggler_ms=20, straggler_quantile=0.5, fill_ms=5, adaptive_fill=True, fill_floor_ms=0.5)
    d = _deadlines(policy, [4] * 100)  # deadline 4 ms
    for _ in range(100):
        d.encode_latency.record(0.0005)
        d.coded_latency.record(0.0015)
    assert d.fill_s() == pytest.approx(0.002)  # 4 - 0.5 - 1.5 ms: the parity still comes back in time
    for t in range(50):
        d.arrival(t * 0.0005)  # a query every 0.5 ms: a partner is overdue after 2 x 0.5 ms
    assert d.fill_s() == pytest.approx(0.001)


def test_slow_coded_calls_never_shorten_the_fill_below_the_time_a_group_takes_to_fill():
    policy = DeadlinePolicy(straggler_ms=20, straggler_quantile=0.5, fill_ms=50, adaptive_fill=True, fill_floor_ms=0.5)
    d = _deadlines(policy, [4] * 100, group_size=4)  # deadline 4 ms; 3 partners to wait for
    for t in range(50):
        d.arrival(t * 0.002)  # a query every 2 ms: 3 more take 6 ms
    d.encode_latency.record(0.0005)
    for _ in range(100):
        d.coded_latency.record(0.010)  # the parity comes back after the deadline whatever the fill
    assert d.fill_s() == pytest.approx(0.006)  # not the 0.5 ms floor: groups sealed part empty cost more
    for _ in range(100):
        d.coded_latency.record(0.0005)
    assert d.fill_s() == pytest.approx(0.006)  # in time (3 ms left) is below 6 ms: still the time to fill
    policy = DeadlinePolicy(straggler_ms=40, straggler_quantile=0.5, fill_ms=50, adaptive_fill=True, fill_floor_ms=0.5)
    d = _deadlines(policy, [40] * 100, group_size=4)
    for t in range(50):
        d.arrival(t * 0.002)
    assert d.fill_s() == pytest.approx(0.012, rel=0.1)  # time to spare: twice the time to fill


def test_bad_policies_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="straggler_quantile"):
        DeadlinePolicy(straggler_quantile=1.5)
    with pytest.raises(ValueError, match="floor"):
        DeadlinePolicy(straggler_ms=1, straggler_floor_ms=2)
