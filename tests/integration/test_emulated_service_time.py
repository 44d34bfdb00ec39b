"""Emulated accelerator time in the real tritonserver: an instance held for its drawn time makes the next
request wait, as a busy accelerator would; without a law the same requests do not wait; a law that grows
with the batch holds a many-row request longer; two models on one server take turns on its one accelerator;
a testbed's readings wait for a backlog to drain."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as grpcclient_aio

from bench.testbed.measure import pending_requests, settled_readings
from export import spec
from export.onnx_export import config_text
from tests.integration import linear_models
from triton_local import TritonConfig, TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EMULATED, OFF, GROWING, TWIN = linear_models.DEPLOYED, "linear_off", "linear_growing", "linear_twin"
LAW_MS = 50.0
LAWS = f"{EMULATED}=fixed:ms={LAW_MS};{TWIN}=fixed:ms={LAW_MS};{GROWING}=fixed:ms=20,batch=linear:per_row=1"


def _repository(root: Path) -> Path:
    """The linear model four times, one instance each: ``EMULATED``, ``TWIN`` and ``OFF`` without a dynamic
    batcher (every request is its own execution), ``GROWING`` with one."""
    linear_models.write_repository(root, ks=())
    for name in (OFF, GROWING, TWIN):
        shutil.copytree(root / EMULATED, root / name)
    for name in (EMULATED, OFF, GROWING, TWIN):
        text = config_text(name)
        assert "dynamic_batching { }\n" in text and "count: 1" in text
        (root / name / "config.pbtxt").write_text(
            text if name == GROWING else text.replace("dynamic_batching { }\n", "")
        )
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("emulated")
    config = TritonConfig(
        _repository(root / "repo"),
        models=(EMULATED, OFF, GROWING, TWIN),
        log_path=root / "tritonserver.log",
        service_time=LAWS,
    )
    with TritonServer(config) as started:
        yield started


def _images(rows: int) -> np.ndarray:
    return np.random.default_rng(rows).standard_normal((rows, *spec.IMAGE_SHAPE)).astype(np.float32)


async def _infer(client: grpcclient_aio.InferenceServerClient, model: str, x: np.ndarray) -> None:
    inputs = [grpcclient_aio.InferInput(spec.INPUT_NAME, list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = await client.infer(model, inputs)
    np.testing.assert_allclose(result.as_numpy(spec.OUTPUT_NAME), linear_models.reference(x), rtol=1e-4, atol=1e-4)


async def _two_at_once(client: grpcclient_aio.InferenceServerClient, model: str, x: np.ndarray) -> list[float]:
    """Send two requests together; the seconds from sending until each answer, answers checked."""
    sent = time.monotonic()

    async def one() -> float:
        await _infer(client, model, x)
        return time.monotonic() - sent

    return sorted(await asyncio.gather(one(), one()))


async def _executions(client: grpcclient_aio.InferenceServerClient, model: str) -> int:
    stats = await client.get_inference_statistics(model, as_json=True)
    return int(stats["model_stats"][0].get("execution_count", 0))


async def test_emulated_instance_queues_the_second_request(server: TritonServer) -> None:
    x = _images(1)
    client = grpcclient_aio.InferenceServerClient(server.grpc_url)
    try:
        for model in (EMULATED, OFF):  # warm: the first run of a session is slower
            await _two_at_once(client, model, x)
        before = await _executions(client, EMULATED)
        emulated = await _two_at_once(client, EMULATED, x)
        executions = await _executions(client, EMULATED) - before
        off = await _two_at_once(client, OFF, x)
    finally:
        await client.close()
    assert executions == 2  # not batched together: the second waited for the instance, not for a batch
    assert emulated[0] >= LAW_MS / 1e3
    assert emulated[1] >= 2 * LAW_MS / 1e3, emulated  # held 50 ms behind the first, then its own 50 ms
    assert off[1] < 2 * LAW_MS / 1e3, off  # the comparison: without a law nothing holds the instance
    assert server.log_path is not None and "emulated service time fixed:ms=50.0" in server.log_path.read_text()


async def test_emulated_time_grows_with_the_rows_of_an_execution(server: TritonServer) -> None:
    """fixed:ms=20 with per_row=1: one row holds 20 ms, four rows 20 * (1 + 3) = 80 ms."""
    client = grpcclient_aio.InferenceServerClient(server.grpc_url)
    try:
        await _infer(client, GROWING, _images(1))  # warm
        sent = time.monotonic()
        await _infer(client, GROWING, _images(4))
        elapsed = time.monotonic() - sent
    finally:
        await client.close()
    assert elapsed >= 0.080, elapsed


async def test_emulated_models_on_one_server_take_turns_on_its_accelerator(server: TritonServer) -> None:
    """One request to each of two emulated models at once: the second waits for the first's 50 ms, as two
    models on one GPU would; meanwhile the accelerator shows busy, and idle once both are answered."""
    x = _images(1)
    client = grpcclient_aio.InferenceServerClient(server.grpc_url)
    try:
        await asyncio.gather(_infer(client, EMULATED, x), _infer(client, TWIN, x))  # warm
        assert not server.accelerator_busy()
        sent = time.monotonic()

        async def one(model: str) -> float:
            await _infer(client, model, x)
            return time.monotonic() - sent

        async def probe() -> bool:
            await asyncio.sleep(LAW_MS / 2e3)  # inside the first execution's hold
            return await asyncio.to_thread(server.accelerator_busy)

        *answered, busy = await asyncio.gather(one(EMULATED), one(TWIN), probe())
    finally:
        await client.close()
    assert sorted(answered)[1] >= 2 * LAW_MS / 1e3, answered
    assert busy
    assert not server.accelerator_busy()


async def test_emulated_backlog_settles_only_once_drained(server: TritonServer) -> None:
    """Eight queued 50 ms executions and a quiet time shorter than one: the settled readings still wait
    until Triton's queue is empty and the accelerator idle, so every row is counted."""
    x = _images(1)
    client = grpcclient_aio.InferenceServerClient(server.grpc_url)
    try:
        await _infer(client, EMULATED, x)  # warm
        before = (await asyncio.to_thread(settled_readings, [server]))[0].rows
        calls = [asyncio.ensure_future(_infer(client, EMULATED, x)) for _ in range(8)]
        await asyncio.sleep(LAW_MS / 2e3)  # all sent; the first executing
        assert await asyncio.to_thread(pending_requests, server) > 0
        settled = (await asyncio.to_thread(settled_readings, [server], 0.01, 0.005))[0].rows
        await asyncio.gather(*calls)
    finally:
        await client.close()
    assert settled - before == 8
