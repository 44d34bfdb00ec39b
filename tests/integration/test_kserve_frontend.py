"""Triton's own KServe v2 gRPC protocol on the frontend: unmodified tritonclient code, pointed at the
frontend instead of Triton, gets the deployed model's answers (exact through reconstruction with the
linear models), reconstruction flags in the response parameters, and the status codes real Triton
returns for the same mistakes (each case is measured against the real tritonserver in the same run).
"""

from __future__ import annotations

import asyncio
import queue
import time
from functools import partial

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcclient_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from bench.stack import FrontendSpec, Stack
from frontend.api.kserve import RECONSTRUCTED_PARAM, RECONSTRUCTED_ROWS_PARAM, SCHEME_PARAM
from tests.integration import linear_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = linear_models.DEPLOYED
STRAGGLER_MS = 40
FRONTEND = FrontendSpec(
    flags=[
        "--route",
        f"{MODEL}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}",
        "--straggler-timeout-ms",
        str(STRAGGLER_MS),
        "--fill-timeout-ms",
        "100",
        "--allow-fault-metadata",
    ],
    kserve=True,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    models = linear_models.write_repository(repo)
    with Stack(models, {"coded": FRONTEND}, model_repository=repo, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture(scope="module")
def client(stack):
    with grpcclient.InferenceServerClient(stack.kserve_address("coded")) as c:
        yield c


@pytest.fixture(scope="module")
def triton(stack):
    assert stack.triton is not None
    with grpcclient.InferenceServerClient(stack.triton.grpc_url) as c:
        yield c


def _rows(seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 1, 28, 28), dtype=np.float32)


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _flags(result: grpcclient.InferResult) -> tuple[bool, str, str]:
    params = result.get_response().parameters
    return (
        params[RECONSTRUCTED_PARAM].bool_param,
        params[SCHEME_PARAM].string_param,
        params[RECONSTRUCTED_ROWS_PARAM].string_param,
    )


def test_server_and_model_readiness_and_metadata_match_triton(client, triton):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready(MODEL, model_version="7")
    assert client.get_model_metadata(MODEL) == triton.get_model_metadata(MODEL)
    assert client.get_model_config(MODEL) == triton.get_model_config(MODEL)
    assert client.get_server_metadata().name == "codedserve"
    stats = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    assert [s["name"] for s in stats] == [MODEL]


def test_batch_one_equals_the_linear_reference(client):
    x = _rows(0)
    result = client.infer(MODEL, [_input(x)], outputs=[grpcclient.InferRequestedOutput("logits")], request_id="q0")
    np.testing.assert_allclose(result.as_numpy("logits"), linear_models.reference(x), rtol=1e-4, atol=1e-4)
    assert _flags(result) == (False, "parm", "0")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "q0")
    assert response.outputs[0].datatype == "FP32" and list(response.outputs[0].shape) == [1, 10]


def test_a_named_version_reaches_triton_and_the_response_names_it(client):
    """Version 1 is the only one the repository has: asked for by name it answers, and says so; the frontend's
    calls to Triton name it too (infer_request), so Triton answers with that version, not its policy's."""
    assert client.is_model_ready(MODEL, model_version="1")
    result = client.infer(MODEL, [_input(_rows(2))], model_version="1", request_id="v1")
    np.testing.assert_allclose(result.as_numpy("logits"), linear_models.reference(_rows(2)), rtol=1e-4, atol=1e-4)
    assert (result.get_response().model_version, result.get_response().id) == ("1", "v1")


def test_a_version_triton_does_not_have_is_not_found_naming_model_and_version(client):
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [_input(_rows(0))], model_version="7")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert f"'{MODEL}' version 7 is not found" in err.value.message()


def test_batch_of_three_rows_each_answered(client):
    x = _rows(1, batch=3)
    result = client.infer(MODEL, [_input(x)])
    np.testing.assert_allclose(result.as_numpy("logits"), linear_models.reference(x), rtol=1e-4, atol=1e-4)
    assert _flags(result) == (False, "parm", "0,0,0")


def test_a_batch_of_rows_travels_to_triton_as_batches(client, triton):
    """B rows become B queries, but their calls to one instance leave together: fewer than B ModelInfers."""

    def counts() -> tuple[int, int]:
        stats = triton.get_inference_statistics(MODEL).model_stats[0]
        return stats.inference_stats.success.count, stats.inference_count

    requests_before, rows_before = counts()
    x = _rows(2, batch=16)
    result = client.infer(MODEL, [_input(x)])
    np.testing.assert_allclose(result.as_numpy("logits"), linear_models.reference(x), rtol=1e-4, atol=1e-4)
    requests, rows = (after - before for after, before in zip(counts(), (requests_before, rows_before), strict=True))
    assert rows == 16 and requests < 16, f"{rows} rows took {requests} ModelInfer calls"


def test_typed_contents_are_read_like_raw_contents(stack):
    x = _rows(2)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 28, 28])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    with grpc.insecure_channel(stack.kserve_address("coded")) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 10)
    np.testing.assert_allclose(got, linear_models.reference(x), rtol=1e-4, atol=1e-4)


async def test_aio_client_straggler_is_reconstructed_long_before_it_would_answer(stack):
    """Two concurrent requests fill one coding group; the one delayed 3 s is rebuilt exactly."""
    async with grpcclient_aio.InferenceServerClient(stack.kserve_address("coded")) as client:
        assert await client.is_server_ready() and await client.is_model_ready(MODEL)

        async def one(seed: int, headers: dict[str, str] | None):
            start = time.perf_counter()
            result = await client.infer(MODEL, [_input(_rows(seed))], headers=headers, client_timeout=10)
            return result, time.perf_counter() - start

        (normal, _), (straggler, seconds) = await asyncio.gather(
            one(10, None), one(11, {"codedserve-fault": "delay=3000"})
        )
    assert _flags(normal) == (False, "parm", "0")
    assert _flags(straggler) == (True, "parm", "1")
    np.testing.assert_allclose(straggler.as_numpy("logits"), linear_models.reference(_rows(11)), rtol=1e-3, atol=1e-3)
    assert STRAGGLER_MS / 1e3 <= seconds < 1.0, f"reconstruction took {seconds:.3f} s; the straggler needed 3 s"


