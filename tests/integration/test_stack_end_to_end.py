"""The whole stack as real processes: tritonserver (CPU), encoder, decoder, frontends.

A straggling or failed deployed-model call is answered by reconstruction, marked, before the
straggler would have answered; with the linear models the reconstruction is exact. Bad input
gets clear statuses; a loss that cannot be decoded gets UNAVAILABLE, never a hang.
"""

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

STRAGGLER_MS = 40
FRONTENDS = {
    "coded": [
        "--route",
        f"{linear_models.DEPLOYED}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}",
        "--straggler-timeout-ms",
        str(STRAGGLER_MS),
        "--fill-timeout-ms",
        "2000",
        "--allow-fault-metadata",
        "--max-message-bytes",
        str(1 << 20),
    ],
    "uncoded": ["--route", f"{linear_models.DEPLOYED}=none", "--allow-fault-metadata"],
    "eager": [
        "--route",
        f"{linear_models.DEPLOYED}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)},decode=eager",
        "--straggler-timeout-ms",
        "5000",  # never waited for: an eager route decodes as soon as it can
        "--fill-timeout-ms",
        "2000",
        "--allow-fault-metadata",
    ],
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    models = linear_models.write_repository(repo)
    with Stack(models, FRONTENDS, model_repository=repo, log_dir=tmp_path_factory.mktemp("logs")) as running:
        # One group first: the first group over new connections took about the 40 ms straggler deadline
        # on 2 cores (a fresh model's first inference, before the frontend's own --warm-up), so the tests
        # below saw it reconstructed; the client's connection is still new here.
        asyncio.run(_classify_group(running.address("coded"), [None, None]))
        yield running


def _query(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 28, 28), dtype=np.float32)


def _request(x: np.ndarray, query_id: str = "") -> pb.ClassifyRequest:
    return pb.ClassifyRequest(model=linear_models.DEPLOYED, input=from_numpy(x), id=query_id)


