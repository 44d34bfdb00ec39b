"""python -m bench.client_cost: what one Triton call costs the caller, tritonclient's aio wrappers vs the raw stub.

Starts one tritonserver (CPU) with the test suite's linear model and sends the same single-row
ModelInfer sequentially through each client in interleaved rounds; prints wall time and this
process's CPU time per call. The frontend's Triton pool uses the cheaper one (frontend/workers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from export import spec
from frontend.core.calls import ModelSignature
from frontend.transport.triton import infer_request, output_rows
from service_common.logs import setup_logging
from triton_local.server import TritonConfig, TritonServer

log = logging.getLogger("bench.client_cost")

Call = Callable[[np.ndarray], Awaitable[np.ndarray]]


def _tritonclient(client: triton_aio.InferenceServerClient, model: str) -> Call:
    async def call(x: np.ndarray) -> np.ndarray:
        infer_input = InferInput(spec.INPUT_NAME, list(x.shape), spec.TRITON_INPUT_DTYPE)
        infer_input.set_data_from_numpy(x)
        result = await client.infer(model, [infer_input], outputs=[InferRequestedOutput(spec.OUTPUT_NAME)])
        return result.as_numpy(spec.OUTPUT_NAME)

    return call


def _raw(stub: kpb_grpc.GRPCInferenceServiceStub, model: str) -> Call:
    """What the frontend's Triton pool sends (frontend.transport.triton), without its batching."""
    signature = ModelSignature(spec.INPUT_NAME, spec.OUTPUT_NAME, spec.IMAGE_SHAPE, np.dtype(np.float32))

    async def call(x: np.ndarray) -> np.ndarray:
        return output_rows(await stub.ModelInfer(infer_request(model, x, signature), timeout=30.0), signature)

    return call


async def _measure(calls: dict[str, Call], x: np.ndarray, n: int, rounds: int) -> dict[str, tuple[float, float]]:
    wall = dict.fromkeys(calls, 0.0)
    cpu = dict.fromkeys(calls, 0.0)
    for name in calls:  # warm up
        for _ in range(50):
            await calls[name](x)
    for _ in range(rounds):
        for name, call in calls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                await call(x)
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
    total = n * rounds
    return {name: (1e6 * wall[name] / total, 1e6 * cpu[name] / total) for name in calls}


async def _run(url: str, model: str, n: int, rounds: int) -> dict[str, tuple[float, float]]:
    client = triton_aio.InferenceServerClient(url)
    channel = grpc.aio.insecure_channel(url)
    try:
        calls = {
            "tritonclient": _tritonclient(client, model),
            "raw stub": _raw(kpb_grpc.GRPCInferenceServiceStub(channel), model),
        }
        x = np.random.default_rng(0).random((1, *spec.IMAGE_SHAPE), dtype=np.float32)
        np.testing.assert_array_equal(await calls["tritonclient"](x), await calls["raw stub"](x))
        return await _measure(calls, x, n, rounds)
    finally:
        await client.close()
        await channel.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.client_cost", description=__doc__)
    p.add_argument("--calls", type=int, default=500, help="sequential calls per client per round")
    p.add_argument("--rounds", type=int, default=6, help="rounds, the clients alternating")
    args = p.parse_args()
    setup_logging()
    from tests.integration import linear_models  # the exact linear model: cheap inference, so the client shows

    with tempfile.TemporaryDirectory(prefix="client_cost.") as tmp:
        models = linear_models.write_repository(Path(tmp) / "repo")
        config = TritonConfig(Path(tmp) / "repo", models=tuple(models), log_path=Path(tmp) / "triton.log")
        with TritonServer(config) as triton:
            results = asyncio.run(_run(triton.grpc_url, linear_models.DEPLOYED, args.calls, args.rounds))
    print(f"{args.calls * args.rounds} sequential single-row calls per client, {args.rounds} interleaved rounds")
    print("| client | wall µs per call | caller CPU µs per call |\n|---|---|---|")
    for name, (wall_us, cpu_us) in results.items():
        print(f"| {name} | {wall_us:.0f} | {cpu_us:.0f} |")


if __name__ == "__main__":
    main()
