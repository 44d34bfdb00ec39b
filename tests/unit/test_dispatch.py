"""Dispatch policies (single, replicate, hedge) against a fake pool: first success wins, losers finish;
a hedging budget caps the share of calls hedged; routes parse into schemes and their models."""

import asyncio

import numpy as np
import pytest
from prometheus_client import REGISTRY

from frontend.core.calls import CallInfo, Cancelled, ModelSignature, WorkerError
from frontend.core.completion import run_then
from frontend.core.placement import Placer
from frontend.core.routes import Dispatch, parse_route
from frontend.dataplane.dispatch import BUDGET_WINDOW, Dispatcher

SIG = ModelSignature("input", "logits", (1,), np.dtype("float32"))


class FakePool:
    """Instance i answers after delays[i] seconds with [i]; ``failing`` instances raise."""

    def __init__(self, delays, failing=()):
        self.delays, self.failing = delays, set(failing)
        self.calls, self.finished = [], []
        self._finishing = asyncio.Condition()

    def send(self, call, batch, signature, done):  # the Pool protocol's way in: a task around infer
        run_then(self.infer(call, batch, signature), done)

    async def until_finished(self, calls, timeout_s=5.0):
        """Wait (bounded) until ``calls`` calls have finished."""
        async with asyncio.timeout(timeout_s), self._finishing:
            await self._finishing.wait_for(lambda: len(self.finished) >= calls)

    async def infer(self, call, batch, signature):
        self.calls.append(call.instance)
        await asyncio.sleep(self.delays[call.instance])
        self.finished.append(call.instance)
        async with self._finishing:
            self._finishing.notify_all()
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
    await pool.until_finished(2)
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


def _counted(name, model="m"):
    return REGISTRY.get_sample_value(f"codedserve_{name}_total", {"model": model}) or 0.0


async def _hedged_calls(dispatcher, pool, n):
    """``n`` sequential calls; how many hedges the pool saw and the metrics counted, sent and withheld."""
    before = _counted("hedged_calls"), _counted("hedges_withheld")
    for _ in range(n):
        await _call(dispatcher)
    hedges = pool.calls.count(1)
    return hedges, _counted("hedged_calls") - before[0], _counted("hedges_withheld") - before[1]


async def test_without_a_budget_every_slow_call_is_hedged():
    pool = FakePool([0.01, 0.0])  # the first copy is always later than the 1 ms delay
    hedges, sent, withheld = await _hedged_calls(_dispatcher(pool, Dispatch("hedge", hedge_delay_ms=1)), pool, 100)
    assert hedges == sent == 100 and withheld == 0


async def test_a_budget_caps_hedges_at_its_share_of_calls_and_counts_the_rest_withheld():
    pool = FakePool([0.01, 0.0])
    dispatcher = _dispatcher(pool, Dispatch("hedge", hedge_delay_ms=1, hedge_budget=0.05))
    hedges, sent, withheld = await _hedged_calls(dispatcher, pool, 200)
    assert 0.05 * 200 - 1 <= hedges <= 0.05 * 200 + 1  # the budget is spent, never overspent
    assert sent == hedges and withheld == 200 - hedges


async def test_a_quiet_stretch_saves_at_most_the_budget_of_its_last_calls():
    pool = FakePool([0.0, 0.0])
    dispatcher = _dispatcher(pool, Dispatch("hedge", hedge_delay_ms=30, hedge_budget=0.05))
    for _ in range(1000):  # fast calls: no hedge, each pays into the budget
        await _call(dispatcher)
    assert pool.calls == [0] * 1000
    pool.delays[0] = 0.1  # then a burst of 40 concurrent stragglers
    await asyncio.gather(*(_call(dispatcher) for _ in range(40)))
    assert pool.calls.count(1) == BUDGET_WINDOW * 0.05  # what 100 calls paid for, not 1000


async def test_a_withheld_hedge_after_a_failure_fails_the_call():
    pool = FakePool([0.0, 0.0], failing={0})
    dispatcher = _dispatcher(pool, Dispatch("hedge", hedge_delay_ms=1000, hedge_budget=0.05))
    assert (await _call(dispatcher))[0, 0] == 1  # the budget's first token hedges the failure
    with pytest.raises(WorkerError):
        await _call(dispatcher)  # no token left: the error, not a hang
    assert pool.calls == [0, 1, 0]


async def test_the_adaptive_delay_is_the_chosen_quantile_of_recent_calls():
    latencies = np.arange(1, 101) / 1e3  # 1..100 ms
    for q, policy in (
        (0.5, Dispatch("hedge", hedge_quantile=0.5)),
        (0.9, Dispatch("hedge", hedge_quantile=0.9)),
        (0.99, Dispatch("hedge", hedge_quantile=0.99)),
        (0.95, Dispatch("hedge")),
    ):
        dispatcher = _dispatcher(FakePool([0.0, 0.0]), policy)
        for seconds in latencies:
            dispatcher.latency.record(seconds)
        assert dispatcher.hedge_delay_s() == pytest.approx(np.quantile(latencies, q)), q


