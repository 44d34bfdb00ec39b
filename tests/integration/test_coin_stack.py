"""COIN through the real stack: the committed members mnist_coin_m0, mnist_coin_m1 and their Fisher-averaged
coded model mnist_coin_k2_fisher on three real tritonservers, a frontend serving the set ``mnist_coin``.
Member 1 straggles in every set (a pinned 3 s delay): its answer is decoded — exactly
2·f_c(x) − f_0(x), as onnxruntime computes it here — long before it would have come, and member 0's
is its own. The KServe port answers the set with one output per member, flagged per row."""

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
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from bench.stack import REPO_ROOT, FrontendSpec, Stack
from export.datasets import load
from export.spec import INPUT_NAME
from frontend.api.kserve import RECONSTRUCTED_ROWS_PARAM
from service_common.tensors import from_numpy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REPO = REPO_ROOT / "model_repository"
SET = "mnist_coin"
MEMBERS = ["mnist_coin_m0", "mnist_coin_m1"]
CODED = "mnist_coin_k2_fisher"
COMMON = ["--route", f"{SET}=coin:k=2", "--fill-timeout-ms", "1"]
FRONTENDS = {
    "healthy": FrontendSpec([*COMMON, "--straggler-timeout-ms", "2000"], tritons=(0, 1), parity_tritons=(2,)),
    "straggling": FrontendSpec(
        [*COMMON, "--straggler-timeout-ms", "200", "--inject-worker-faults", "1=delay=3000"],
        tritons=(0, 1),
        parity_tritons=(2,),
        kserve=True,
    ),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    missing = [m for m in [*MEMBERS, CODED] if not (REPO / m / "1" / "model.onnx").is_file()]
    assert not missing, f"committed COIN models missing: {missing} (python -m export.coin)"
    with Stack(
        [*MEMBERS, CODED], FRONTENDS, model_repository=REPO, triton_count=3, log_dir=tmp_path_factory.mktemp("logs")
    ) as running:
        yield running


def _images(n: int = 3) -> np.ndarray:
    return load("mnist", "test")[0][:n, None].astype(np.float32) / 255.0


def _onnx(name: str, x: np.ndarray) -> np.ndarray:
    path = Path(REPO / name / "1" / "model.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT_NAME: x})[0]


async def _classify(address: str, images: np.ndarray):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)

        async def one(i: int):
            start = time.perf_counter()
            reply = await stub.Classify(
                pb.ClassifyRequest(model=SET, input=from_numpy(images[i]), id=str(i)), timeout=10
            )
            return reply, time.perf_counter() - start

        return await asyncio.gather(*(one(i) for i in range(len(images))))


def _outputs(reply) -> dict[str, tuple[np.ndarray, bool]]:
    return {o.model: (np.array(o.logits, np.float32), o.reconstructed) for o in reply.outputs}


def test_every_member_answers_a_healthy_set(stack):
    images = _images()
    own = {m: _onnx(m, images) for m in MEMBERS}
    for i, (reply, _) in enumerate(asyncio.run(_classify(stack.address("healthy"), images))):
        outputs = _outputs(reply)
        assert list(outputs) == MEMBERS and not reply.reconstructed
        for m in MEMBERS:
            np.testing.assert_allclose(outputs[m][0], own[m][i], rtol=1e-4, atol=1e-4)


def test_a_straggling_member_is_decoded_from_the_coded_model(stack):
    images = _images()
    own0, coded = _onnx(MEMBERS[0], images), _onnx(CODED, images)
    for i, (reply, seconds) in enumerate(asyncio.run(_classify(stack.address("straggling"), images))):
        outputs = _outputs(reply)
        assert reply.scheme == "coin" and seconds < 2.0
        assert not outputs[MEMBERS[0]][1] and outputs[MEMBERS[1]][1]  # own, then decoded
        np.testing.assert_allclose(outputs[MEMBERS[0]][0], own0[i], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(outputs[MEMBERS[1]][0], 2 * coded[i] - own0[i], rtol=1e-3, atol=1e-3)


def test_the_kserve_port_answers_a_set_with_one_output_per_member(stack):
    images = _images(2)
    with grpc.insecure_channel(stack.kserve_address("straggling")) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(kpb.ModelMetadataRequest(name=SET), timeout=10)
        assert [o.name for o in metadata.outputs] == MEMBERS and metadata.name == SET
        request = kpb.ModelInferRequest(model_name=SET, id="set")
        request.inputs.add(name=metadata.inputs[0].name, datatype="FP32", shape=list(images.shape))
        request.raw_input_contents.append(images.tobytes())
        response = stub.ModelInfer(request, timeout=10)
    assert [o.name for o in response.outputs] == MEMBERS
    own0 = _onnx(MEMBERS[0], images)
    got = [np.frombuffer(raw, np.float32).reshape(2, -1) for raw in response.raw_output_contents]
    np.testing.assert_allclose(got[0], own0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], 2 * _onnx(CODED, images) - own0, rtol=1e-3, atol=1e-3)
    rows = [o.parameters[RECONSTRUCTED_ROWS_PARAM].string_param for o in response.outputs]
    assert rows == ["0,0", "1,1"]
