"""Injected service times (demos and benchmarks only): every Triton call takes at least a drawn latency.

Collage-CNN's published straggler recipe (../shared/reference/methods.md §2.4): after real inference
each worker sleeps until a latency drawn from an empirical distribution has passed. The artifact's
137,594 samples are not here, only their published quantiles, so the draw is a piecewise-linear
quantile function through them; the empty gap between its two modes (about 98% of samples in
84-275 ms, about 2% in 610-800 ms) is kept empty.
"""

from __future__ import annotations

import random

import numpy as np

# (cumulative probability, latency in ms)
COLLAGE_QUANTILES_MS: tuple[tuple[float, float], ...] = (
    (0.0, 83.6),
    (0.5, 138.2),
    (0.9, 189.0),
    (0.95, 215.0),
    (0.975, 263.0),
    (0.978, 275.0),  # top of the main mode
    (0.9781, 610.0),  # bottom of the straggler mode
    (0.98, 627.0),
    (0.99, 702.0),
    (0.999, 770.0),
    (1.0, 1039.0),
)

DISTRIBUTIONS: dict[str, tuple[tuple[float, float], ...]] = {"collage": COLLAGE_QUANTILES_MS}


class ServiceTime:
    """Draws per-call latency floors from a named distribution (seeded, reproducible)."""

    def __init__(self, name: str, seed: int = 0) -> None:
        if name not in DISTRIBUTIONS:
            raise ValueError(f"service time {name!r}: known distributions are {sorted(DISTRIBUTIONS)}")
        table = np.array(DISTRIBUTIONS[name])
        self.name = name
        self._probabilities, self._ms = table[:, 0], table[:, 1]
        self._rng = random.Random(seed)

    def draw_s(self) -> float:
        return float(np.interp(self._rng.random(), self._probabilities, self._ms)) / 1e3
