"""The coordinator against fake Triton and coding clients (one function each): coding calls carry what is
left of the queries' deadlines, an identity encoding makes no encoder call, and fault injection exists
only in a frontend that asks for it."""

from __future__ import annotations

import asyncio

import numpy as np

from frontend.app.assembly import FrontendApp
from frontend.app.config import FrontendConfig
from frontend.core.actions import Answer, Fail
from frontend.core.calls import CallInfo, Cancelled, ModelSignature
from frontend.core.completion import run_then
from frontend.core.deadlines import DeadlinePolicy, RouteDeadlines
from frontend.core.faults import Fault, FaultPlan
from frontend.core.placement import Placer
from frontend.core.routes import Dispatch, parse_route
from frontend.dataplane import coordinator
from frontend.dataplane.coordinator import ModelServer
from frontend.dataplane.dispatch import Dispatcher
from frontend.dataplane.injection import InjectingPool
from frontend.transport.triton import TritonPool
from service_common.errors import DeadlineExceeded
from tests import toy_schemes  # registers the toy schemes

SIG = ModelSignature("input", "logits", (1, 4, 4), np.dtype("float32"), (3,))


class FakePool:
    """Answers every call with ones, except data calls of the queries in ``hang`` (never answered)."""

    urls = ("a", "b", "c")

    def __init__(self, hang: set[float] = frozenset()):
        self.hang, self.calls = hang, []

    async def signature(self, model, instance):
        return SIG

    def send(self, call, batch, signature, done):  # the Pool protocol's way in: a task around infer
        run_then(self.infer(call, batch, signature), done)

    async def infer(self, call: CallInfo, batch, signature):
        self.calls.append(call)
        if call.kind == "data" and float(batch.flat[0]) in self.hang:
            await asyncio.Event().wait()
        return np.ones((len(batch), 3), np.float32)


class GivingUpPool(FakePool):
    """A FakePool whose calls can be given up, as the Triton pool's with --cancel-losers: a call given up
    before it answered is recorded in ``given_up`` and its ``done`` gets Cancelled."""

    def __init__(self, hang: set[float] = frozenset()):
        super().__init__(hang)
        self.given_up: list[CallInfo] = []

    def send(self, call, batch, signature, done):
        finished = False

        def once(result, error):
            nonlocal finished
            if not finished:
                finished = True
                done(result, error)

        task = run_then(self.infer(call, batch, signature), once)

        def cancel():
            if not finished:
                self.given_up.append(call)
                once(None, Cancelled("given up"))
                task.cancel()

        return cancel


class FakeCoders:
    def __init__(self):
        self.encodes, self.decodes = [], []

    async def encode(self, route, inputs, timeout_s):
        self.encodes.append(timeout_s)
        return np.zeros((len(route.code.coded_slots), *inputs.shape[1:]), np.float32)

    async def decode(self, route, data_outputs, coded_outputs, timeout_s):
        self.decodes.append(timeout_s)
        return [np.full(3, 7.0, np.float32) for _ in data_outputs], []


async def _server(route_text: str, pool: FakePool, coders: FakeCoders) -> ModelServer:
    route = parse_route(route_text)
    placer = Placer({m: (0, 1, 2) for m in route.models.values()})
    dispatcher = Dispatcher(pool, placer, Dispatch())
    deadlines = RouteDeadlines(DeadlinePolicy(straggler_ms=50, fill_ms=1000), dispatcher.latency, 2)
    server = ModelServer(route, pool, placer, dispatcher, coders, deadlines)
    await server.load()
    return server


def _x(v: float) -> np.ndarray:
    return np.full((1, 4, 4), v, np.float32)


async def test_coding_calls_carry_what_is_left_of_the_queries_deadlines():
    pool, coders = FakePool(hang={1.0}), FakeCoders()
    server = await _server("m=parm:k=2,parity_model=p", pool, coders)
    own, rebuilt = await asyncio.gather(server.classify(_x(0.0), 0.5), server.classify(_x(1.0), 0.5))
    assert not own.reconstructed and rebuilt.reconstructed
    (encode_s,), (decode_s,) = coders.encodes, coders.decodes
    assert 0.4 < encode_s <= 0.5  # sent at once: nearly the whole deadline
    assert 0.0 < decode_s < encode_s - 0.04  # after the 50 ms straggler deadline: that much less
    await server.drain(0.1)


