"""A sliding window of recent deployed-model latencies, for adaptive hedging delays."""

from __future__ import annotations

from collections import deque

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
