"""python -m bench.handler_cost: the frontend's own CPU per KServe query, in-process, without gRPC.

Builds the real frontend (app, coordinator, groups, placement, dispatcher, Triton pool batchers, KServe
servicer) for one route and calls its ModelInfer handler directly, ``--concurrency`` queries at a time,
with every Triton ModelInfer answered at once by a canned answer of the right shape (zeros). What it
measures is the Python a query costs between the two gRPC hops: parsing and checks, admission, the
coding group, the batcher, building the Triton request, reading its answer, the KServe answer — and
the encoding and decoding for a coded route with ``--coding local``. The hops themselves are
``bench.call_cost``'s. Prints microseconds of process CPU per query, and how many event-loop turns
and callbacks each query costs: counts, the same on any machine, and each callback is one more trip
through grpc.aio's loop in a real server.

``--idle-ms`` sleeps that long (the thread blocked, as a served process waits in epoll) before each round
of queries: a process that wakes after an idle spell finds its caches taken by whatever ran meanwhile,
and at 150 q/s every process of the stack wakes so, every few milliseconds. On the 2-core development
VM this multiplied the CPU of small Python and numpy steps several times
(bench/results/history-benchmarks-2026-12.md, "Cold caches").
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2 as kpb

from bench.load import infer_request
from export import spec
from frontend.api.kserve import KServeServicer
from frontend.app.assembly import FrontendApp
from frontend.app.config import FrontendConfig
from frontend.core.routes import parse_route

MODEL = "m"
CLASSES = 10


class _Context:
    """What the handler asks of a grpc.aio context."""

    def time_remaining(self) -> float:
        return 10.0

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


class CannedTriton:
    """Triton's wire, in-process: what the frontend's pool calls each instance through
    (``FrontendApp(config, triton_stub=...)``). The routed models are ready, described with the
    MNIST shapes, and every ModelInfer is answered at once with zeros of the right shape."""

    def __init__(self, channel: object, models: Collection[str]) -> None:
        self.channel = channel  # opened by the pool, never used
        self.models = sorted(models)  # what RepositoryIndex lists

    async def ModelInfer(self, request: kpb.ModelInferRequest, timeout: float | None = None) -> kpb.ModelInferResponse:
        await asyncio.sleep(0)  # one turn of the loop, as a real answer arrives
        rows = int(request.inputs[0].shape[0])
        response = kpb.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name=spec.OUTPUT_NAME, datatype="FP32", shape=[rows, CLASSES])
        response.raw_output_contents.append(np.zeros((rows, CLASSES), "<f4").tobytes())
        return response

    async def ModelReady(self, request: kpb.ModelReadyRequest, timeout: float | None = None) -> kpb.ModelReadyResponse:
        return kpb.ModelReadyResponse(ready=True)

    async def RepositoryIndex(
        self, request: kpb.RepositoryIndexRequest, timeout: float | None = None
    ) -> kpb.RepositoryIndexResponse:
        return kpb.RepositoryIndexResponse(models=[{"name": m, "state": "READY"} for m in self.models])

    async def ModelMetadata(
        self, request: kpb.ModelMetadataRequest, timeout: float | None = None
    ) -> kpb.ModelMetadataResponse:
        tensor = kpb.ModelMetadataResponse.TensorMetadata
        return kpb.ModelMetadataResponse(
            name=request.name,
            versions=["1"],
            inputs=[tensor(name=spec.INPUT_NAME, datatype="FP32", shape=[-1, *spec.IMAGE_SHAPE])],
            outputs=[tensor(name=spec.OUTPUT_NAME, datatype="FP32", shape=[-1, CLASSES])],
        )

    async def ModelConfig(
        self, request: kpb.ModelConfigRequest, timeout: float | None = None
    ) -> kpb.ModelConfigResponse:
        response = kpb.ModelConfigResponse()
        response.config.name, response.config.max_batch_size = request.name, 64
        return response


async def _servicer(route: str, coding: str) -> KServeServicer:
    """The real frontend for ``route`` over :class:`CannedTriton`, started and loaded through its own API."""
    config = FrontendConfig(
        "127.0.0.1:0", ("127.0.0.1:1",), "127.0.0.1:2", "127.0.0.1:3", (parse_route(route),), coding=coding
    )
    models = {m for r in config.routes for m in r.models.values()}
    app = FrontendApp(config, triton_stub=lambda channel: CannedTriton(channel, models))
    await app.start()
    await app.load_until_ready(give_up_s=5.0)
    return KServeServicer(app, app.catalog)


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts its turns and the callbacks (handles: task steps, future callbacks, call_soon) it runs.
    Every handle is a trip through the loop: in a real server each one costs more than its Python, since
    grpc.aio's machinery runs between them (bench/results/history-kserve.md)."""

    turns = 0
    handles = 0

    def _run_once(self) -> None:
        self.turns += 1
        self.handles += len(self._ready)  # type: ignore[attr-defined]
        super()._run_once()  # type: ignore[misc]


