"""The slot abstraction through the real stack: three tritonservers, the coding services, frontends.

Two toy schemes plug into the unchanged services (``CODEDSERVE_SCHEME_MODULES=tests.toy_schemes``):
``tiles`` (Collage's shape: one coded output of shape [k, classes] answers every query by itself) and
``ensemble`` (COIN's shape: one query on two models plus a coded model, no encoder call). With exact
linear models every reconstruction must equal the true output. Then one Triton is stalled (SIGSTOP)
and every query of every scheme is still answered in time: placement put no two slots of a group on
the stalled instance.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench.stack import FrontendSpec, Stack
from service_common.tensors import from_numpy
from tests import toy_schemes
from tests.integration import linear_models, toy_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ALL = (0, 1, 2)  # every frontend spreads data and coded slots over all three Tritons
COMMON = ["--straggler-timeout-ms", "40", "--fill-timeout-ms", "2000", "--allow-fault-metadata"]
# Tests that tell own answers from reconstructions wait longer before decoding: on a loaded 2-core machine
# an own answer can take longer than 40 ms (a freshly loaded model's first call, or a busy CPU).
PATIENT = ["--straggler-timeout-ms", "500", "--fill-timeout-ms", "2000", "--allow-fault-metadata"]
FRONTENDS = {
    "tiles": FrontendSpec([*PATIENT, "--route", f"{linear_models.DEPLOYED}=tiles:k=2"], tritons=ALL),
    "ensemble": FrontendSpec([*PATIENT, "--route", f"{toy_schemes.ENSEMBLE}=ensemble"], tritons=ALL),
    # Worker 1 is the second member (data slots first): slow in every group.
    "slow_member": FrontendSpec(
        [*COMMON, "--route", f"{toy_schemes.ENSEMBLE}=ensemble", "--inject-worker-faults", "1=delay=3000"],
        tritons=ALL,
    ),
    "parm": FrontendSpec(
        [*COMMON, "--route", f"{linear_models.DEPLOYED}=parm:k=2,parity_model={linear_models.parity_name(2)}"],
        tritons=ALL,
    ),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    models = linear_models.write_repository(repo) + toy_models.write_repository(repo, linear_models.weights())
    with Stack(
        models,
        FRONTENDS,
        model_repository=repo,
        log_dir=tmp_path_factory.mktemp("logs"),
        triton_count=3,
        service_env={"CODEDSERVE_SCHEME_MODULES": "tests.toy_schemes"},
    ) as running:
        # Warm every model on every Triton: a freshly loaded model's first call can outlast a 40 ms
        # straggler deadline, and the tests below tell own answers from reconstructions.
        for name, model, size in (("tiles", linear_models.DEPLOYED, 2), ("ensemble", toy_schemes.ENSEMBLE, 1)):
            for first in range(900, 912, size):
                asyncio.run(_classify(running.address(name), model, [None] * size, first))
        yield running


def _query(i: int) -> np.ndarray:
    return np.random.default_rng(200 + i).random((1, 28, 28), dtype=np.float32)


async def _classify(address: str, model: str, faults: list[str | None], first: int = 0, timeout: float = 10.0):
    """Send len(faults) queries at once; returns [(reply, seconds)]."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)

        async def one(i: int, fault: str | None):
            start = time.perf_counter()
            metadata = (("codedserve-fault", fault),) if fault else None
            request = pb.ClassifyRequest(model=model, input=from_numpy(_query(first + i)), id=str(first + i))
            return await stub.Classify(request, timeout=timeout, metadata=metadata), time.perf_counter() - start

        return await asyncio.gather(*(one(i, f) for i, f in enumerate(faults)))


def _exact(values, truth) -> None:
    np.testing.assert_allclose(np.asarray(values), truth, rtol=1e-3, atol=1e-3)


def test_list_models_names_every_model_and_slot(stack):
    with grpc.insecure_channel(stack.address("ensemble")) as channel:
        (info,) = pb_grpc.FrontendStub(channel).ListModels(pb.ListModelsRequest(), timeout=5).models
    assert dict(info.models) == toy_schemes.EnsembleScheme().models(toy_schemes.ENSEMBLE)
    assert (info.data_slots, info.coded_slots, info.r) == (2, 1, 1)


def test_a_delayed_query_is_answered_from_its_row_of_the_tile_output(stack):
    (own, _), (rebuilt, seconds) = asyncio.run(
        _classify(stack.address("tiles"), linear_models.DEPLOYED, [None, "delay=3000"])
    )
    assert not own.reconstructed and rebuilt.reconstructed and rebuilt.scheme == "tiles"
    _exact(own.logits, linear_models.reference(_query(0))[0])
    _exact(rebuilt.logits, linear_models.reference(_query(1))[0])
    assert list(rebuilt.outputs[0].shape) == [10] and seconds < 1.0


def test_the_tile_output_rebuilds_every_query_of_its_group_without_partners(stack):
    replies = asyncio.run(_classify(stack.address("tiles"), linear_models.DEPLOYED, ["fail", "delay=3000"], first=2))
    for i, (reply, seconds) in enumerate(replies):
        assert reply.reconstructed and seconds < 1.0
        _exact(reply.logits, linear_models.reference(_query(2 + i))[0])


def test_one_query_is_answered_by_every_member_model(stack):
    ((reply, _),) = asyncio.run(_classify(stack.address("ensemble"), toy_schemes.ENSEMBLE, [None], first=4))
    assert [o.model for o in reply.outputs] == [f"{toy_schemes.ENSEMBLE}_m0", f"{toy_schemes.ENSEMBLE}_m1"]
    assert not reply.reconstructed
    for member, output in enumerate(reply.outputs):
        _exact(output.logits, toy_models.member_reference(member, _query(4))[0])
    _exact(reply.logits, toy_models.member_reference(0, _query(4))[0])  # the first output, as before


def test_a_slow_member_is_rebuilt_from_the_coded_model_and_the_other_member(stack):
    ((reply, seconds),) = asyncio.run(_classify(stack.address("slow_member"), toy_schemes.ENSEMBLE, [None], first=5))
    assert [o.reconstructed for o in reply.outputs] == [False, True] and reply.reconstructed
    for member, output in enumerate(reply.outputs):
        _exact(output.logits, toy_models.member_reference(member, _query(5))[0])
    assert seconds < 1.0, f"took {seconds:.2f} s; the slow member needed 3 s"


@pytest.mark.parametrize(
    "frontend, model, size",
    [
        ("parm", linear_models.DEPLOYED, 2),
        ("tiles", linear_models.DEPLOYED, 2),
        ("ensemble", toy_schemes.ENSEMBLE, 1),
    ],
)
def test_a_stalled_triton_costs_each_group_at_most_one_slot(stack, frontend, model, size):
    """Groups whose slots shared the stalled instance could not be rebuilt and would wait for it."""
    stalled = stack.tritons[0]
    assert stalled.pid is not None
    os.kill(stalled.pid, signal.SIGSTOP)
    try:
        for first in range(10, 10 + 6 * size, size):  # six groups in turn, so each is placed afresh
            for reply, seconds in asyncio.run(_classify(stack.address(frontend), model, [None] * size, first)):
                assert seconds < 2.0, f"{frontend}: query {reply.id} took {seconds:.2f} s behind the stall"
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