async def test_a_lower_delay_quantile_hedges_a_call_the_default_waits_for():
    answered_by = {}
    for policy in (Dispatch("hedge", hedge_quantile=0.5), Dispatch("hedge")):
        pool = FakePool([0.1, 0.0])  # the first copy takes 100 ms
        dispatcher = _dispatcher(pool, policy)
        for seconds in [0.01] * 60 + [0.3] * 40:  # p50 10 ms, p95 300 ms
            dispatcher.latency.record(seconds)
        answered_by[policy.hedge_quantile] = (await _call(dispatcher))[0, 0]
    assert answered_by == {0.5: 1, 0.95: 0}  # hedged after 10 ms; at p95 the first copy answers first


def test_hedge_routes_parse_budget_and_delay_quantile():
    assert parse_route("m=hedge").dispatch == Dispatch("hedge", hedge_quantile=0.95, hedge_budget=None)
    route = parse_route("m=hedge:delay_q=0.9,budget=0.05")
    assert route.dispatch == Dispatch("hedge", hedge_quantile=0.9, hedge_budget=0.05)
    assert parse_route("m=hedge:delay_ms=8,budget=0.1").dispatch == Dispatch(
        "hedge", hedge_delay_ms=8.0, hedge_budget=0.1
    )
    bad = ("m=hedge:delay_q=0.3", "m=hedge:delay_q=0.999", "m=hedge:budget=0", "m=hedge:budget=2")
    for text in (*bad, "m=hedge:delay_ms=8,delay_q=0.9", "m=replicate:budget=0.1"):
        with pytest.raises(ValueError, match="route"):
            parse_route(text)


def test_coded_routes_parse_the_decode_policy():
    assert parse_route("m=parm:k=2").decode == "deadline"
    route = parse_route("m=parm:k=2,decode=eager")
    assert route.decode == "eager" and "decode" not in route.param_dict  # not a scheme parameter
    for bad in ("m=parm:k=2,decode=soon", "m=approxifer:k=2,s=1,decode=eager"):
        with pytest.raises(ValueError, match="route"):
            parse_route(bad)


class GivingUpPool(FakePool):
    """A FakePool whose calls can be given up (as the Triton pool's with --cancel-losers): ``send`` returns
    what gives a call up; one given up before it answered is recorded and its ``done`` gets Cancelled."""

    def __init__(self, delays):
        super().__init__(delays)
        self.given_up = []

    def send(self, call, batch, signature, done):
        state = {"finished": False}

        def once(result, error):
            if not state["finished"]:
                state["finished"] = True
                done(result, error)

        task = run_then(self.infer(call, batch, signature), once)

        def cancel():
            if not state["finished"]:
                self.given_up.append(call.instance)
                once(None, Cancelled("given up"))
                task.cancel()

        return cancel


async def test_cancel_losers_the_winner_gives_up_the_losing_copy():
    pool = GivingUpPool([0.5, 0.01])
    out = await _call(_dispatcher(pool, Dispatch("replicate")))
    assert out[0, 0] == 1 and pool.given_up == [0]


async def test_cancel_losers_a_hedged_call_given_up_sends_no_hedge_and_reports_cancelled():
    pool = GivingUpPool([5.0, 0.0])
    done = asyncio.get_running_loop().create_future()
    cancel = _dispatcher(pool, Dispatch("hedge", hedge_delay_ms=20)).dispatch(
        CallInfo("m", 0), np.zeros((1, 1)), SIG, lambda out, error: done.set_result(error)
    )
    assert cancel is not None
    cancel()
    assert isinstance(await asyncio.wait_for(done, 1.0), Cancelled)
    await asyncio.sleep(0.05)  # past the 20 ms hedge delay: a hedge would have been sent by now
    assert pool.given_up == [0] and pool.calls == []  # no hedge after the call was given up


async def test_cancel_losers_a_pool_that_cannot_give_up_gives_no_handle():
    pool = FakePool([0.0, 0.0])  # send returns None, as the Triton pool's does by default
    for policy in (Dispatch(), Dispatch("hedge", hedge_delay_ms=20), Dispatch("replicate")):
        assert _dispatcher(pool, policy).dispatch(CallInfo("m", 0), np.zeros((1, 1)), SIG, lambda *_: None) is None
    await pool.until_finished(4)  # single 1, hedge 1 (answered before its delay), replicate 2