async def _classify_group(address: str, faults: list[str | None], timeout: float = 10.0):
    """Send len(faults) queries at once (one coding group); returns (responses, seconds each)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)

        async def one(i: int, fault: str | None):
            start = time.perf_counter()
            metadata = (("codedserve-fault", fault),) if fault else None
            reply = await stub.Classify(_request(_query(i), str(i)), timeout=timeout, metadata=metadata)
            return reply, time.perf_counter() - start

        results = await asyncio.gather(*(one(i, f) for i, f in enumerate(faults)))
    return [r for r, _ in results], [t for _, t in results]


def test_list_models_describes_each_route(stack):
    with grpc.insecure_channel(stack.address("coded")) as channel:
        (info,) = pb_grpc.FrontendStub(channel).ListModels(pb.ListModelsRequest(), timeout=5).models
    assert (info.model, info.scheme, info.k, info.r) == (linear_models.DEPLOYED, "parm", 2, 1)
    assert info.parity_model == linear_models.parity_name(2) and info.params["encoder"] == "add"


def test_one_query_is_answered_by_the_deployed_model(stack):
    replies, _ = asyncio.run(_classify_group(stack.address("coded"), [None, None]))
    for i, reply in enumerate(replies):
        assert not reply.reconstructed and reply.source == pb.DEPLOYED and reply.scheme == "parm"
        np.testing.assert_allclose(reply.logits, linear_models.reference(_query(i))[0], rtol=1e-4, atol=1e-4)
        assert reply.label == int(np.argmax(linear_models.reference(_query(i))))


@pytest.mark.parametrize("fault", ["delay=3000", "fail"])
def test_a_straggler_is_reconstructed_exactly_and_before_it_would_have_answered(stack, fault):
    replies, seconds = asyncio.run(_classify_group(stack.address("coded"), [None, fault]))
    straggler = replies[1]
    assert straggler.reconstructed and straggler.source == pb.RECONSTRUCTED and straggler.scheme == "parm"
    assert replies[0].group_id == straggler.group_id
    np.testing.assert_allclose(straggler.logits, linear_models.reference(_query(1))[0], rtol=1e-3, atol=1e-3)
    assert seconds[1] < 1.0, f"reconstruction took {seconds[1]:.3f} s; the straggler needed 3 s"
    assert seconds[1] >= STRAGGLER_MS / 1e3 or fault == "fail"


def test_eager_decode_rebuilds_a_straggler_without_waiting_for_its_deadline(stack):
    replies, seconds = asyncio.run(_classify_group(stack.address("eager"), [None, "delay=3000"]))
    assert replies[1].reconstructed and replies[0].group_id == replies[1].group_id
    np.testing.assert_allclose(replies[1].logits, linear_models.reference(_query(1))[0], rtol=1e-3, atol=1e-3)
    assert seconds[1] < 1.0, f"took {seconds[1]:.3f} s: the route's straggler deadline (5 s) was waited for"


def test_a_partial_group_is_sealed_by_the_fill_timeout_and_still_protected(stack):
    replies, seconds = asyncio.run(_classify_group(stack.address("coded"), ["delay=5000"]))
    assert replies[0].reconstructed
    np.testing.assert_allclose(replies[0].logits, linear_models.reference(_query(0))[0], rtol=1e-3, atol=1e-3)
    assert 2.0 <= seconds[0] < 4.0  # waited for the 2 s fill timeout, not for the 5 s straggler


def test_an_uncoded_failure_is_unavailable_promptly(stack):
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_classify_group(stack.address("uncoded"), ["fail"]))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "cannot rebuild" in err.value.details()
    assert time.perf_counter() - start < 2.0


def test_a_stream_answers_every_query_once(stack):
    async def run():
        async with grpc.aio.insecure_channel(stack.address("coded")) as channel:
            stub = pb_grpc.FrontendStub(channel)
            requests = [_request(_query(i), str(i)) for i in range(9)]
            requests.append(pb.ClassifyRequest(model="nope", input=from_numpy(_query(0)), id="bad"))
            return [r async for r in stub.ClassifyStream(iter(requests), timeout=20)]

    replies = asyncio.run(run())
    assert sorted(r.id for r in replies) == sorted([*map(str, range(9)), "bad"])
    bad = next(r for r in replies if r.id == "bad")
    assert bad.status_code == grpc.StatusCode.NOT_FOUND.value[0] and "not served" in bad.error
    for r in replies:
        if r.id != "bad":
            np.testing.assert_allclose(r.logits, linear_models.reference(_query(int(r.id)))[0], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "request_, code, message",
    [
        (pb.ClassifyRequest(model="nope", input=from_numpy(_query(0))), grpc.StatusCode.NOT_FOUND, "not served"),
        (
            pb.ClassifyRequest(model=linear_models.DEPLOYED, input=from_numpy(np.zeros((28, 28), np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expected shape [1, 28, 28], got [28, 28]",
        ),
        (
            pb.ClassifyRequest(model=linear_models.DEPLOYED, input=from_numpy(np.zeros((1, 28, 28), np.float64))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "expected dtype float32, got float64",
        ),
        (
            pb.ClassifyRequest(model=linear_models.DEPLOYED, input=pb.Tensor(dtype="float32", shape=[0])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty tensor",
        ),
        (
            pb.ClassifyRequest(
                model=linear_models.DEPLOYED, input=from_numpy(np.full((1, 28, 28), np.nan, np.float32))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN",
        ),
        (
            pb.ClassifyRequest(model=linear_models.DEPLOYED, input=from_numpy(np.zeros((1, 600, 600), np.float32))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "",
        ),
        (pb.ClassifyRequest(model=linear_models.DEPLOYED), grpc.StatusCode.INVALID_ARGUMENT, "missing input"),
        (  # finite, but the linear model's logits were NaN and came back OK
            pb.ClassifyRequest(model=linear_models.DEPLOYED, input=from_numpy(np.full((1, 28, 28), 3e38, np.float32))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "exceeds the bound |x| <= 1e+06",
        ),
    ],
)
def test_bad_input_gets_a_clear_status(stack, request_, code, message):
    with grpc.insecure_channel(stack.address("coded")) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.FrontendStub(channel).Classify(request_, timeout=5)
    assert err.value.code() == code
    assert message in err.value.details()


def test_under_load_each_query_gets_its_own_answer_most_delayed_ones_rebuilt_and_triton_keeps_running(stack):
    """A regression guard for the Triton 2.51 cancel crash: late calls are awaited, never cancelled, so Triton
    is still running after a load in which every fifth call is held past the straggler deadline."""
    # Delayed queries are never neighbours, so each has an undelayed partner in its group of 2, and the delay is
    # past the straggler deadline (STRAGGLER_MS): each can be rebuilt once its partner and the parity are in.
    queries, every, delay_ms = 200, 5, 150
    delayed = set(range(0, queries, every))

    async def run():
        async with grpc.aio.insecure_channel(stack.address("coded")) as channel:
            stub = pb_grpc.FrontendStub(channel)

            async def one(i):
                fault = (("codedserve-fault", f"delay={delay_ms}"),) if i in delayed else None
                await asyncio.sleep(i * 0.004)
                return await stub.Classify(_request(_query(i), str(i)), timeout=10, metadata=fault)

            return await asyncio.gather(*(one(i) for i in range(queries)))

    replies = asyncio.run(run())
    assert [int(r.id) for r in replies] == list(range(queries))
    for i, reply in enumerate(replies):
        np.testing.assert_allclose(reply.logits, linear_models.reference(_query(i))[0], rtol=1e-3, atol=1e-3)
    rebuilt = {int(r.id) for r in replies if r.reconstructed}
    assert len(rebuilt & delayed) > len(delayed) / 2, f"{len(rebuilt & delayed)} of {len(delayed)} delayed rebuilt"
    assert stack.triton is not None and stack.triton.is_running()


def test_triton_down_gives_unavailable_promptly(stack):
    """Last in the module: it stops Triton."""
    assert stack.triton is not None
    stack.triton.stop()
    start = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(_classify_group(stack.address("coded"), [None], timeout=10))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.perf_counter() - start < 5.0