@dataclass(frozen=True)
class Cost:
    cpu_us: float  # process CPU per query
    turns: float  # event-loop turns per query
    handles: float  # callbacks run per query


async def measure(route: str, concurrency: int, queries: int, coding: str, idle_s: float = 0.0) -> Cost:
    """CPU, loop turns and callbacks per query (the counts only when run on a :class:`CountingLoop`);
    ``idle_s`` of blocked sleep before each round (not counted: process CPU only)."""
    servicer = await _servicer(route, coding)
    request = infer_request(MODEL)
    context = _Context()

    async def one() -> bytes:  # parsing and serializing as gRPC would, around the handler
        reply = await servicer.ModelInfer(kpb.ModelInferRequest.FromString(request), context)  # type: ignore[arg-type]
        return reply.SerializeToString()

    for _ in range(200 // concurrency + 1):  # warm: batchers, caches
        await asyncio.gather(*(one() for _ in range(concurrency)))
    rounds = max(1, queries // concurrency)
    loop = asyncio.get_running_loop()
    turns, handles = getattr(loop, "turns", 0), getattr(loop, "handles", 0)
    start = time.process_time()
    for _ in range(rounds):
        if idle_s:
            time.sleep(idle_s)  # blocking on purpose: the whole process idle, as between arrivals
        await asyncio.gather(*(one() for _ in range(concurrency)))
    n = rounds * concurrency
    cpu_us = (time.process_time() - start) / n * 1e6
    return Cost(cpu_us, (getattr(loop, "turns", 0) - turns) / n, (getattr(loop, "handles", 0) - handles) / n)


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.handler_cost", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--routes",
        default=f"{MODEL}=none;{MODEL}=parm:k=2,encoder=concat",
        help="semicolon-separated routes of the model 'm' (the frontend's --route syntax)",
    )
    p.add_argument("--concurrency", default="1,4", help="comma-separated queries in flight")
    p.add_argument("--queries", type=int, default=20000, help="queries measured per route and concurrency")
    p.add_argument("--coding", choices=("local", "services"), default="local", help="the frontend's --coding")
    p.add_argument("--repeat", type=int, default=2, help="measurements of each, interleaved")
    p.add_argument(
        "--idle-ms",
        default="0",
        help="comma-separated idle spells before each round of queries, in ms (0: back to back; "
        "with idle, --queries is capped at 2000 to keep the run short)",
    )
    args = p.parse_args()
    print(
        "| route | concurrency | idle before each round (ms) | CPU per query (us) | loop turns per query "
        "| callbacks per query |"
    )
    print("|---|---|---|---|---|---|")
    for _ in range(args.repeat):
        for route in (r for r in args.routes.split(";") if r):
            for concurrency in (int(c) for c in args.concurrency.split(",") if c):
                for idle_ms in (float(i) for i in args.idle_ms.split(",") if i):
                    queries = args.queries if not idle_ms else min(args.queries, 2000)
                    with asyncio.Runner(loop_factory=CountingLoop) as runner:
                        cost = runner.run(measure(route, concurrency, queries, args.coding, idle_ms / 1e3))
                    print(
                        f"| `{route}` | {concurrency} | {idle_ms:g} | {cost.cpu_us:.0f} | {cost.turns:.2f} "
                        f"| {cost.handles:.2f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
