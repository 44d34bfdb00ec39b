"""Readiness isolates a route, against a real tritonserver: a frontend with two routes, one of whose model
Triton has in its repository but does not serve (explicit model control, not loaded), is SERVING for the
other; the held route is NOT_SERVING under its own health name and its queries are refused UNAVAILABLE at
once, naming the route and the model. Triton loading the model later brings the route in; unloading the
other route's model later takes only that route out. Liveness stays SERVING throughout."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from bench.stack import REPO_ROOT
from frontend.app.health import ROUTE_HEALTH_PREFIX
from service_common.server import LIVENESS_SERVICE
from service_common.tensors import from_numpy
from tests.integration import linear_models
from triton_local.server import TritonConfig, TritonServer, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = linear_models.DEPLOYED
HELD = linear_models.parity_name(2)  # in the repository, not loaded: a route on it is held by Triton
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DETECT_S = 5.0  # a probe (and a load try) every 0.5 s, a 1 s probe timeout, and slack for a loaded machine


@pytest.fixture
def triton(tmp_path):
    repo = tmp_path / "repo"
    linear_models.write_repository(repo)
    grpc_port, http_port, metrics_port = free_ports(3)
    config = TritonConfig(
        repo,
        models=(MODEL,),
        grpc_port=grpc_port,
        http_port=http_port,
        metrics_port=metrics_port,
        log_path=tmp_path / "tritonserver.log",
    )
    with TritonServer(config) as server:
        yield server


@pytest.fixture
def frontend(triton, tmp_path) -> Iterator[grpc.Channel]:
    """``python -m frontend`` with the two routes, in-process coding; its channel."""
    (port,) = free_ports(1)
    argv = [sys.executable, "-mfrontend", "--address", f"127.0.0.1:{port}", "--triton-url", triton.grpc_url]
    routes = ["--route", f"{MODEL}=none", "--route", f"{HELD}=none"]
    with open(tmp_path / "frontend.log", "w") as log:
        process = subprocess.Popen([*argv, *routes, "--coding", "local"], cwd=REPO_ROOT, stdout=log, stderr=log)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        process.terminate()
        process.wait(timeout=30)


def _status(channel: grpc.Channel, name: str = "") -> int | None:
    try:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status
    except grpc.RpcError:
        return None  # not listening yet


def _within(seconds: float, predicate: Callable[[], bool], what: str) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, f"not {what} within {seconds} s"
        time.sleep(0.05)


def _classify(channel: grpc.Channel, model: str) -> pb.ClassifyResponse:
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    return pb_grpc.FrontendStub(channel).Classify(pb.ClassifyRequest(model=model, input=from_numpy(x)), timeout=5)


def _refused_at_once(channel: grpc.Channel, model: str) -> str:
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        _classify(channel, model)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 0.5  # refused, not left to time out on a Triton that is not there
    return caught.value.details()


def _triton(triton: TritonServer) -> kpb_grpc.GRPCInferenceServiceStub:
    return kpb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(triton.grpc_url))


def test_route_isolation_a_held_model_takes_only_its_route_out(triton, frontend):
    _within(60, lambda: _status(frontend) == SERVING, "SERVING (the pod: one route answers)")
    assert _status(frontend, ROUTE_HEALTH_PREFIX + MODEL) == SERVING
    assert _status(frontend, ROUTE_HEALTH_PREFIX + HELD) == NOT_SERVING
    assert _status(frontend, LIVENESS_SERVICE) == SERVING
    details = _refused_at_once(frontend, HELD)
    assert f"route {HELD}=none" in details and f"model {HELD!r}" in details and "not loaded" in details, details
    x = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)
    np.testing.assert_allclose(_classify(frontend, MODEL).logits, linear_models.reference(x)[0], rtol=1e-4)


def test_route_isolation_a_route_joins_once_triton_loads_and_leaves_once_it_unloads(triton, frontend):
    _within(60, lambda: _status(frontend) == SERVING, "SERVING")
    stub = _triton(triton)
    stub.RepositoryModelLoad(kpb.RepositoryModelLoadRequest(model_name=HELD), timeout=60)
    _within(DETECT_S, lambda: _status(frontend, ROUTE_HEALTH_PREFIX + HELD) == SERVING, "the loaded route in")
    assert _classify(frontend, HELD).logits
    stub.RepositoryModelUnload(kpb.RepositoryModelUnloadRequest(model_name=MODEL), timeout=60)
    _within(DETECT_S, lambda: _status(frontend, ROUTE_HEALTH_PREFIX + MODEL) == NOT_SERVING, "the unloaded route out")
    assert _status(frontend) == SERVING and _status(frontend, LIVENESS_SERVICE) == SERVING
    details = _refused_at_once(frontend, MODEL)
    assert f"route {MODEL}=none" in details and f"no ready Triton instance for {MODEL}" in details, details
    assert _classify(frontend, HELD).logits
