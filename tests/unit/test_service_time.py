"""The injected Collage-CNN service time reproduces the published quantiles it is built from."""

from __future__ import annotations

import numpy as np
import pytest

from frontend.service_time import COLLAGE_QUANTILES_MS, ServiceTime


def test_collage_draws_match_the_published_quantiles():
    sampler = ServiceTime("collage", seed=3)
    draws_ms = np.array([sampler.draw_s() for _ in range(100_000)]) * 1e3
    published = dict((p, ms) for p, ms in COLLAGE_QUANTILES_MS)
    for p in (0.5, 0.9, 0.95, 0.99, 0.999):
        assert np.quantile(draws_ms, p) == pytest.approx(published[p], rel=0.03), p
    assert draws_ms.min() >= 83.6 and draws_ms.max() <= 1039.0
    assert np.mean((draws_ms > 275.0) & (draws_ms < 610.0)) < 1e-3  # the gap between the two modes stays empty
    assert np.mean(draws_ms >= 610.0) == pytest.approx(0.022, abs=0.003)  # the straggler mode: about 2%


def test_same_seed_same_draws_and_unknown_names_are_refused():
    a, b = ServiceTime("collage", seed=7), ServiceTime("collage", seed=7)
    assert [a.draw_s() for _ in range(5)] == [b.draw_s() for _ in range(5)]
    with pytest.raises(ValueError, match="known distributions"):
        ServiceTime("pareto")