def test_a_lone_failed_request_is_rebuilt_once_its_group_is_sealed(client):
    """The fill timeout seals the partial group (padded), so even a lone failed query is protected."""
    x = _rows(3, batch=1)
    result = client.infer(MODEL, [_input(x)], headers={"codedserve-fault": "fail"}, client_timeout=10)
    np.testing.assert_allclose(result.as_numpy("logits"), linear_models.reference(x), rtol=1e-3, atol=1e-3)
    assert _flags(result) == (True, "parm", "1")


def test_stream_answers_every_request_and_reports_errors_per_message(stack):
    results: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(stack.kserve_address("coded")) as client:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        for i in range(4):
            client.async_stream_infer(MODEL, [_input(_rows(20 + i))], request_id=str(i))
        client.async_stream_infer("nope", [_input(_rows(0))], request_id="bad")
        client.stop_stream()
    replies = [results.get(timeout=10) for _ in range(5)]
    errors = [e for _, e in replies if e is not None]
    assert len(errors) == 1 and "not served" in errors[0].message()
    for result, _ in (r for r in replies if r[1] is None):
        i = int(result.get_response().id)
        np.testing.assert_allclose(
            result.as_numpy("logits"), linear_models.reference(_rows(20 + i)), rtol=1e-3, atol=1e-3
        )


def _status(call) -> str:
    with pytest.raises(InferenceServerException) as err:
        call()
    return err.value.status()


ERROR_CASES = {
    "unknown model": lambda c: c.infer("nope", [_input(_rows(0))]),
    "unknown version": lambda c: c.infer(MODEL, [_input(_rows(0))], model_version="7"),
    "unknown model metadata": lambda c: c.get_model_metadata("nope"),
    "unknown model config": lambda c: c.get_model_config("nope"),
    "shape without batch dim": lambda c: c.infer(MODEL, [_input(_rows(0)[0])]),
    "wrong inner shape": lambda c: c.infer(MODEL, [_input(np.zeros((1, 1, 28, 27), np.float32))]),
    "batch over max_batch_size": lambda c: c.infer(MODEL, [_input(np.zeros((65, 1, 28, 28), np.float32))]),
    "wrong dtype": lambda c: c.infer(MODEL, [_input(_rows(0).astype(np.float64), datatype="FP64")]),
    "wrong input name": lambda c: c.infer(MODEL, [_input(_rows(0), name="x")]),
    "two inputs": lambda c: c.infer(MODEL, [_input(_rows(0)), _input(_rows(0), name="x")]),
    "unknown output": lambda c: c.infer(MODEL, [_input(_rows(0))], outputs=[grpcclient.InferRequestedOutput("z")]),
    "unknown model statistics": lambda c: c.get_inference_statistics("nope"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_get_the_status_real_triton_returns(client, triton, case):
    call = ERROR_CASES[case]
    expected = _status(partial(call, triton))
    assert expected in ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")
    assert _status(partial(call, client)) == expected


def _raw_request(shape: list[int], data: bytes | None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    if data is not None:
        request.raw_input_contents.append(data)
    return request


RAW_ERROR_CASES = {
    "byte count does not match the shape": _raw_request([1, 1, 28, 28], b"\0" * 100),
    "no data": _raw_request([1, 1, 28, 28], None),
    "empty batch": _raw_request([0, 1, 28, 28], b""),
}


@pytest.mark.parametrize("case", list(RAW_ERROR_CASES))
def test_malformed_requests_get_the_status_real_triton_returns(stack, case):
    codes = []
    for address in (stack.triton.grpc_url, stack.kserve_address("coded")):
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as err:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(RAW_ERROR_CASES[case], timeout=10)
        codes.append(err.value.code())
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2


def test_the_client_deadline_bounds_a_batch_that_cannot_be_rebuilt(client):
    """Four delayed rows: at least two share a coding group, which one parity cannot rebuild."""
    start = time.perf_counter()
    status = _status(
        lambda: client.infer(
            MODEL, [_input(_rows(4, batch=4))], client_timeout=0.5, headers={"codedserve-fault": "delay=3000"}
        )
    )
    assert status == "StatusCode.DEADLINE_EXCEEDED"
    assert time.perf_counter() - start < 1.5


@pytest.mark.parametrize("value", [np.nan, 3e38])
def test_nan_and_huge_inputs_are_rejected_before_they_reach_a_coding_group(client, value):
    """A deliberate difference from Triton (which computes NaNs): one NaN query — or one so large that the
    model's activations overflow to NaN — would poison the reconstructions of its whole group."""
    assert (
        _status(lambda: client.infer(MODEL, [_input(np.full((1, 1, 28, 28), value, np.float32))]))
        == "StatusCode.INVALID_ARGUMENT"
    )


def test_unsupported_triton_extensions_are_unimplemented(client):
    assert _status(client.get_model_repository_index) == "StatusCode.UNIMPLEMENTED"
    assert _status(lambda: client.load_model(MODEL)) == "StatusCode.UNIMPLEMENTED"
    assert _status(client.get_system_shared_memory_status) == "StatusCode.UNIMPLEMENTED"


def test_grpc_health_reports_serving_on_the_kserve_port(stack):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(stack.kserve_address("coded")) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
