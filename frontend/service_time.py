"""Injected service times (demos and benchmarks only): every Triton call takes at least a drawn latency.

Collage-CNN's published straggler recipe: after real inference each worker sleeps until a latency drawn
from an empirical distribution has passed. The laws live in :mod:`triton_local.service_time`, where the
local Triton backend draws them inside the instance (so requests queue behind a busy one); this module
keeps the frontend-side draw, which sleeps after Triton has answered.
"""

from __future__ import annotations

import random

from triton_local.service_time import COLLAGE_QUANTILES_MS, TABLES, interpolate

__all__ = ["COLLAGE_QUANTILES_MS", "DISTRIBUTIONS", "ServiceTime"]

DISTRIBUTIONS = TABLES


class ServiceTime:
    """Draws per-call latency floors from a named distribution (seeded, reproducible)."""

    def __init__(self, name: str, seed: int = 0) -> None:
        if name not in DISTRIBUTIONS:
            raise ValueError(f"service time {name!r}: known distributions are {sorted(DISTRIBUTIONS)}")
        self.name = name
        self._table = DISTRIBUTIONS[name]
        self._rng = random.Random(seed)

    def draw_s(self) -> float:
        return interpolate(self._table, self._rng.random()) / 1e3
