"""Health tells the truth, against real processes: the frontend's grpc.health.v1 and its KServe
ServerReady/ModelReady follow what it can answer. Triton killed or stalled: NOT_SERVING within about
2 s (a probe every 0.5 s, 1 s to answer), SERVING again once it is back. The encoder or decoder down:
still SERVING (queries get their own outputs), and the route's ``codedserve.coded/<model>`` name and
the ``codedserve_route_degraded`` gauge say it is served uncoded.
"""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from bench.stack import FrontendSpec, Stack
from frontend.app.health import CODED_HEALTH_PREFIX, ROUTE_HEALTH_PREFIX
from service_common.server import LIVENESS_SERVICE
from service_common.tensors import from_numpy
from tests.integration import linear_models
from triton_local.server import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = linear_models.DEPLOYED
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DETECT_S = 2.5  # the "within ~2 s": a 0.5 s probe interval, a 1 s probe timeout, and slack
METRICS_PORT = free_ports(1)[0]
FRONTEND = FrontendSpec(
    flags=[
        "--route",
        f"{MODEL}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}",
        "--straggler-timeout-ms",
        "40",
        "--fill-timeout-ms",
        "100",
        "--allow-fault-metadata",
        "--metrics-port",
        str(METRICS_PORT),
    ],
    kserve=True,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    models = linear_models.write_repository(repo)
    with Stack(models, {"coded": FRONTEND}, model_repository=repo, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


class Probe:
    """The frontend's health and KServe readiness, as a load balancer or kubelet would ask them."""

    def __init__(self, stack: Stack) -> None:
        self._channel = grpc.insecure_channel(stack.address("coded"))
        self._kserve_channel = grpc.insecure_channel(stack.kserve_address("coded"))
        self.frontend = pb_grpc.FrontendStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._kserve_health = health_pb2_grpc.HealthStub(self._kserve_channel)
        self.kserve = kpb_grpc.GRPCInferenceServiceStub(self._kserve_channel)

    def status(self, name: str = "", kserve: bool = False) -> int:
        stub = self._kserve_health if kserve else self._health
        return stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status

    def ready(self) -> tuple[bool, bool, bool]:
        """KServe (ServerLive, ServerReady, ModelReady of the route's model)."""
        live = self.kserve.ServerLive(kpb.ServerLiveRequest(), timeout=2).live
        ready = self.kserve.ServerReady(kpb.ServerReadyRequest(), timeout=2).ready
        return live, ready, self.kserve.ModelReady(kpb.ModelReadyRequest(name=MODEL), timeout=2).ready

    def classify(self, fault: str | None = None, seed: int = 0) -> pb.ClassifyResponse:
        x = np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32)
        metadata = (("codedserve-fault", fault),) if fault else None
        return self.frontend.Classify(
            pb.ClassifyRequest(model=MODEL, input=from_numpy(x)), timeout=5, metadata=metadata
        )

    def close(self) -> None:
        self._channel.close()
        self._kserve_channel.close()


@pytest.fixture
def probe(stack):
    p = Probe(stack)
    yield p
    p.close()


def _within(seconds: float, predicate: Callable[[], bool], what: str) -> float:
    """Poll ``predicate`` until it holds (returns the seconds it took); fail after ``seconds``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, f"not {what} within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - start


def _metric(line_start: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read().decode()
    (value,) = [ln.rsplit(" ", 1)[1] for ln in text.splitlines() if ln.startswith(line_start)]
    return float(value)


def _everything_serving(probe: Probe) -> bool:
    coded = CODED_HEALTH_PREFIX + MODEL
    return all(probe.status(n, k) == SERVING for n in ("", coded) for k in (False, True)) and probe.ready() == (
        True,
        True,
        True,
    )


@pytest.mark.parametrize("service", ["encoder", "decoder"])
def test_a_coding_service_down_is_degraded_not_down_and_queries_are_still_answered(stack, probe, service):
    _within(DETECT_S, lambda: _everything_serving(probe), "serving at the start")
    stack.services[service].stop()
    try:
        _within(DETECT_S, lambda: probe.status(CODED_HEALTH_PREFIX + MODEL) == NOT_SERVING, "degraded")
        assert probe.status() == SERVING and probe.status(ROUTE_HEALTH_PREFIX + MODEL) == SERVING
        assert probe.ready() == (True, True, True)
        assert _metric(f'codedserve_route_degraded{{model="{MODEL}"}}') == 1.0
        address = stack.address(service)
        assert _metric(f'codedserve_dependency_up{{address="{address}",dependency="{service}"}}') == 0.0
        for seed in range(4):  # answered by their own outputs, uncoded
            reply = probe.classify(seed=seed)
            assert reply.source == pb.DEPLOYED
            x = np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32)
            np.testing.assert_allclose(reply.logits, linear_models.reference(x)[0], rtol=1e-4, atol=1e-4)
        with pytest.raises(grpc.RpcError) as err:  # a lost own output cannot be rebuilt now: said so
            probe.classify("fail")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and service in err.value.details()
    finally:
        stack.services[service].start().wait_serving(30)
    _within(DETECT_S, lambda: _everything_serving(probe), "serving (coded) again")
    assert _metric(f'codedserve_route_degraded{{model="{MODEL}"}}') == 0.0
    assert probe.classify("fail").source == pb.RECONSTRUCTED


def test_a_stalled_triton_is_not_serving_until_it_resumes(stack, probe):
    triton = stack.triton
    assert triton is not None and triton.pid is not None
    _within(DETECT_S, lambda: _everything_serving(probe), "serving at the start")
    os.kill(triton.pid, signal.SIGSTOP)
    try:
        _within(DETECT_S, lambda: probe.status() == NOT_SERVING, "NOT_SERVING after SIGSTOP")
        assert probe.ready() == (True, False, False)
    finally:
        os.kill(triton.pid, signal.SIGCONT)
    _within(DETECT_S, lambda: _everything_serving(probe), "serving after SIGCONT")


def test_health_is_not_serving_while_triton_is_dead_and_serving_again_once_it_is_back(stack, probe):
    """Last in the module: it kills Triton (and starts it again on the same port)."""
    triton = stack.triton
    assert triton is not None and triton.pid is not None
    _within(DETECT_S, lambda: _everything_serving(probe), "serving at the start")
    os.killpg(triton.pid, signal.SIGKILL)
    triton.stop()  # reaps it
    _within(DETECT_S, lambda: probe.status() == NOT_SERVING, "NOT_SERVING after SIGKILL")
    for name, kserve in (("", True), (ROUTE_HEALTH_PREFIX + MODEL, False), (ROUTE_HEALTH_PREFIX + MODEL, True)):
        assert probe.status(name, kserve) == NOT_SERVING
    assert probe.status(LIVENESS_SERVICE) == SERVING  # alive: a liveness probe must not restart it
    assert probe.ready() == (True, False, False)
    assert _metric(f'codedserve_route_up{{model="{MODEL}"}}') == 0.0
    with pytest.raises(grpc.RpcError) as err:
        probe.classify()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    triton.start()
    triton.wait_ready(60)
    _within(DETECT_S, lambda: _everything_serving(probe), "serving once Triton is back")
    assert probe.classify().source == pb.DEPLOYED
