"""Open-loop load: queries leave on a fixed schedule (Poisson or steady) whatever the answers do,
so slow answers cannot hide queueing. Every query's latency and outcome is recorded.

The one load generator of bench/: :func:`open_loop` (and :func:`due`, for a stream's messages) sends on a
schedule of offsets; :func:`run_load` is it with a :class:`Record` per query. The entries' own loads (a
ledger's unary calls and streams in bench.chaos_run, bench.overload's refusals) are open loops over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from tqdm import tqdm
from tritonclient.grpc import InferInput
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.utils import InferenceServerException

from export import spec
from service_common.gc_tuning import freeze_startup_heap
from service_common.tensors import from_numpy

# send(i) -> (label, reconstructed); raises on failure. One per target kind below.
Sender = Callable[[int], Awaitable[tuple[int, bool]]]
T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    index: int
    latency_s: float  # client-side, send to answer
    code: str  # "OK" or the status name
    label: int = -1
    reconstructed: bool = False


def arrival_times(n: int, rate: float, poisson: bool, seed: int = 0) -> np.ndarray:
    """Send offsets in seconds for n queries at ``rate`` per second."""
    if poisson:
        return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    return np.arange(n) / rate


def poisson_until(rate: float, horizon_s: float, seed: int = 0) -> np.ndarray:
    """Poisson send offsets at ``rate`` per second, every one before ``horizon_s``: those of
    :func:`arrival_times` with the same seed, cut at the horizon."""
    n = int(rate * horizon_s) + 16
    while (offsets := arrival_times(n, rate, True, seed))[-1] < horizon_s:
        n *= 2
    return offsets[offsets < horizon_s]


async def due(offsets: Iterable[float], start: float) -> AsyncIterator[int]:
    """Yield i at ``start + offsets[i]`` (time.monotonic), each on time whatever else is waiting (one
    running late is yielded at once)."""
    for i, offset in enumerate(offsets):
        delay = start + offset - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        yield i


async def open_loop(offsets: Iterable[float], start: float, send: Callable[[int], Coroutine[Any, Any, T]]) -> list[T]:
    """Start ``send(i)`` at ``start + offsets[i]`` (time.monotonic) whatever the earlier ones are doing;
    returns every result, in the order of i."""
    tasks: list[asyncio.Task[T]] = [asyncio.create_task(send(i)) async for i in due(offsets, start)]
    return list(await asyncio.gather(*tasks))


def infer_request(model: str) -> bytes:
    """One serialized MNIST-shaped KServe ModelInfer of ``model`` (random pixels, raw contents)."""
    x = np.random.default_rng(0).random((1, *spec.IMAGE_SHAPE), dtype=np.float32)
    return kpb.ModelInferRequest(
        model_name=model,
        inputs=[kpb.ModelInferRequest.InferInputTensor(name=spec.INPUT_NAME, datatype="FP32", shape=x.shape)],
        raw_input_contents=[x.tobytes()],
    ).SerializeToString()


def frontend_sender(stub: pb_grpc.FrontendStub, model: str, images: np.ndarray, timeout_s: float) -> Sender:
    """Queries through codedserve's Frontend.Classify."""
    requests = [pb.ClassifyRequest(model=model, input=from_numpy(x), id=str(i)) for i, x in enumerate(images)]

    async def send(i: int) -> tuple[int, bool]:
        reply = await stub.Classify(requests[i], timeout=timeout_s)
        return reply.label, reply.reconstructed

    return send


def triton_sender(client: triton_aio.InferenceServerClient, model: str, images: np.ndarray, timeout_s: float) -> Sender:
    """Queries straight to Triton (no frontend, no redundancy): the floor the frontend is compared with."""

    async def send(i: int) -> tuple[int, bool]:
        infer_input = InferInput(spec.INPUT_NAME, [1, *images[i].shape], spec.TRITON_INPUT_DTYPE)
        infer_input.set_data_from_numpy(images[i][None])
        result = await client.infer(model, [infer_input], client_timeout=timeout_s)
        return int(np.argmax(result.as_numpy(spec.OUTPUT_NAME)[0])), False

    return send


async def run_load(
    send: Sender, n: int, rate: float, *, poisson: bool = True, seed: int = 0, desc: str = "load"
) -> list[Record]:
    """Send queries 0..n-1 at ``rate`` q/s; returns exactly one Record per query. The collector is off
    while it runs (memory is bounded by ``n``): a collection pause here would show up as every in-flight
    query's latency, whatever the scheme under test."""
    with _no_gc_pauses():
        return await _run_load(send, n, rate, poisson, seed, desc)


@contextlib.contextmanager
def _no_gc_pauses() -> Iterator[None]:
    was_enabled = gc.isenabled()
    freeze_startup_heap()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


async def _run_load(send: Sender, n: int, rate: float, poisson: bool, seed: int, desc: str) -> list[Record]:
    offsets = arrival_times(n, rate, poisson, seed)
    progress = tqdm(total=n, desc=desc, unit="q", mininterval=1.0)

    async def one(i: int) -> Record:
        start = time.perf_counter()
        try:
            label, reconstructed = await send(i)
            record = Record(i, time.perf_counter() - start, "OK", label, reconstructed)
        except grpc.aio.AioRpcError as exc:
            record = Record(i, time.perf_counter() - start, exc.code().name)
        except InferenceServerException as exc:
            # tritonclient reports "StatusCode.UNAVAILABLE"; the frontend's records say "UNAVAILABLE"
            status = str(exc.status() or "TRITON_ERROR").removeprefix("StatusCode.")
            record = Record(i, time.perf_counter() - start, status)
        progress.update()
        return record

    records = await open_loop(offsets, time.monotonic(), one)
    progress.close()
    return records


async def load_frontend(
    address: str,
    model: str,
    images: np.ndarray,
    rate: float,
    *,
    timeout_s: float = 5.0,
    seed: int = 0,
    desc: str = "load",
) -> list[Record]:
    """Convenience: the whole of ``images`` through one frontend."""
    async with grpc.aio.insecure_channel(address) as channel:
        send = frontend_sender(pb_grpc.FrontendStub(channel), model, images, timeout_s)
        return await run_load(send, len(images), rate, seed=seed, desc=desc)
