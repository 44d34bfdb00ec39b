"""Collage-CNN's service time, as the local Triton emulates it (``*=collage``: bench.faults' ``collage``
profile, ``bench.demo --service-time``), reproduces the published quantiles it is built from, out to p99.9."""

from __future__ import annotations

import random

import numpy as np
import pytest

from bench.faults import SERVICE_TIMES
from triton_local.service_time import (
    COLLAGE_QUANTILES_MS,
    TABLES,
    ServiceTimeError,
    interpolate,
    law_for,
    parse,
    parse_law,
)


def test_collage_draws_match_the_published_quantiles_out_to_the_tail():
    law = law_for(parse(SERVICE_TIMES["collage"]), "any_model")  # every model of the profile draws it
    assert law == parse_law("collage")
    rng = random.Random(3)
    draws_ms = np.array([law.draw_ms(rng) for _ in range(100_000)])
    published = dict(COLLAGE_QUANTILES_MS)
    for p in (0.99, 0.999):  # 1,000 and 100 draws beyond them
        assert np.quantile(draws_ms, p) == pytest.approx(published[p], rel=0.03), p
    # Both ends of the published table are reached: a draw below its value at 10 / n, and one above its value at
    # 1 - 10 / n, each missed by n draws with chance (1 - 10 / n)^n, about e^-10.
    edge = 10 / len(draws_ms)
    table = TABLES["collage"]
    assert draws_ms.min() <= interpolate(table, edge) and draws_ms.max() >= interpolate(table, 1 - edge)


def test_an_unknown_law_is_refused_with_the_known_ones_named():
    with pytest.raises(ServiceTimeError, match="unknown law 'pareto'; known: collage, fixed, lognormal, samples"):
        parse_law("pareto")
