"""Open-loop load: queries leave on a fixed schedule (Poisson or steady) whatever the answers do,
so slow answers cannot hide queueing. Every query's latency and outcome is recorded."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import numpy as np
from tqdm import tqdm

from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from service_common.tensors import from_numpy


@dataclass(frozen=True)
class Record:
    index: int
    latency_s: float  # client-side, send to answer
    code: str  # "OK" or the gRPC status name
    label: int = -1
    reconstructed: bool = False


def arrival_times(n: int, rate: float, poisson: bool, seed: int = 0) -> np.ndarray:
    """Send offsets in seconds for n queries at ``rate`` per second."""
    if poisson:
        return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    return np.arange(n) / rate


async def run_load(address: str, model: str, images: np.ndarray, rate: float, *, poisson: bool = True,
                   timeout_s: float = 5.0, seed: int = 0, desc: str = "load") -> list[Record]:
    """Send every image once through Frontend.Classify at ``rate`` q/s; returns one Record per image."""
    offsets = arrival_times(len(images), rate, poisson, seed)
    requests = [pb.ClassifyRequest(model=model, input=from_numpy(x), id=str(i)) for i, x in enumerate(images)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        progress = tqdm(total=len(images), desc=desc, unit="q", mininterval=1.0)

        async def one(i: int) -> Record:
            start = time.perf_counter()
            try:
                reply = await stub.Classify(requests[i], timeout=timeout_s)
                record = Record(i, time.perf_counter() - start, "OK", reply.label, reply.reconstructed)
            except grpc.aio.AioRpcError as exc:
                record = Record(i, time.perf_counter() - start, exc.code().name)
            progress.update()
            return record

        began = time.perf_counter()
        tasks = []
        for i, offset in enumerate(offsets):
            delay = began + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        records = await asyncio.gather(*tasks)
        progress.close()
    return list(records)
