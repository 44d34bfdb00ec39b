"""Dispatch policies (single, replicate, hedge) against a fake pool: first success wins, losers finish."""

import asyncio

import numpy as np
import pytest

from frontend.config import Dispatch, FaultPlan, parse_route
from frontend.dispatch import Dispatcher
from frontend.workers import Fault, FaultInjector, ModelSignature, WorkerError

SIG = ModelSignature("input", "logits", (1,), np.dtype("float32"))


class FakePool:
    """Instance i answers after delays[i] seconds with [i]; ``failing`` instances raise."""

    def __init__(self, delays, failing=()):
        self.delays, self.failing = delays, set(failing)
        self.calls, self.finished, self._next = [], [], 0

    def pick(self, avoid=None):
        index = self._next % len(self.delays)
        self._next += 1
        if index == avoid and len(self.delays) > 1:
            return self.pick()
        return index

    async def infer(self, model, batch, signature, fault=None, instance=None):
        self.calls.append(instance)
        await asyncio.sleep(self.delays[instance])
        self.finished.append(instance)
        if instance in self.failing or (fault is not None and fault.fail):
            raise WorkerError(f"instance {instance} failed")
        return np.array([[instance]], dtype=np.float32)


def _dispatcher(pool, policy):
    return Dispatcher(pool, policy, FaultInjector(FaultPlan()), cancel_losers=False)


async def test_single_sends_one_call():
    pool = FakePool([0.0, 0.0])
    out = await _dispatcher(pool, Dispatch()).call("m", np.zeros((1, 1)), SIG, None)
    assert out[0, 0] == 0 and pool.calls == [0]


async def test_replication_returns_the_fastest_copy_and_lets_the_loser_finish():
    pool = FakePool([0.2, 0.01])
    out = await _dispatcher(pool, Dispatch("replicate")).call("m", np.zeros((1, 1)), SIG, None)
    assert out[0, 0] == 1 and sorted(pool.calls) == [0, 1]
    await asyncio.sleep(0.3)
    assert sorted(pool.finished) == [0, 1]  # never cancelled


async def test_a_hedge_is_sent_only_after_the_delay():
    pool = FakePool([0.005, 0.005])
    await _dispatcher(pool, Dispatch("hedge", hedge_delay_ms=50)).call("m", np.zeros((1, 1)), SIG, None)
    assert pool.calls == [0]  # answered before the hedge delay: no second copy
    slow = FakePool([0.5, 0.01])
    out = await _dispatcher(slow, Dispatch("hedge", hedge_delay_ms=20)).call("m", np.zeros((1, 1)), SIG, None)
    assert out[0, 0] == 1 and slow.calls == [0, 1]


async def test_a_failed_first_copy_is_hedged_at_once_and_all_failing_raises():
    pool = FakePool([0.0, 0.0])
    out = await _dispatcher(pool, Dispatch("hedge", hedge_delay_ms=1000)).call(
        "m", np.zeros((1, 1)), SIG, Fault(fail=True)
    )
    assert out[0, 0] == 1
    with pytest.raises(WorkerError):
        await _dispatcher(FakePool([0.0, 0.0], failing={0, 1}), Dispatch("replicate")).call(
            "m", np.zeros((1, 1)), SIG, None
        )


def test_routes_parse_baselines_and_reject_nonsense():
    assert parse_route("m=hedge:delay_ms=8").dispatch == Dispatch("hedge", hedge_delay_ms=8.0)
    assert parse_route("m=hedge").dispatch.hedge_delay_ms is None
    assert parse_route("m=replicate:copies=3").dispatch.copies == 3
    assert not parse_route("m=none").coded
    route = parse_route("mnist_cnn=parm:k=4,encoder=concat")
    assert route.coded and route.k == 4 and route.parity_model == "mnist_parm_concat_k4"
    route = parse_route("mnist_cnn=approxifer:k=8,s=2")
    assert route.coded and route.parity_model == "" and route.param_dict == {"s": "2"}
    for bad in ("m", "m=hedge:copies=2", "m=replicate:copies=1", "m=parm:k=3,encoder=concat", "m=zzz"):
        with pytest.raises(ValueError, match="route"):
            parse_route(bad)
