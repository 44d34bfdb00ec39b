"""Fuzz the public APIs (hypothesis): codedserve.v1 Classify and ClassifyStream, and the KServe port's
ModelInfer, ModelStreamInfer and metadata/readiness calls, with random but well-typed messages (random
dtypes, shapes with huge or negative dims, byte counts that do not match, random names, ids, versions
and parameters) and with random bytes sent as the serialized request.

A client's mistake never gets INTERNAL or UNKNOWN, every stream message gets one answer, and the
server stays SERVING and answers a good query afterwards. The whole frontend (both ports, the real
Triton pool) runs in a thread of its own on 127.0.0.1 against the stand-in Triton (fake_triton.py),
so hypothesis drives it with plain blocking stubs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from frontend.app.config import FrontendConfig
from frontend.app.server import SERVICE_NAME, FrontendServer, create_server
from frontend.core.routes import parse_route
from service_common.tensors import from_numpy
from tests.fuzz_strategies import FAULT_NUMBERS, VERSIONS, Target, classify_requests, infer_requests, names, status
from tests.grpc.fake_triton import INPUT, MODEL, OUTPUT, ROW, FakeTriton

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TIMEOUT_S = 10.0


class Frontend:
    """The frontend and the stand-in Triton on an event loop in a thread; :meth:`close` stops both."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.triton, self.server = self._run(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.kserve_channel = grpc.insecure_channel(f"127.0.0.1:{self.server.kserve_port}")
        self.stub = pb_grpc.FrontendStub(self.channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(self.kserve_channel)

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(60)

    async def _start(self) -> tuple[FakeTriton, FrontendServer]:
        triton = await FakeTriton().start()
        config = FrontendConfig(
            "127.0.0.1:0",
            (triton.url,),
            "e",
            "d",
            (parse_route(f"{MODEL}=none"),),
            coding="local",
            kserve_address="127.0.0.1:0",
            max_message_bytes=1 << 20,
        )
        return triton, await create_server(config)

    def close(self) -> None:
        self.channel.close()
        self.kserve_channel.close()
        self._run(self.server.stop(0))
        self._run(self.triton.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def serving(self) -> bool:
        stubs = (health_pb2_grpc.HealthStub(self.channel), health_pb2_grpc.HealthStub(self.kserve_channel))
        request = health_pb2.HealthCheckRequest()
        return all(s.Check(request, timeout=TIMEOUT_S).status == health_pb2.HealthCheckResponse.SERVING for s in stubs)


@pytest.fixture(scope="module")
def frontend() -> Iterator[Frontend]:
    f = Frontend()
    health = health_pb2_grpc.HealthStub(f.channel)
    for reply in health.Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30):
        if reply.status == health_pb2.HealthCheckResponse.SERVING:
            break
    yield f
    f.close()


def _answers_a_good_query(f: Frontend) -> None:
    x = np.full(ROW, 0.5, np.float32)
    reply = f.stub.Classify(pb.ClassifyRequest(model=MODEL, id="good", input=from_numpy(x)), timeout=TIMEOUT_S)
    assert reply.logits[0] == pytest.approx(x.sum())
    tensor = kpb.ModelInferRequest.InferInputTensor(name=INPUT, datatype="FP32", shape=[1, ROW])
    infer = kpb.ModelInferRequest(model_name=MODEL, inputs=[tensor], raw_input_contents=[x.tobytes()])
    assert list(f.kserve.ModelInfer(infer, timeout=TIMEOUT_S).outputs[0].shape) == [1, 3]
    assert f.serving()


TARGET = Target(MODEL, INPUT, OUTPUT, (ROW,))
CLASSIFY = classify_requests(TARGET)
INFER = infer_requests(TARGET)
NAMES = names(TARGET)


# ---- codedserve.v1 -------------------------------------------------------------------------


@FUZZ
@given(request=CLASSIFY)
def test_classify_never_answers_a_client_mistake_with_a_server_fault(frontend, request):
    status(frontend.stub.Classify, request)


@FUZZ
@given(requests=st.lists(CLASSIFY, min_size=1, max_size=5))
def test_classify_stream_answers_every_message_once_and_never_with_a_server_fault(frontend, requests):
    for i, request in enumerate(requests):
        request.id = f"{i}:{request.id}"  # distinct: a duplicate id in flight is a mistake of its own
    replies = list(frontend.stub.ClassifyStream(iter(requests), timeout=TIMEOUT_S))
    assert sorted(r.id for r in replies) == sorted(r.id for r in requests)
    faults = [(r.id, r.status_code, r.error) for r in replies if r.status_code in FAULT_NUMBERS]
    assert not faults


# ---- KServe v2 -----------------------------------------------------------------------------


@FUZZ
@given(request=INFER)
def test_model_infer_never_answers_a_client_mistake_with_a_server_fault(frontend, request):
    status(frontend.kserve.ModelInfer, request)


@FUZZ
@given(requests=st.lists(INFER, min_size=1, max_size=4))
def test_model_stream_infer_answers_every_message_once_and_never_with_a_server_fault(frontend, requests):
    replies = list(frontend.kserve.ModelStreamInfer(iter(requests), timeout=TIMEOUT_S))
    assert len(replies) == len(requests)
    assert not [r.error_message for r in replies if "internal error" in r.error_message]


@FUZZ
@given(name=NAMES, version=VERSIONS)
def test_metadata_and_readiness_calls_never_answer_a_server_fault(frontend, name, version):
    k = frontend.kserve
    status(k.ModelReady, kpb.ModelReadyRequest(name=name, version=version))
    status(k.ModelMetadata, kpb.ModelMetadataRequest(name=name, version=version))
    status(k.ModelConfig, kpb.ModelConfigRequest(name=name, version=version))
    status(k.ModelStatistics, kpb.ModelStatisticsRequest(name=name, version=version))
    status(k.ServerReady, kpb.ServerReadyRequest())
    status(k.ServerLive, kpb.ServerLiveRequest())
    status(k.ServerMetadata, kpb.ServerMetadataRequest())


# ---- raw bytes as the serialized request ---------------------------------------------------

UNARY = [
    "/codedserve.v1.Frontend/Classify",
    "/codedserve.v1.Frontend/ListModels",
    "/inference.GRPCInferenceService/ModelInfer",
    "/inference.GRPCInferenceService/ModelMetadata",
    "/inference.GRPCInferenceService/ModelReady",
    "/inference.GRPCInferenceService/ServerReady",
]
STREAMS = ["/codedserve.v1.Frontend/ClassifyStream", "/inference.GRPCInferenceService/ModelStreamInfer"]


def _channel(f: Frontend, method: str) -> grpc.Channel:
    return f.channel if method.startswith("/codedserve") else f.kserve_channel


@FUZZ
@given(method=st.sampled_from(UNARY), data=st.binary(max_size=256))
def test_random_bytes_as_a_unary_request_never_get_a_server_fault(frontend, method, data):
    call = _channel(frontend, method).unary_unary(method)  # no serializers: the bytes go as they are
    status(call, data)


@FUZZ
@given(method=st.sampled_from(STREAMS), messages=st.lists(st.binary(max_size=128), min_size=1, max_size=3))
def test_random_bytes_as_stream_messages_never_get_a_server_fault(frontend, method, messages):
    call = _channel(frontend, method).stream_stream(method)
    status(lambda timeout: call(iter(messages), timeout=timeout), timeout=TIMEOUT_S)


def test_the_server_is_serving_and_answers_a_good_query_after_the_fuzzing(frontend):
    """Last in the module: after every example above."""
    _answers_a_good_query(frontend)
