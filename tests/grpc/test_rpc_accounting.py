"""Every call in ``codedserve_rpcs_total`` exactly once, by the status its client saw: calls whose short
deadline passes while they wait in the handler, calls and a stream their clients cancel, a stream's
failed messages, a call the servicer aborts itself. The in-flight gauge follows the handlers, and clients
that go away leave no traceback in the log. Real servers and stubs on 127.0.0.1 (port 0); Triton is the
in-process stand-in of test_frontend_servicer, where a query whose input is all HANG waits until released."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter

import grpc
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from frontend.api.classify import FrontendServicer
from frontend.api.common import READ_SLACK
from frontend.api.kserve import SERVICE_NAME as KSERVE_NAME
from frontend.api.kserve import KServeServicer
from frontend.app.assembly import FrontendApp
from frontend.app.config import FrontendConfig
from frontend.app.server import SERVICE_NAME
from frontend.core.routes import parse_route
from service_common.server import start_server
from tests.grpc.test_frontend_servicer import HANG, LIMIT, FakeTriton, _request, _x

BOUND_S = 20.0  # every wait on the server's state here is bounded by this
METHODS = ("Classify", "ClassifyStream", "RepositoryIndex")
_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}  # a stream message's status_code -> its name


class Frontend:
    def __init__(self, channel: grpc.aio.Channel, triton: FakeTriton) -> None:
        self.stub = pb_grpc.FrontendStub(channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(channel)
        self.triton = triton


@pytest.fixture
async def frontend():
    """A frontend serving ``m`` uncoded, its Frontend and KServe services on one port."""
    triton = FakeTriton()

    class App(FrontendApp):
        def _pool(self) -> FakeTriton:  # type: ignore[override]
            return triton

    config = FrontendConfig(
        "127.0.0.1:0", triton.urls, "e", "d", (parse_route("m=none"),), coding="local", max_message_bytes=LIMIT
    )
    app = App(config)
    await app.start()
    await app.load_until_ready(give_up_s=1.0)
    kserve = KServeServicer(app, app.catalog)
    running = await start_server(
        [
            lambda s: pb_grpc.add_FrontendServicer_to_server(FrontendServicer(app), s),
            lambda s: kpb_grpc.add_GRPCInferenceServiceServicer_to_server(kserve, s),
        ],
        [SERVICE_NAME, KSERVE_NAME],
        "127.0.0.1:0",
        LIMIT,
        read_slack=READ_SLACK,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield Frontend(channel, triton)
    triton.release.set()
    await channel.close()
    await running.stop(0)
    await kserve.close()
    await app.close()


def _counts() -> dict[tuple[str, str], float]:
    return {
        (method, code.name): REGISTRY.get_sample_value("codedserve_rpcs_total", {"method": method, "code": code.name})
        or 0.0
        for method in METHODS
        for code in grpc.StatusCode
    }


def _increments(before: dict[tuple[str, str], float]) -> Counter[tuple[str, str]]:
    after = _counts()
    return Counter({key: int(after[key] - before[key]) for key in after if after[key] != before[key]})


def _in_flight(method: str) -> float:
    return REGISTRY.get_sample_value("codedserve_rpcs_in_flight", {"method": method}) or 0.0


async def _in_flight_reaches(method: str, value: float) -> None:
    """Wait (bounded) until the gauge reads ``value`` (a gauge has no event to wait on: it is polled)."""
    async with asyncio.timeout(BOUND_S):
        while _in_flight(method) != value:
            await asyncio.sleep(0.005)


async def _held(frontend: Frontend, calls: int) -> tuple[list[grpc.aio.UnaryUnaryCall], grpc.aio.StreamStreamCall]:
    """``calls`` Classify calls and a stream of three queries, every query waiting on Triton (their handlers
    running: the in-flight gauge says so)."""
    start = _in_flight("Classify"), _in_flight("ClassifyStream")
    unary = [frontend.stub.Classify(_request(_x(HANG), f"h{i}"), timeout=30) for i in range(calls)]
    stream = frontend.stub.ClassifyStream(timeout=30)
    for i in range(3):
        await stream.write(_request(_x(HANG), f"s{i}"))
    await _in_flight_reaches("Classify", start[0] + calls)
    await _in_flight_reaches("ClassifyStream", start[1] + 1)
    return unary, stream


async def test_every_call_is_counted_once_by_the_status_its_client_saw(frontend):
    """120 calls in three waves: half wait on Triton until their 0.2-0.5 s deadline passes in the handler
    (as the frontend's own deadline timer or gRPC's cancellation ends them), half are answered (1-3 s
    deadlines: an answer sent just before the deadline may reach a client that gave up, which no server
    can tell); 10 calls and a stream cancelled by their clients while their queries wait; a stream
    answered to its end with one bad message; a KServe call the servicer aborts (UNIMPLEMENTED). The
    deadlines leave every call time to reach its handler on a loaded machine: a call whose deadline
    passes before gRPC starts its handler is counted nowhere. Failed before: the calls gRPC cancelled and
    the aborted one were in no counter."""
    rng = random.Random(7)
    before, start = _counts(), (_in_flight("Classify"), _in_flight("ClassifyStream"))
    held, held_stream = await _held(frontend, 10)
    short = []
    for wave in range(3):
        calls = [
            frontend.stub.Classify(_request(_x(HANG), str(i)), timeout=rng.uniform(0.2, 0.5))
            if i % 2
            else frontend.stub.Classify(_request(_x(), str(i)), timeout=rng.uniform(1.0, 3.0))
            for i in range(wave * 40, wave * 40 + 40)
        ]
        await asyncio.wait([asyncio.ensure_future(call.code()) for call in calls])
        short += calls
    finished = frontend.stub.ClassifyStream(
        iter([_request(query_id="ok0"), pb.ClassifyRequest(model="m", id="bad"), _request(query_id="ok1")]), timeout=10
    )
    messages = [reply async for reply in finished]
    with pytest.raises(grpc.aio.AioRpcError) as aborted:
        await frontend.kserve.RepositoryIndex(kpb.RepositoryIndexRequest(), timeout=5)
    for call in [*held, held_stream]:
        call.cancel()

    seen = Counter([("Classify", (await call.code()).name) for call in [*short, *held]])
    seen += Counter([("ClassifyStream", (await call.code()).name) for call in (held_stream, finished)])
    seen += Counter(("ClassifyStream", _NAMES[m.status_code]) for m in messages if m.status_code)
    seen[("RepositoryIndex", aborted.value.code().name)] += 1
    assert (seen[("Classify", "OK")], seen[("Classify", "DEADLINE_EXCEEDED")]) == (60, 60)
    assert (seen[("Classify", "CANCELLED")], seen[("ClassifyStream", "CANCELLED")]) == (10, 1)
    assert seen[("ClassifyStream", "INVALID_ARGUMENT")] == 1
    await _in_flight_reaches("Classify", start[0])  # every handler has ended, so every call is counted
    await _in_flight_reaches("ClassifyStream", start[1])
    counted = _increments(before)
    assert counted == seen
    assert sum(counted.values()) == len(short) + len(held) + 2 + 1 + 1  # the calls sent, and the failed message


async def test_calls_whose_deadline_passes_while_the_loop_is_stalled_are_counted_deadline_exceeded(frontend):
    """The frontend's event loop held (a blocking sleep: what a CPU-starved frontend does) past the 1 s
    deadline of 20 queries waiting on Triton: gRPC cancels their handlers. Failed before: none of them
    was counted."""
    before = _counts()
    start = _in_flight("Classify")
    sent = time.monotonic()
    calls = [frontend.stub.Classify(_request(_x(HANG), str(i)), timeout=1.0) for i in range(20)]
    await _in_flight_reaches("Classify", start + 20)
    time.sleep(max(0.0, sent + 1.0 - time.monotonic()) + 0.1)  # noqa: ASYNC251 - the point: nothing on the loop runs
    codes = Counter([(await call.code()).name for call in calls])
    await _in_flight_reaches("Classify", start)
    assert codes == {"DEADLINE_EXCEEDED": 20}
    assert _increments(before) == {("Classify", "DEADLINE_EXCEEDED"): 20}


async def test_the_in_flight_gauge_counts_running_handlers_and_returns_to_its_start(frontend):
    """Held calls and a held stream show in ``codedserve_rpcs_in_flight``; answered or cancelled, they leave
    it where it started (failed before: there was no such gauge)."""
    start = _in_flight("Classify"), _in_flight("ClassifyStream")
    held, stream = await _held(frontend, 5)
    assert (_in_flight("Classify"), _in_flight("ClassifyStream")) == (start[0] + 5, start[1] + 1)
    frontend.triton.release.set()
    assert [(await call).id for call in held] == [f"h{i}" for i in range(5)]
    assert sorted([(await stream.read()).id for _ in range(3)]) == ["s0", "s1", "s2"]
    await stream.done_writing()
    assert await stream.read() == grpc.aio.EOF
    # the handler's count ends before its status is sent: back at the start once the client has its answer
    assert (_in_flight("Classify"), _in_flight("ClassifyStream")) == start

    frontend.triton.release.clear()
    held, stream = await _held(frontend, 5)
    for call in [*held, stream]:
        call.cancel()
    await _in_flight_reaches("Classify", start[0])
    await _in_flight_reaches("ClassifyStream", start[1])


async def test_clients_that_go_away_leave_no_traceback(frontend, caplog):
    """Ten waves of 40 queries waiting on Triton past one common 50 ms deadline per wave (the frontend's own
    deadline and gRPC's end the calls at the same moment, so the handler often answers a call already
    over), and 10 calls and a stream cancelled. Failed before (most runs): grpc logged "ExecuteBatchError
    raised in core by servicer method" with a traceback for a status sent to a call that had ended."""
    caplog.set_level(logging.INFO)
    start = _in_flight("Classify"), _in_flight("ClassifyStream")
    codes: Counter[str] = Counter()
    for wave in range(10):
        calls = [frontend.stub.Classify(_request(_x(HANG), f"{wave}.{i}"), timeout=0.05) for i in range(40)]
        codes += Counter([(await call.code()).name for call in calls])
    held, stream = await _held(frontend, 10)
    for call in [*held, stream]:
        call.cancel()
    await _in_flight_reaches("Classify", start[0])
    await _in_flight_reaches("ClassifyStream", start[1])
    assert codes == {"DEADLINE_EXCEEDED": 400}
    loud = [f"{r.name} {r.levelname}: {r.getMessage()}" for r in caplog.records if r.exc_info or r.levelno >= 40]
    assert loud == []