async def test_an_identity_encoding_makes_no_encoder_call():
    pool, coders = FakePool(), FakeCoders()
    server = await _server(f"{toy_schemes.ENSEMBLE}=ensemble", pool, coders)
    answer = await server.classify(_x(0.0), 0.5)
    assert [o.model for o in answer.outputs] == [f"{toy_schemes.ENSEMBLE}_m0", f"{toy_schemes.ENSEMBLE}_m1"]
    await server.drain(0.1)
    assert coders.encodes == [] and sorted(c.kind for c in pool.calls) == ["coded", "data", "data"]
    assert len({c.instance for c in pool.calls}) == 3  # each on its own instance


def _config(faults: FaultPlan) -> FrontendConfig:
    return FrontendConfig("127.0.0.1:0", ("t0",), "e", "d", (parse_route("m=parm:k=2"),), faults=faults)


def test_fault_injection_is_built_only_when_asked_for():
    assert isinstance(FrontendApp(_config(FaultPlan())).pool, TritonPool)
    for plan in (FaultPlan(delay_share=0.1), FaultPlan(allow_metadata=True), FaultPlan(workers=((1, "fail"),))):
        assert isinstance(FrontendApp(_config(plan)).pool, InjectingPool)


def test_injected_faults_hit_only_the_calls_they_name():
    plan = FaultPlan(fail_share=1.0, workers=((2, "corrupt"),))
    pool = InjectingPool(TritonPool(("t0",), 1.0, 1 << 20), plan, deployed_models={"m"})
    forced = Fault(delay_s=0.5)
    assert pool.fault_for(CallInfo("m", 0, "data", 0, copy=0, annotation=forced)) == forced
    assert pool.fault_for(CallInfo("m", 1, "data", 0, copy=1, annotation=forced)) == Fault(fail=True)  # a hedge copy
    assert pool.fault_for(CallInfo("p", 0, "coded", 2)) == Fault(corrupt=True)  # pinned to worker 2
    assert pool.fault_for(CallInfo("p", 0, "coded", 3)) is None  # the parity model is not a deployed one
    assert pool.fault_for(CallInfo("m", 0, "coded", 3)) == Fault(fail=True)  # a coded call on the deployed model


async def test_an_answer_after_the_deadline_failed_the_query_is_not_given_twice():
    """The deadline fails the query's waiter itself (a timer, not asyncio.timeout); an answer that lands
    in the same turn of the loop, before the query is closed, must leave it as it is (failed once)."""
    server = await _server("m=none", FakePool(), FakeCoders())
    waiter = asyncio.get_running_loop().create_future()
    coordinator._expire(waiter, "m", 0.01)
    server._execute(None, [Answer(waiter, ()), Fail(waiter, "late")])  # type: ignore[arg-type]
    assert isinstance(waiter.exception(), DeadlineExceeded)
    assert "within the deadline of 10 ms" in str(waiter.exception())


async def test_a_query_past_its_deadline_is_deadline_exceeded():
    server = await _server("m=none", FakePool(hang={5.0}), FakeCoders())
    try:
        await server.classify(np.full((1, 4, 4), 5.0, np.float32), 0.05)
    except DeadlineExceeded as exc:
        assert "no answer for m within the deadline of 50 ms" in str(exc)
    else:
        raise AssertionError("a query that never gets an answer was answered")


async def test_cancel_losers_gives_up_the_original_of_a_query_the_decoder_rebuilt():
    pool, coders = GivingUpPool(hang={1.0}), FakeCoders()
    server = await _server("m=parm:k=2,parity_model=p", pool, coders)
    own, rebuilt = await asyncio.gather(server.classify(_x(0.0), 0.5), server.classify(_x(1.0), 0.5))
    assert not own.reconstructed and rebuilt.reconstructed
    # Both queries are answered: the straggling original is given up, nothing else (the rest had answered).
    assert [(c.kind, c.worker) for c in pool.given_up] == [("data", 1)]
    await asyncio.wait_for(server.drain(5.0), 1.0)  # no call left out: the given-up one is not waited for
