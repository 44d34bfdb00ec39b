"""When a route stops waiting: its straggler deadline and its fill timeout, fixed or adaptive.

Fixed (the default): ``--straggler-timeout-ms`` and ``--fill-timeout-ms``. Adaptive:

- straggler deadline = the ``--straggler-quantile`` of the route's recent data-call latencies, clamped
  to [``--straggler-floor-ms``, ``--straggler-timeout-ms``]: decode when a call is later than that share
  of its peers (the coding twin of hedging's p95 delay), never sooner than the floor;
- fill timeout (``--adaptive-fill``) = the smaller of the time left for the coded outputs to arrive
  before the straggler deadline (deadline - median encode - median coded call) and twice the time the
  arrival rate says k - 1 more queries take, but never less than that time itself, clamped to
  [``--fill-floor-ms``, ``--fill-timeout-ms``]: a group waits for partners only while its parity can
  still come back in time, and always long enough that it usually fills. Without that lower bound,
  slow coded calls shorten the fill, groups are sealed part empty, each still costs a whole coded call,
  the coded instances slow down further, and the loop ends with one query per group (measured: ParM
  k = 4 on the testbed, its parity instances 82-94% busy, no answer rebuilt).

Optional, off by default: a second deadline, ``--resend-after-ms``, after which a query whose own
output is still missing and which its group cannot rebuild yet is sent once more to another instance
(Collage-CNN's fallback: its master resends a slow image only when the collage is slow too).

A coded route with ``decode=eager`` (:func:`frontend.core.routes.parse_route`) has no straggler deadline: its
groups decode an absent output as soon as the arrivals can rebuild it (:mod:`frontend.core.groups`).

What the adaptive deadlines (and hedging's adaptive delay) read is a :class:`LatencyWindow` of recent calls.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


class LatencyWindow:
    """Keeps the last ``size`` latencies; quantiles are recomputed every ``refresh`` samples so the
    hot path pays O(1) per query."""

    def __init__(self, size: int = 2000, refresh: int = 100, floor_s: float = 0.001, initial_s: float = 0.01) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._refresh = refresh
        self._since_refresh = 0
        self._floor_s = floor_s
        self._cached: dict[float, float] = {}
        self._initial_s = initial_s

    def record(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._since_refresh += 1
        if self._since_refresh >= self._refresh:
            self._since_refresh = 0
            self._cached.clear()

    def quantile(self, q: float) -> float:
        """The q-quantile of the window (``initial_s`` until enough samples), never below the floor."""
        if len(self._samples) < self._refresh:
            return self._initial_s
        if q not in self._cached:
            self._cached[q] = max(self._floor_s, float(np.quantile(np.fromiter(self._samples, float), q)))
        return self._cached[q]


@dataclass(frozen=True)
class DeadlinePolicy:
    straggler_ms: float = 20.0  # the fixed deadline; with a quantile, its cap
    straggler_quantile: float | None = None  # None: fixed
    straggler_floor_ms: float = 1.0
    fill_ms: float = 5.0  # the fixed fill timeout; adaptive, its cap
    adaptive_fill: bool = False
    fill_floor_ms: float = 0.5
    resend_ms: float | None = None  # Collage's fallback: resend a query not rebuildable by then; None: off

    def __post_init__(self) -> None:
        for name in ("straggler_ms", "straggler_floor_ms", "fill_ms", "fill_floor_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.resend_ms is not None and self.resend_ms <= 0:
            raise ValueError(f"resend_ms must be positive (or unset: off), got {self.resend_ms}")
        if self.straggler_quantile is not None and not 0 < self.straggler_quantile < 1:
            raise ValueError(f"straggler_quantile must be in (0, 1), got {self.straggler_quantile}")
        if self.straggler_floor_ms > self.straggler_ms or self.fill_floor_ms > self.fill_ms:
            raise ValueError("a floor must not exceed its cap (straggler_floor_ms, fill_floor_ms)")


class RouteDeadlines:
    """One route's deadlines now, from the latencies and arrivals it has seen."""

    ARRIVAL_WEIGHT = 0.05  # of each new inter-arrival gap in the moving average

    def __init__(self, policy: DeadlinePolicy, data_latency: LatencyWindow, group_size: int) -> None:
        self.policy = policy
        self._data = data_latency
        self.encode_latency = LatencyWindow(floor_s=0.0, initial_s=0.001)
        self.coded_latency = LatencyWindow(floor_s=0.0, initial_s=0.001)
        self._others = max(0, group_size - 1)
        self._last_arrival: float | None = None
        self._gap_s: float | None = None

    def arrival(self, now: float) -> None:
        if self._last_arrival is not None:
            gap = now - self._last_arrival
            self._gap_s = gap if self._gap_s is None else self._gap_s + self.ARRIVAL_WEIGHT * (gap - self._gap_s)
        self._last_arrival = now

    def straggler_s(self) -> float:
        p = self.policy
        if p.straggler_quantile is None:
            return p.straggler_ms / 1e3
        return min(p.straggler_ms / 1e3, max(p.straggler_floor_ms / 1e3, self._data.quantile(p.straggler_quantile)))

    def resend_s(self) -> float | None:
        return None if self.policy.resend_ms is None else self.policy.resend_ms / 1e3

    def fill_s(self) -> float:
        p = self.policy
        if not p.adaptive_fill:
            return p.fill_ms / 1e3
        in_time = self.straggler_s() - self.encode_latency.quantile(0.5) - self.coded_latency.quantile(0.5)
        if self._gap_s is None:
            fill = in_time
        else:
            to_fill = self._others * self._gap_s  # how long k - 1 more queries take at the arrival rate
            fill = max(to_fill, min(in_time, 2 * to_fill))
        return min(p.fill_ms / 1e3, max(p.fill_floor_ms / 1e3, fill))
