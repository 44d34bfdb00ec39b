"""The Triton pool over ModelStreamInfer (``--triton-transport stream``) against a real tritonserver:
answers matched to their calls, Triton's errors as WorkerErrors, a stalled instance timing calls out and
answering the next ones, and a restarted instance reached over a new stream."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from export import spec
from frontend.core.calls import CallInfo, WorkerError
from frontend.transport.triton import TritonPool
from tests.integration import linear_models
from triton_local.server import TritonConfig, TritonServer, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DEPLOYED, PARITY = linear_models.DEPLOYED, linear_models.parity_name(2)


def _rows(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *spec.IMAGE_SHAPE), dtype=np.float32)


async def _until_answered(pool: TritonPool, call: CallInfo, x: np.ndarray, signature) -> np.ndarray:  # type: ignore[no-untyped-def]
    for _ in range(100):
        try:
            return await pool.infer(call, x, signature)
        except WorkerError:
            await asyncio.sleep(0.1)
    raise AssertionError("Triton was not reached again")


async def test_calls_over_one_stream_per_instance(tmp_path):
    repo = tmp_path / "repo"
    models = linear_models.write_repository(repo)
    port = free_ports(1)[0]
    config = TritonConfig(repo, grpc_port=port, models=tuple(models), log_path=tmp_path / "triton.log")
    triton = TritonServer(config).start()
    pool = TritonPool((triton.grpc_url,), 1.0, 1 << 22, transport="stream", reconnect_backoff_ms=200)
    try:
        triton.wait_ready(60)
        await pool.start()
        deployed, parity = await pool.signature(DEPLOYED, 0), await pool.signature(PARITY, 0)

        # Rows of both models at once, on one stream: each call gets its own rows' answer.
        xs = [_rows(i, 1 + i % 3) for i in range(8)]
        calls = [
            pool.infer(CallInfo(DEPLOYED if i % 2 else PARITY, 0), x, deployed if i % 2 else parity)
            for i, x in enumerate(xs)
        ]
        outs = await asyncio.gather(*calls)
        for i, (x, out) in enumerate(zip(xs, outs, strict=True)):
            if i % 2:
                np.testing.assert_allclose(out, linear_models.reference(x), rtol=1e-5, atol=1e-5)
            else:
                assert out.shape == (len(x), *parity.output_shape)

        # Triton's error for one call arrives on the stream and fails that call alone.
        with pytest.raises(WorkerError, match="nope") as error:
            await pool.infer(CallInfo("nope", 0), xs[0], deployed)
        assert not error.value.transport
        np.testing.assert_allclose(
            await pool.infer(CallInfo(DEPLOYED, 0), xs[1], deployed), linear_models.reference(xs[1]), rtol=1e-5
        )

        # Stalled: the call times out (its message is not withdrawn); after the stall the next call is
        # answered with its own rows, not the late answer.
        assert triton.pid is not None
        os.kill(triton.pid, signal.SIGSTOP)
        try:
            with pytest.raises(WorkerError, match="DEADLINE_EXCEEDED"):
                await pool.infer(CallInfo(DEPLOYED, 0), xs[2], deployed)
        finally:
            os.kill(triton.pid, signal.SIGCONT)
        np.testing.assert_allclose(
            await pool.infer(CallInfo(DEPLOYED, 0), xs[3], deployed), linear_models.reference(xs[3]), rtol=1e-5
        )

        # Stopped: the stream breaks (a transport failure, retried elsewhere by the coordinator);
        # restarted on the same port: reached over a new stream.
        triton.stop()
        with pytest.raises(WorkerError) as down:
            await pool.infer(CallInfo(DEPLOYED, 0), xs[4], deployed)
        assert down.value.transport
        triton.start()
        triton.wait_ready(60)
        out = await _until_answered(pool, CallInfo(DEPLOYED, 0), xs[5], deployed)
        np.testing.assert_allclose(out, linear_models.reference(xs[5]), rtol=1e-5, atol=1e-5)
    finally:
        await pool.close()
        triton.stop()
