"""Health says whether queries get answered, reconstructions included, against real processes: a
Collage route whose deployed model's only Triton stalls is still answered, every query rebuilt from
its cell of the collage model's output on the other Triton, so the frontend stays SERVING (``""`` and
the route's name) while ``codedserve.coded/<model>`` says it is no longer protected from stragglers."""

from __future__ import annotations

import os
import signal
import time

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack import REPO_ROOT, FrontendSpec, Stack
from coding import collage
from export.datasets import load
from frontend.app.health import CODED_HEALTH_PREFIX, ROUTE_HEALTH_PREFIX
from service_common.tensors import from_numpy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "mnist_cnn"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DETECT_S = 2.5  # a 0.5 s probe interval, a 1 s probe timeout, and slack
FRONTEND = FrontendSpec(
    flags=["--route", f"{MODEL}=collage:s=2", "--straggler-timeout-ms", "30", "--fill-timeout-ms", "20"],
    tritons=(0,),
    parity_tritons=(1,),
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    models = [MODEL, collage.collage_model_name("mnist", 2)]
    with Stack(
        models,
        {"collage": FRONTEND},
        model_repository=REPO_ROOT / "model_repository",
        triton_count=2,
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:
        yield running


def _within(seconds: float, condition) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_route_answered_by_reconstructions_alone_stays_serving_and_says_it_is_unprotected(stack):
    deployed = stack.tritons[0]
    assert deployed.pid is not None
    x = load("mnist", "test")[0][:16, None].astype(np.float32) / 255.0
    with grpc.insecure_channel(stack.address("collage")) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        frontend = pb_grpc.FrontendStub(channel)

        def status(name: str = "") -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status

        assert status() == SERVING and status(CODED_HEALTH_PREFIX + MODEL) == SERVING
        os.kill(deployed.pid, signal.SIGSTOP)
        try:
            assert _within(DETECT_S, lambda: status(CODED_HEALTH_PREFIX + MODEL) == NOT_SERVING), "never unprotected"
            assert status() == SERVING and status(ROUTE_HEALTH_PREFIX + MODEL) == SERVING
            futures = [
                frontend.Classify.future(pb.ClassifyRequest(model=MODEL, input=from_numpy(x[i])), timeout=5)
                for i in range(len(x))
            ]
            answers = [f.result() for f in futures]
            assert all(a.reconstructed for a in answers), [a.reconstructed for a in answers]
            assert status() == SERVING  # throughout: the stall is seen, and the route is still answered
        finally:
            os.kill(deployed.pid, signal.SIGCONT)
        assert _within(DETECT_S, lambda: status(CODED_HEALTH_PREFIX + MODEL) == SERVING), "not protected again"
