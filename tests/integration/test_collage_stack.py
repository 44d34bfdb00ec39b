"""Collage-CNN through the real stack: the committed mnist_cnn and mnist_collage_s2 on real tritonservers,
the coding services, a frontend with ``mnist_cnn=collage:s=2``. A delayed query is answered from its own
cell of the collage model's output — exactly the row onnxruntime computes for the same collage here — and
the others with their own outputs. With Collage's fallback on and the collage slow too, the delayed
query is resent to the other instance and answered with its own output instead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench.stack import REPO_ROOT, FrontendSpec, Stack
from coding import collage
from export.datasets import load
from export.spec import INPUT_NAME
from service_common.tensors import from_numpy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = REPO_ROOT / "model_repository"
MODELS = ["mnist_cnn", collage.collage_model_name("mnist", 2)]
FRONTEND = FrontendSpec(
    flags=[
        "--route",
        "mnist_cnn=collage:s=2",
        "--straggler-timeout-ms",
        "500",  # the own answers below must not be rebuilt because a loaded machine made them late
        "--fill-timeout-ms",
        "2000",
        "--allow-fault-metadata",
    ],
    tritons=(0,),
    parity_tritons=(1,),
)
# Collage's fallback: the collage call (worker 4) is slow too, so a slow query is resent at 300 ms.
RESEND = FrontendSpec(
    flags=[*FRONTEND.flags, "--resend-after-ms", "300", "--inject-worker-faults", "4=delay=3000"],
    tritons=(0, 1),
    parity_tritons=(1,),
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(
        MODELS,
        {"collage": FRONTEND, "resend": RESEND},
        model_repository=REPO,
        triton_count=2,
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:
        yield running


def _images() -> np.ndarray:
    return load("mnist", "test")[0][:4, None].astype(np.float32) / 255.0


def _onnx(name: str, x: np.ndarray) -> np.ndarray:
    path = Path(REPO / name / "1" / "model.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]


async def _classify_group(address: str, images: np.ndarray, faults: list[str | None]):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)

        async def one(i: int):
            metadata = (("codedserve-fault", faults[i]),) if faults[i] else None
            start = time.perf_counter()
            request = pb.ClassifyRequest(model="mnist_cnn", input=from_numpy(images[i]), id=str(i))
            return await stub.Classify(request, timeout=10, metadata=metadata), time.perf_counter() - start

        return await asyncio.gather(*(one(i) for i in range(len(images))))


def test_a_delayed_query_is_answered_from_its_collage_cell(stack):
    images = _images()
    replies = asyncio.run(_classify_group(stack.address("collage"), images, [None, None, "delay=3000", None]))
    cells = _onnx(MODELS[1], collage.tile(images, 2)[None])[0]  # (4, 10): the collage model's rows
    own = _onnx("mnist_cnn", images)
    for i, (reply, seconds) in enumerate(replies):
        if i == 2:
            assert reply.reconstructed and reply.scheme == "collage" and seconds < 1.0
            np.testing.assert_allclose(reply.logits, cells[2], rtol=1e-4, atol=1e-4)
        else:
            assert not reply.reconstructed
            np.testing.assert_allclose(reply.logits, own[i], rtol=1e-4, atol=1e-4)


def test_with_the_collage_slow_too_a_delayed_query_is_resent_and_answered_by_its_own_model(stack):
    images = _images()
    replies = asyncio.run(_classify_group(stack.address("resend"), images, [None, None, "delay=3000", None]))
    own = _onnx("mnist_cnn", images)
    for i, (reply, _) in enumerate(replies):
        assert not reply.reconstructed
        np.testing.assert_allclose(reply.logits, own[i], rtol=1e-4, atol=1e-4)
    assert 0.3 <= replies[2][1] < 2.0  # the resend's answer: after the resend deadline, long before 3 s
