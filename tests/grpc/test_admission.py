"""Overload is refused at admission, at once, with RESOURCE_EXHAUSTED naming the bound: the queries in
flight in all, from one client, and a query whose deadline is shorter than the Triton queue ahead of it.
The whole frontend (both ports, the real Triton pool and batchers) runs on 127.0.0.1 against a stand-in
Triton on the wire (tests/grpc/fake_triton.py) whose calls are held at a gate: the slow Triton."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from frontend.api.common import CLIENT_METADATA_KEY, READ_SLACK
from frontend.app.config import FrontendConfig
from frontend.app.server import SERVICE_NAME, FrontendServer, create_server
from frontend.core.routes import parse_route
from service_common.tensors import from_numpy
from tests.grpc.fake_triton import INPUT, MODEL, ROW, FakeTriton

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DEFAULT_MAX_INFLIGHT = 256  # --max-inflight's default
BOUND_S = 20.0  # every wait on an event here is bounded by this


class Stack:
    def __init__(self, triton: FakeTriton, server: FrontendServer) -> None:
        self.triton, self.server = triton, server
        self.channels: list[grpc.aio.Channel] = []

    def stub(self) -> pb_grpc.FrontendStub:
        """A stub on a channel of its own: a client (connection) of its own."""
        self.channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{self.server.port}"))
        return pb_grpc.FrontendStub(self.channels[-1])

    def kserve(self) -> kpb_grpc.GRPCInferenceServiceStub:
        self.channels.append(grpc.aio.insecure_channel(f"127.0.0.1:{self.server.kserve_port}"))
        return kpb_grpc.GRPCInferenceServiceStub(self.channels[-1])

    @property
    def inflight(self) -> int:
        return self.server.app.admission.inflight


@pytest.fixture
async def start():
    """``await start(**bounds)``: a frontend with these FrontendConfig bounds (else the defaults)."""
    started: list[Stack] = []

    async def make(**bounds: int) -> Stack:
        triton = await FakeTriton().start()
        routes = (parse_route(f"{MODEL}=none"),)
        config = FrontendConfig(  # no warm-up: the tests count every row and call that reaches the stand-in
            "127.0.0.1:0", (triton.url,), "e", "d", routes, coding="local", kserve_address="127.0.0.1:0",
            warm_up=False, **bounds,
        )  # fmt: skip
        started.append(Stack(triton, await create_server(config)))
        await _serving(started[-1])
        return started[-1]

    yield make
    for s in started:
        s.triton.gate.set()
        for channel in s.channels:
            await channel.close()
        await s.server.stop(0)
        await s.triton.stop()


async def _serving(s: Stack) -> None:
    s.stub()
    health = health_pb2_grpc.HealthStub(s.channels[-1])
    async for reply in health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=BOUND_S):
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            return


def _query(i: int) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=MODEL, id=str(i), input=from_numpy(np.full(ROW, i, np.float32)))


def _client(name: str) -> tuple[tuple[str, str], ...]:
    return ((CLIENT_METADATA_KEY, name),)


async def _first_done(tasks: list[asyncio.Future], count: int) -> tuple[set[asyncio.Future], set[asyncio.Future]]:
    """Wait (bounded) until ``count`` of the tasks have finished; (finished, still running)."""
    done: set[asyncio.Future] = set()
    pending = set(tasks)
    async with asyncio.timeout(BOUND_S):
        while len(done) < count:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            done |= finished
    return done, pending


def _refusal(task: asyncio.Future) -> tuple[grpc.StatusCode, str]:
    exc = task.exception()
    assert isinstance(exc, grpc.aio.AioRpcError), task.result()
    return exc.code(), exc.details() or ""


async def test_queries_over_the_default_bound_are_refused_at_once_and_the_accepted_ones_answered_once(start):
    """A stalled Triton and 20 queries more than the default --max-inflight (256), from 4 clients (under
    the per-client bound): the 20 are refused while every accepted query is still waiting for Triton,
    in-flight stops at 256, and once Triton answers, each accepted query gets its own answer once."""
    stack = await start()
    bound = DEFAULT_MAX_INFLIGHT
    stack.triton.gate.clear()
    stub = stack.stub()
    n = bound + 20
    tasks = [
        asyncio.ensure_future(stub.Classify(_query(i), timeout=60, metadata=_client(f"c{i % 4}"))) for i in range(n)
    ]
    refused, waiting = await _first_done(tasks, 20)
    assert {_refusal(t)[0] for t in refused} == {EXHAUSTED}
    assert all(f"max_inflight={bound}" in _refusal(t)[1] for t in refused)
    assert (len(waiting), stack.inflight, stack.triton.rows) == (bound, bound, 0)  # refused before Triton answered
    stack.triton.gate.set()
    async with asyncio.timeout(BOUND_S):
        replies = await asyncio.gather(*waiting)
    assert sorted(int(r.id) for r in replies) == sorted(int(r.id) for r in (t.result() for t in waiting))
    assert all(r.logits[0] == pytest.approx(ROW * int(r.id)) for r in replies)  # each its own answer
    assert len({r.id for r in replies}) == bound and stack.triton.rows == bound  # once each, no more sent
    assert stack.inflight == 0


async def test_one_client_over_its_bound_is_refused_while_other_clients_are_served(start):
    """Client ``a`` (its metadata, over two connections, one of them a stream) gets 3 queries in; its 4th
    and 5th are refused naming it. Another client (a connection without the metadata) still gets 3 in."""
    stack = await start(max_inflight_per_client=3, batch_inflight=8)
    stack.triton.gate.clear()
    a1, a2, other = stack.stub(), stack.stub(), stack.stub()
    unary = [asyncio.ensure_future(a1.Classify(_query(i), timeout=60, metadata=_client("a"))) for i in range(3)]
    await stack.triton.held(3)  # all three admitted (each call goes out at once: --batch-inflight 8)
    refused, _ = await _first_done(
        [asyncio.ensure_future(a2.Classify(_query(3), timeout=60, metadata=_client("a")))], 1
    )
    assert _refusal(next(iter(refused)))[0] == EXHAUSTED
    assert "client 'a' has 3 queries in flight" in _refusal(next(iter(refused)))[1]
    stream = a2.ClassifyStream(iter([_query(4)]), timeout=60, metadata=_client("a"))
    async with asyncio.timeout(BOUND_S):
        (reply,) = [r async for r in stream]  # each stream message is admitted on its own
    assert (reply.id, reply.status_code, "max_inflight_per_client=3" in reply.error) == ("4", EXHAUSTED.value[0], True)
    others = [asyncio.ensure_future(other.Classify(_query(i), timeout=60)) for i in (5, 6, 7)]
    await stack.triton.held(6)
    assert stack.inflight == 6 and not any(t.done() for t in unary + others)
    stack.triton.gate.set()
    async with asyncio.timeout(BOUND_S):
        replies = await asyncio.gather(*unary, *others)
    assert sorted(r.id for r in replies) == ["0", "1", "2", "5", "6", "7"]


async def test_a_query_whose_deadline_is_shorter_than_the_triton_queue_is_refused_at_once(start):
    """Triton takes at least 0.2 s a call, and one call is out (held): a new query would wait for it and
    then its own call, at least 0.4 s. With 0.3 s left it is refused at once, naming the wait; with 10 s
    it is accepted and answered."""
    stack = await start()
    stack.triton.delay_s = 0.2
    stub = stack.stub()
    await stub.Classify(_query(0), timeout=10)  # the pool learns how long a call takes
    stack.triton.gate.clear()
    held = asyncio.ensure_future(stub.Classify(_query(1), timeout=10))
    await stack.triton.held(1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Classify(_query(2), timeout=0.3)
    assert err.value.code() == EXHAUSTED and "estimated wait" in (err.value.details() or "")
    assert stack.triton.calls_waiting == 1 and not held.done()  # refused while the slow call is still out
    patient = asyncio.ensure_future(stub.Classify(_query(3), timeout=10))
    stack.triton.gate.set()
    async with asyncio.timeout(BOUND_S):
        assert [r.id for r in await asyncio.gather(held, patient)] == ["1", "3"]


def _infer(rows: int, request_id: str) -> kpb.ModelInferRequest:
    tensor = kpb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="FP32", shape=[rows, ROW])
    data = np.ones((rows, ROW), np.float32).tobytes()
    return kpb.ModelInferRequest(model_name=MODEL, id=request_id, inputs=[tensor], raw_input_contents=[data])


async def test_kserve_batches_count_their_rows_against_the_client_bound_unary_and_streamed(start):
    """KServe's ModelInfer admits a batch's rows together: one client's 4 rows are in; a 4-row batch more
    is refused naming the bound; in a stream of two 2-row messages the first fits (6), the second is
    refused in its own error_message, and the stream goes on."""
    stack = await start(max_inflight_per_client=6, batch_inflight=8)
    stack.triton.gate.clear()
    kserve = stack.kserve()
    first = asyncio.ensure_future(kserve.ModelInfer(_infer(4, "r1"), timeout=60, metadata=_client("k")))
    await stack.triton.held(4)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await kserve.ModelInfer(_infer(4, "r2"), timeout=60, metadata=_client("k"))
    assert err.value.code() == EXHAUSTED and "4 more asked (max_inflight_per_client=6)" in (err.value.details() or "")
    stream = kserve.ModelStreamInfer(iter([_infer(2, "s1"), _infer(2, "s2")]), timeout=60, metadata=_client("k"))
    responses = []
    async with asyncio.timeout(BOUND_S):
        async for response in stream:
            responses.append(response)
            if len(responses) == 1:  # the refusal comes first, while the accepted message is held
                assert "max_inflight_per_client=6" in response.error_message and not first.done()
                stack.triton.gate.set()
    accepted = [r for r in responses if not r.error_message]
    assert len(responses) == 2 and [r.infer_response.outputs[0].shape for r in accepted] == [[2, 3]]
    assert (await first).outputs[0].shape == [4, 3]


async def test_queries_that_time_out_in_the_triton_queue_are_never_sent_to_triton(start):
    """The client's deadline bounds the Triton hop without cancelling a call (which crashes Triton 2.51):
    with one call out and held, three queries with 0.3 s deadlines queue behind it and get
    DEADLINE_EXCEEDED; when Triton is free again, their rows are never sent, while a query after them is."""
    stack = await start()
    stub = stack.stub()
    stack.triton.gate.clear()
    held = asyncio.ensure_future(stub.Classify(_query(1), timeout=30))
    await stack.triton.held(1)
    late = await asyncio.gather(*(stub.Classify(_query(i), timeout=0.3) for i in (2, 3, 4)), return_exceptions=True)
    assert {e.code() for e in late if isinstance(e, grpc.aio.AioRpcError)} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    stack.triton.gate.set()
    async with asyncio.timeout(BOUND_S):
        assert (await held).id == "1"
        assert (await stub.Classify(_query(5), timeout=10)).id == "5"  # queued after them: the queue has moved
    assert stack.triton.rows == 2  # the held query's and the last one's


async def test_a_kserve_stream_message_over_the_message_limit_is_refused_alone_and_the_stream_goes_on(start):
    """--max-message-bytes bounds every message; in ModelStreamInfer one over it gets its own
    RESOURCE_EXHAUSTED error_message and the messages after it are answered (failed before: the port's
    gRPC limit ended the whole stream with RESOURCE_EXHAUSTED)."""
    limit = 4096
    stack = await start(max_message_bytes=limit)
    big = _infer(2 * limit // (4 * ROW), "big")
    assert limit < big.ByteSize() <= limit * READ_SLACK
    stream = stack.kserve().ModelStreamInfer(iter([_infer(2, "a"), big, _infer(2, "b")]), timeout=BOUND_S)
    responses = {r.infer_response.id: r async for r in stream}
    assert sorted(responses) == ["a", "b", "big"]
    assert not responses["a"].error_message and not responses["b"].error_message
    assert f"of {big.ByteSize()} bytes is over the frontend's limit of {limit} bytes" in responses["big"].error_message
