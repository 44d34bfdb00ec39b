"""The codedserve.v1 Frontend service through a real stub on a real server (port 0), with only Triton
faked: bad input gets a precise status on unary calls and in streams alike, a bad stream message is
answered alone while the stream goes on, duplicate ids in flight are refused, non-finite answers are
never OK, and stream errors are counted like unary ones."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from frontend.api.classify import FrontendServicer
from frontend.api.common import READ_SLACK
from frontend.app.assembly import FrontendApp
from frontend.app.config import FrontendConfig
from frontend.app.server import SERVICE_NAME
from frontend.core.calls import CallInfo, ModelSignature
from frontend.core.completion import run_then
from frontend.core.deadlines import DeadlinePolicy
from frontend.core.routes import parse_route
from service_common.server import start_server
from service_common.tensors import MAX_ABS_INPUT, from_numpy

LIMIT = 1 << 16
SIG = ModelSignature("input", "logits", (1, 4, 4), np.dtype("float32"), (3,))
HANG = 1.0  # a data call whose input is all HANG waits until the test releases it
OVERFLOW = 6.0  # the fake model's exp overflows float32 (past e^88.7) on an input that sums to 16 * 6 = 96
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class FakeTriton:
    """Every model answers [exp(s), -exp(s), 0 * exp(s)] for s = sum(input) (float32): finite for small
    inputs, [inf, -inf, nan] once exp overflows; the parity model ``p`` answers inf (an overflowing parity)."""

    urls = ("t0", "t1", "t2")

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def signature(self, model: str, instance: int) -> ModelSignature:
        return SIG

    async def repository(self, instance: int, timeout_s: float = 2.0) -> dict[str, tuple[str, str]]:
        return {model: ("READY", "") for model in ("m", "c", "p")}

    def wait_s(self, model: str, instances: tuple[int, ...], rows: int = 1) -> float:
        return 0.0  # no queue here (tests/grpc/test_admission.py drives the real pool's)

    def send(self, call, batch, signature, done):  # the Pool protocol's way in: a task around infer
        run_then(self.infer(call, batch, signature), done)

    async def infer(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray:
        if call.kind == "data" and (batch == HANG).all():
            await self.release.wait()
        if call.model == "p":
            return np.full((len(batch), 3), np.inf, np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(batch.reshape(len(batch), -1).sum(axis=1, dtype=np.float32))
            return np.stack([e, -e, 0 * e], axis=1).astype(np.float32)


class Frontend:
    def __init__(self, stub: pb_grpc.FrontendStub, channel: grpc.aio.Channel, triton: FakeTriton) -> None:
        self.stub, self.channel, self.triton = stub, channel, triton


@pytest.fixture
async def frontend():
    """A frontend serving ``m`` uncoded and ``c`` with ParM (parity model ``p``), coding in-process."""
    triton = FakeTriton()

    class App(FrontendApp):
        def _pool(self) -> FakeTriton:  # type: ignore[override]
            return triton

    routes = (parse_route("m=none"), parse_route("c=parm:k=2,encoder=add,parity_model=p"))
    deadlines = DeadlinePolicy(straggler_ms=30, fill_ms=1000)
    config = FrontendConfig(
        "127.0.0.1:0",
        triton.urls,
        "e",
        "d",
        routes,
        deadlines,
        default_deadline_s=2.0,
        coding="local",
        max_message_bytes=LIMIT,
    )
    app = App(config)
    await app.start()
    await app.load_until_ready(give_up_s=1.0)
    running = await start_server(
        [lambda s: pb_grpc.add_FrontendServicer_to_server(FrontendServicer(app), s)],
        [SERVICE_NAME],
        "127.0.0.1:0",
        LIMIT,
        read_slack=READ_SLACK,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield Frontend(pb_grpc.FrontendStub(channel), channel, triton)
    triton.release.set()
    await channel.close()
    await running.stop(0)
    await app.close()


def _x(value: float = 0.01) -> np.ndarray:
    return np.full((1, 4, 4), value, np.float32)


def _request(x: np.ndarray | None = None, query_id: str = "", model: str = "m") -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=model, id=query_id, input=from_numpy(_x() if x is None else x))


# A tensor whose dims' product wraps int64 to exactly 16 elements: 4 * (2**62 + 4) = 2**64 + 16.
WRAPPED = pb.Tensor(dtype="float32", shape=[4, 2**62 + 4], data=b"\0" * 64)
HUGE = np.full((1, 4, 4), 3e38, np.float32)  # finite, and ~1e39 once summed: NaN logits from most models

BAD_INPUTS = [
    (pb.ClassifyRequest(model="m", id="missing"), "missing input"),
    (pb.ClassifyRequest(model="m", id="wrapped", input=WRAPPED), f"shape [4, {2**62 + 4}] of float32 declares"),
    (_request(HUGE, "huge"), f"|x| <= {MAX_ABS_INPUT:g}"),
    (_request(_x(OVERFLOW), "overflow"), "non-finite logits"),
]


@pytest.mark.parametrize("request_, message", BAD_INPUTS, ids=[r.id for r, _ in BAD_INPUTS])
async def test_bad_input_is_invalid_argument_with_a_precise_message(frontend, request_, message):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await frontend.stub.Classify(request_, timeout=5)
    assert (err.value.code(), message in err.value.details()) == (INVALID, True), err.value.details()


async def test_a_reconstruction_that_is_not_finite_is_unavailable_not_ok(frontend):
    """Query 0 hangs past the straggler deadline and is rebuilt from an overflowing parity (inf - own)."""
    rebuilt, own = await asyncio.gather(
        frontend.stub.Classify(_request(_x(HANG), "0", "c"), timeout=5),
        frontend.stub.Classify(_request(_x(), "1", "c"), timeout=5),
        return_exceptions=True,
    )
    assert isinstance(own, pb.ClassifyResponse) and np.isfinite(own.logits).all()
    assert isinstance(rebuilt, grpc.aio.AioRpcError), rebuilt
    assert rebuilt.code() == grpc.StatusCode.UNAVAILABLE and "reconstruction" in rebuilt.details()


async def test_every_bad_message_of_a_stream_gets_its_own_answer_and_the_stream_goes_on(frontend):
    requests = [_request(query_id="good0"), *(r for r, _ in BAD_INPUTS), _request(query_id="good1")]
    replies = {r.id: r async for r in frontend.stub.ClassifyStream(iter(requests), timeout=10)}
    assert sorted(replies) == sorted(r.id for r in requests)
    for request_, message in BAD_INPUTS:
        reply = replies[request_.id]
        assert (reply.status_code, message in reply.error) == (INVALID.value[0], True), reply.error
    for good in ("good0", "good1"):
        assert replies[good].status_code == 0 and np.isfinite(replies[good].logits).all()


async def test_a_duplicate_id_still_in_flight_in_a_stream_is_refused_naming_it(frontend):
    call = frontend.stub.ClassifyStream(timeout=10)
    await call.write(_request(_x(HANG), "a"))  # in flight until released
    await call.write(_request(_x(), "a"))
    duplicate = await call.read()
    assert (duplicate.id, duplicate.status_code) == ("a", INVALID.value[0])
    assert "'a'" in duplicate.error and "in flight" in duplicate.error
    frontend.triton.release.set()
    first = await call.read()
    assert (first.id, first.status_code) == ("a", 0)
    await call.write(_request(_x(), "a"))  # answered: its id is free again
    again = await call.read()
    assert (again.id, again.status_code) == ("a", 0)
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


def _count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("codedserve_rpcs_total", {"method": method, "code": code}) or 0.0


async def test_errors_inside_a_stream_are_counted_like_unary_errors(frontend):
    before = _count("ClassifyStream", "INVALID_ARGUMENT"), _count("ClassifyStream", "NOT_FOUND")
    requests = [_request(query_id="ok"), pb.ClassifyRequest(model="m", id="x"), _request(model="nope", query_id="y")]
    replies = [r async for r in frontend.stub.ClassifyStream(iter(requests), timeout=10)]
    assert len(replies) == 3
    after = _count("ClassifyStream", "INVALID_ARGUMENT"), _count("ClassifyStream", "NOT_FOUND")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def _failure_codes() -> set[str]:
    return {
        sample.labels["code"]
        for metric in REGISTRY.collect()
        if metric.name in ("codedserve_rpcs", "codedserve_query_failures")
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


@pytest.mark.timeout(30)
async def test_every_counter_spells_a_status_the_grpc_way(frontend):
    with pytest.raises(grpc.aio.AioRpcError) as err:  # no client deadline: the frontend's 2 s default
        await frontend.stub.Classify(_request(_x(HANG), "late"))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    names = {code.name for code in grpc.StatusCode}
    assert "DEADLINE_EXCEEDED" in _failure_codes()
    assert _failure_codes() <= names, _failure_codes() - names


async def test_a_truncated_stream_message_ends_the_stream_at_once_after_answering_the_ones_before(frontend):
    """gRPC cannot read on past a message that does not parse; the stream used to hang to its deadline."""
    raw = frontend.channel.stream_stream(
        "/codedserve.v1.Frontend/ClassifyStream", response_deserializer=pb.ClassifyResponse.FromString
    )
    good = _request(query_id="good").SerializeToString()
    call = raw(iter([good, good[:-7], good]), timeout=30)
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for reply in call:
            replies.append(reply)
    assert [r.id for r in replies] == ["good"] and replies[0].status_code == 0
    assert err.value.code() == INVALID and "stream message 2 is not a well-formed request" in err.value.details()


async def test_a_truncated_unary_request_is_invalid_argument_not_unknown(frontend):
    raw = frontend.channel.unary_unary("/codedserve.v1.Frontend/Classify")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await raw(_request(query_id="cut").SerializeToString()[:-7], timeout=5)
    assert err.value.code() == INVALID and "Classify request is not well-formed" in err.value.details()
    assert (await frontend.stub.Classify(_request(query_id="next"), timeout=5)).id == "next"


async def test_a_message_over_the_limit_is_refused_alone_and_the_stream_goes_on(frontend):
    """160 kB > the 64 kB --max-message-bytes, within what the port reads: refused by the servicer, in
    its own answer, and the queries after it are answered (failed before: gRPC ended the stream)."""
    big = _request(np.zeros((1, 200, 200), np.float32), "too-big")
    assert LIMIT < big.ByteSize() <= LIMIT * READ_SLACK
    call = frontend.stub.ClassifyStream(
        iter([_request(query_id="before"), big, _request(query_id="after")]), timeout=10
    )
    replies = {r.id: r async for r in call}
    assert sorted(replies) == ["after", "before", "too-big"]
    assert replies["before"].status_code == replies["after"].status_code == 0
    assert replies["too-big"].status_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert f"of {big.ByteSize()} bytes is over the frontend's limit of {LIMIT} bytes" in replies["too-big"].error
    with pytest.raises(grpc.aio.AioRpcError) as err:  # a unary call says the same
        await frontend.stub.Classify(big, timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-message-bytes" in err.value.details()


async def test_a_message_past_what_the_port_reads_ends_the_stream_as_grpc_does_and_the_server_stays_up(frontend):
    """Not answerable per message: gRPC refuses the message before the servicer sees it (its id
    unread), fails the call with RESOURCE_EXHAUSTED and ends the servicer's request iterator. What
    was answered before it is delivered; the server stays healthy and answers the next call."""
    huge = _request(np.zeros((1, 300, 300), np.float32), "too-big")
    assert huge.ByteSize() > LIMIT * READ_SLACK
    call = frontend.stub.ClassifyStream(timeout=10)
    await call.write(_request(query_id="before"))
    assert (await call.read()).id == "before"
    try:  # the write itself may or may not see the call fail
        await call.write(huge)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in await call.details()
    with pytest.raises(asyncio.InvalidStateError):  # the stream is over: no later query can be sent
        await call.write(_request(query_id="after"))
    health = await health_pb2_grpc.HealthStub(frontend.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await frontend.stub.Classify(_request(query_id="next"), timeout=5)).id == "next"
