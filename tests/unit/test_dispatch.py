"""Dispatch policies (single, replicate, hedge) against a fake pool: first success wins, losers finish;
routes parse into schemes and their models."""

import asyncio

import numpy as np
import pytest

from frontend.completion import run_then
from frontend.config import Dispatch, parse_route
from frontend.dispatch import Dispatcher
from frontend.placement import Placer
from frontend.workers import CallInfo, ModelSignature, WorkerError

SIG = ModelSignature("input", "logits", (1,), np.dtype("float32"))


class FakePool:
    """Instance i answers after delays[i] seconds with [i]; ``failing`` instances raise."""

    def __init__(self, delays, failing=()):
        self.delays, self.failing = delays, set(failing)
        self.calls, self.finished = [], []

    def send(self, call, batch, signature, done):  # the Pool protocol's way in: a task around infer
        run_then(self.infer(call, batch, signature), done)

    async def infer(self, call, batch, signature):
        self.calls.append(call.instance)
        await asyncio.sleep(self.delays[call.instance])
        self.finished.append(call.instance)
        if call.instance in self.failing:
            raise WorkerError(f"instance {call.instance} failed")
        return np.array([[call.instance]], dtype=np.float32)


def _dispatcher(pool, policy):
    return Dispatcher(pool, Placer({"m": tuple(range(len(pool.delays)))}), policy)


async def _call(dispatcher, kind="data"):
    return await dispatcher.call(CallInfo("m", 0, kind), np.zeros((1, 1)), SIG)


async def test_single_sends_one_call():
    pool = FakePool([0.0, 0.0])
    out = await _call(_dispatcher(pool, Dispatch()))
    assert out[0, 0] == 0 and pool.calls == [0]


async def test_replication_returns_the_fastest_copy_and_lets_the_loser_finish():
    pool = FakePool([0.2, 0.01])
    out = await _call(_dispatcher(pool, Dispatch("replicate")))
    assert out[0, 0] == 1 and sorted(pool.calls) == [0, 1]
    await asyncio.sleep(0.3)
    assert sorted(pool.finished) == [0, 1]  # never cancelled


async def test_a_hedge_is_sent_only_after_the_delay():
    pool = FakePool([0.005, 0.005])
    await _call(_dispatcher(pool, Dispatch("hedge", hedge_delay_ms=50)))
    assert pool.calls == [0]  # answered before the hedge delay: no second copy
    slow = FakePool([0.5, 0.01])
    out = await _call(_dispatcher(slow, Dispatch("hedge", hedge_delay_ms=20)))
    assert out[0, 0] == 1 and slow.calls == [0, 1]


async def test_a_failed_first_copy_is_hedged_at_once_and_all_failing_raises():
    pool = FakePool([0.0, 0.0], failing={0})
    out = await _call(_dispatcher(pool, Dispatch("hedge", hedge_delay_ms=1000)))
    assert out[0, 0] == 1
    with pytest.raises(WorkerError):
        await _call(_dispatcher(FakePool([0.0, 0.0], failing={0, 1}), Dispatch("replicate")))


async def test_coded_calls_are_sent_once_whatever_the_policy():
    pool = FakePool([0.0, 0.0, 0.0])
    await _call(_dispatcher(pool, Dispatch("replicate", copies=3)), kind="coded")
    assert pool.calls == [0]


async def test_copies_go_to_instances_the_call_does_not_use():
    pool = FakePool([0.0, 0.0, 0.0])
    await _call(_dispatcher(pool, Dispatch("replicate", copies=3)))
    await asyncio.sleep(0.01)
    assert sorted(pool.calls) == [0, 1, 2]


def test_routes_parse_baselines_and_reject_nonsense():
    assert parse_route("m=hedge:delay_ms=8").dispatch == Dispatch("hedge", hedge_delay_ms=8.0)
    assert parse_route("m=hedge").dispatch.hedge_delay_ms is None
    assert parse_route("m=replicate:copies=3").dispatch.copies == 3
    assert not parse_route("m=none").coded
    route = parse_route("mnist_cnn=parm:k=4,encoder=concat")
    assert route.coded and route.k == 4 and route.parity_model == "mnist_parm_concat_k4"
    route = parse_route("mnist_cnn=approxifer:k=8,s=2")
    assert route.coded and route.parity_model == "" and route.param_dict == {"s": "2"}
    assert route.models == {"deployed": "mnist_cnn"} and len(route.code.coded_slots) == 10  # N = K + S
    assert parse_route("m=parm:k=2,parity_model=x").models == {"deployed": "m", "parity": "x"}
    bad_routes = ("m", "m=hedge:copies=2", "m=replicate:copies=1", "m=parm:k=5,encoder=concat", "m=zzz", "m=parm:x=1")
    for bad in bad_routes:
        with pytest.raises(ValueError, match="route"):
            parse_route(bad)
