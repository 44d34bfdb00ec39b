"""ApproxIFER through the real stack: coded queries run on the unchanged deployed model on Triton,
one coded worker straggles and one lies (sign flip); the answers come back decoded, in time, and the
liar is named. The systematic variant answers originals directly and decodes only the straggler."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench.stack import Stack
from service_common.tensors import from_numpy
from tests.integration import linear_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = linear_models.DEPLOYED
FRONTENDS = {
    # K=2, S=1, A=1: N = 2K+2A+S-1 = 6 coded queries; worker 3 lies, worker 5 straggles for 3 s.
    "byzantine": [
        "--route",
        f"{MODEL}=approxifer:k=2,s=1,a=1",
        "--inject-coded-faults",
        "3=corrupt,5=delay=3000",
        "--straggler-timeout-ms",
        "100",
        "--fill-timeout-ms",
        "2000",
        "--allow-fault-metadata",
    ],
    # Systematic: the 2 originals go to the model as usual, plus N-K = 3 Berrut parities (N = 2K+S = 5).
    "systematic": [
        "--route",
        f"{MODEL}=approxifer:k=2,s=1,n=5,systematic=true",
        "--straggler-timeout-ms",
        "40",
        "--fill-timeout-ms",
        "2000",
        "--allow-fault-metadata",
    ],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    linear_models.write_repository(repo)
    with Stack([MODEL], FRONTENDS, model_repository=repo, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


def _query(i: int) -> np.ndarray:
    return np.random.default_rng(100 + i).random((1, 28, 28), dtype=np.float32)


async def _pair(address: str, faults: tuple[str | None, str | None]):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)

        async def one(i: int):
            start = time.perf_counter()
            metadata = (("codedserve-fault", faults[i]),) if faults[i] else None
            request = pb.ClassifyRequest(model=MODEL, input=from_numpy(_query(i)), id=str(i))
            return await stub.Classify(request, timeout=10, metadata=metadata), time.perf_counter() - start

        return await asyncio.gather(one(0), one(1))


def _close_to_reference(reply: pb.ClassifyResponse, i: int) -> bool:
    truth = linear_models.reference(_query(i))[0]
    return bool(np.abs(np.asarray(reply.logits) - truth).max() < 0.5 * np.abs(truth).max())


def test_a_straggling_and_a_lying_worker_are_both_masked(stack):
    results = asyncio.run(_pair(stack.address("byzantine"), (None, None)))
    for i, (reply, seconds) in enumerate(results):
        assert reply.reconstructed and reply.scheme == "approxifer"  # non-systematic: every answer is decoded
        assert list(reply.faulty_workers) == [3]
        assert seconds < 1.5, f"answer {i} took {seconds:.2f} s; the straggler needed 3 s"
        assert _close_to_reference(reply, i)


def test_systematic_answers_originals_directly_and_decodes_only_the_straggler(stack):
    results = asyncio.run(_pair(stack.address("systematic"), (None, "delay=3000")))
    (own, _), (rebuilt, seconds) = results
    assert not own.reconstructed
    np.testing.assert_allclose(own.logits, linear_models.reference(_query(0))[0], rtol=1e-4, atol=1e-4)
    assert rebuilt.reconstructed and rebuilt.scheme == "approxifer" and seconds < 1.5
    assert _close_to_reference(rebuilt, 1)
