"""python -m bench.overload: what the frontend does with more queries than it can serve.

Starts the real local stack (one tritonserver on CPU, the encoder and decoder) with three frontends over
the same Triton: ``old`` with the admission of before (``--max-inflight 4096``, no per-client bound, no
refusal by wait, no bound on open RPCs), ``new`` with the defaults of admission but without gRPC's own bound
on open RPCs (``--max-concurrent-rpcs 0``), and ``bounded`` with the defaults, that bound included. Each
gets the same load in turn, every query
with a ``--deadline-s`` gRPC deadline and from a client of its own (``x-codedserve-client``): either a
closed loop of ``--concurrency`` workers, one query at a time each, a refused worker waiting
``--backoff-ms`` before its next as a client told to retry with backoff would; or, with ``--rate``, an
open loop of Poisson arrivals whatever the answers. Prints, per frontend, the queries accepted and
refused (and how many of those by gRPC's bound, before any handler ran), how fast a refusal comes back
from the moment the query was sent (p50/p99, all refusals and gRPC's alone), the accepted queries' latency,
the load generator's
own event-loop lag, and the frontend's handler time from its own metrics (what it measures of a call:
the rest of a latency was spent before the handler ran, or in the client). Last, the same load goes to
``refusals only``: a bare grpc.aio server in a process of its own whose one RPC place is held, so that it
refuses every query with gRPC's bound and does nothing else. Its refusal latency is the floor that this
machine, this client and grpc.aio's one-call-at-a-time intake give any refusal under that load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench.load import open_loop, poisson_until
from bench.stack import REPO_ROOT, Stack
from export import spec
from export.datasets import load
from frontend.api.common import CLIENT_METADATA_KEY
from service_common.logs import setup_logging
from service_common.loop_lag import LoopLag
from service_common.tensors import from_numpy
from triton_local.server import HOST, free_ports

log = logging.getLogger("bench.overload")

OLD_ADMISSION = [
    "--max-inflight", "4096", "--max-inflight-per-client", "4096", "--no-refuse-by-wait", "--max-concurrent-rpcs", "0",
]  # fmt: skip
ADMISSIONS = {"old": OLD_ADMISSION, "new": ["--max-concurrent-rpcs", "0"], "bounded": []}
RPC_BOUND_DETAILS = "Concurrent RPC limit exceeded!"  # grpc.aio's refusal past maximum_concurrent_rpcs (1.81)


@dataclass(frozen=True)
class Outcome:
    latency_s: float
    code: str
    by_rpc_bound: bool = False  # refused by gRPC's bound on open RPCs: no handler ran


@dataclass(frozen=True)
class OverloadSummary:
    frontend: str
    concurrency: int
    seconds: float
    sent: int
    ok: int
    refused: int  # RESOURCE_EXHAUSTED
    refused_by_rpc_bound: int  # of them, by gRPC's bound on open RPCs, before any handler
    other_errors: dict[str, int]
    refusal_p50_ms: float
    refusal_p99_ms: float
    rpc_bound_refusal_p50_ms: float
    rpc_bound_refusal_p99_ms: float
    ok_p50_ms: float
    ok_p99_ms: float
    ok_per_s: float
    client_lag_p50_ms: float  # the load generator's own event-loop lag: part of every latency above
    client_lag_p99_ms: float
    handler_mean_ms: float  # the frontend's own view: a successful Classify from its handler's start to its answer


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.overload", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--concurrency", type=int, default=500, help="queries offered at once (closed loop)")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offer this many queries/s instead, open loop (Poisson arrivals, each from a client of its own, "
        "no retries): a closed loop's latency is its concurrency over the throughput whatever admission does",
    )
    p.add_argument("--seconds", type=float, default=15.0, help="how long each frontend is loaded")
    p.add_argument("--deadline-s", type=float, default=1.0, help="each query's gRPC deadline")
    p.add_argument("--backoff-ms", type=float, default=50.0, help="a refused worker waits this long before retrying")
    p.add_argument(
        "--route", default=f"{spec.deployed_model_name('mnist')}=none", help="the route both frontends serve"
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "overload.json")
    return p


class _LagSamples(LoopLag):
    """The load generator's own event-loop lag, every sample kept: how much of a latency is the client's."""

    def __init__(self) -> None:
        super().__init__(interval_s=0.01)
        self.samples: list[float] = []

    def record(self, late_s: float) -> None:
        super().record(late_s)
        self.samples.append(late_s)


async def _load(
    address: str, model: str, images: np.ndarray, args: argparse.Namespace
) -> tuple[list[Outcome], list[float]]:
    requests = [pb.ClassifyRequest(model=model, input=from_numpy(x)) for x in images]
    outcomes: list[Outcome] = []
    lag = _LagSamples()
    lag.start()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        end = time.perf_counter() + args.seconds

        async def worker(w: int) -> None:
            metadata = ((CLIENT_METADATA_KEY, f"worker-{w}"),)
            i = w
            while time.perf_counter() < end:
                outcome = await _classify(stub, requests[i % len(requests)], metadata, args.deadline_s)
                outcomes.append(outcome)
                i += args.concurrency
                if outcome.code == "RESOURCE_EXHAUSTED":
                    await asyncio.sleep(args.backoff_ms / 1e3)

        if args.rate:
            await _open_loop(stub, requests, outcomes, end, args)
        else:
            await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    await lag.stop()
    return outcomes, lag.samples


class _HoldEveryQuery(pb_grpc.FrontendServicer):
    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext) -> pb.ClassifyResponse:
        await asyncio.Event().wait()  # until the client's deadline: the one place stays taken
        raise AssertionError("unreachable")


def _serve_refusals_only(port: int) -> None:
    """The ``refusals only`` server (a child process): one RPC place, taken by the first query."""

    async def serve() -> None:
        server = grpc.aio.server(maximum_concurrent_rpcs=1)
        pb_grpc.add_FrontendServicer_to_server(_HoldEveryQuery(), server)
        server.add_insecure_port(f"{HOST}:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def _refusals_only(model: str, images: np.ndarray, args: argparse.Namespace) -> OverloadSummary:
    (port,) = free_ports(1)
    server = multiprocessing.get_context("spawn").Process(target=_serve_refusals_only, args=(port,), daemon=True)
    server.start()
    try:
        with grpc.insecure_channel(f"{HOST}:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        outcomes, client_lag_s = asyncio.run(_load(f"{HOST}:{port}", model, images, args))
    finally:
        server.kill()
        server.join()
    return summarize("refusals only", outcomes, client_lag_s, float("nan"), args)


async def _classify(
    stub: pb_grpc.FrontendStub, request: pb.ClassifyRequest, metadata: tuple[tuple[str, str], ...], deadline_s: float
) -> Outcome:
    """One query, timed from the moment it is sent to its answer or refusal."""
    start = time.perf_counter()
    try:
        await stub.Classify(request, timeout=deadline_s, metadata=metadata)
    except grpc.aio.AioRpcError as exc:
        return Outcome(time.perf_counter() - start, exc.code().name, exc.details() == RPC_BOUND_DETAILS)
    return Outcome(time.perf_counter() - start, "OK")


async def _open_loop(
    stub: pb_grpc.FrontendStub,
    requests: list[pb.ClassifyRequest],
    outcomes: list[Outcome],
    end: float,
    args: argparse.Namespace,
) -> None:
    """Poisson arrivals at ``args.rate`` until ``end``, whatever the answers: each query is sent when it is due."""
    now = time.perf_counter()

    async def one(i: int) -> None:
        metadata = ((CLIENT_METADATA_KEY, f"client-{i}"),)
        outcomes.append(await _classify(stub, requests[i % len(requests)], metadata, args.deadline_s))

    await open_loop(poisson_until(args.rate, end - now), time.monotonic(), one)


def _handler_seconds(metrics_port: int) -> tuple[float, float]:
    """(sum, count) of the frontend's ``codedserve_rpc_seconds`` for Classify: its handlers' own time."""
    text = urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f'codedserve_rpc_seconds_{part}{{method="Classify"}}'):
                values[part] = float(line.split()[-1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else float("nan")


def summarize(
    frontend: str, outcomes: list[Outcome], client_lag_s: list[float], handler_mean_s: float, args: argparse.Namespace
) -> OverloadSummary:
    ok = [o.latency_s for o in outcomes if o.code == "OK"]
    refused = [o.latency_s for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    by_bound = [o.latency_s for o in outcomes if o.code == "RESOURCE_EXHAUSTED" and o.by_rpc_bound]
    others: dict[str, int] = {}
    for o in outcomes:
        if o.code not in ("OK", "RESOURCE_EXHAUSTED"):
            others[o.code] = others.get(o.code, 0) + 1
    return OverloadSummary(
        frontend, args.concurrency, args.seconds, len(outcomes), len(ok), len(refused), len(by_bound), others,
        _ms(refused, 50), _ms(refused, 99), _ms(by_bound, 50), _ms(by_bound, 99), _ms(ok, 50), _ms(ok, 99),
        len(ok) / args.seconds,
        _ms(client_lag_s, 50), _ms(client_lag_s, 99), handler_mean_s * 1e3,
    )  # fmt: skip


def _table(summaries: list[OverloadSummary]) -> str:
    rows = [
        "| frontend | sent | OK | refused (by gRPC's bound) | other errors | refusal p50 / p99 ms "
        "| gRPC's bound's refusal p50 / p99 ms | OK p50 / p99 ms | OK/s | client loop lag p50 / p99 ms "
        "| handler mean ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        rows.append(
            f"| {s.frontend} | {s.sent} | {s.ok} | {s.refused} ({s.refused_by_rpc_bound}) | {s.other_errors or '-'} | "
            f"{s.refusal_p50_ms:.1f} / {s.refusal_p99_ms:.1f} | "
            f"{s.rpc_bound_refusal_p50_ms:.1f} / {s.rpc_bound_refusal_p99_ms:.1f} | "
            f"{s.ok_p50_ms:.0f} / {s.ok_p99_ms:.0f} | "
            f"{s.ok_per_s:.0f} | {s.client_lag_p50_ms:.1f} / {s.client_lag_p99_ms:.1f} | {s.handler_mean_ms:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    args = _parser().parse_args()
    setup_logging()
    images = load("mnist", "test")[0][:1000, None].astype("float32") / 255.0
    model = args.route.partition("=")[0]
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    metrics = dict(zip(ADMISSIONS, free_ports(len(ADMISSIONS)), strict=True))
    frontends = {n: ["--route", args.route, "--metrics-port", str(metrics[n]), *a] for n, a in ADMISSIONS.items()}
    with Stack([model], frontends) as stack:
        summaries = []
        for name in frontends:
            log.info("%s: %d queries at once for %.0f s", name, args.concurrency, args.seconds)
            before = _handler_seconds(metrics[name])
            outcomes, client_lag_s = asyncio.run(_load(stack.address(name), model, images, args))
            after = _handler_seconds(metrics[name])
            handler_mean_s = (after[0] - before[0]) / max(after[1] - before[1], 1)
            summaries.append(summarize(name, outcomes, client_lag_s, handler_mean_s, args))
    log.info("refusals only: the same load on a bare server that refuses every query")
    summaries.append(_refusals_only(model, images, args))
    offered = (
        f"{args.rate:g} queries/s offered, open loop"
        if args.rate
        else f"{args.concurrency} workers, closed loop, {args.backoff_ms:g} ms backoff after a refusal"
    )
    print(
        f"\n{offered}, {args.deadline_s:g} s deadline, {args.seconds:g} s per frontend; route {args.route}; "
        f"old = {' '.join(OLD_ADMISSION)}; new = {' '.join(ADMISSIONS['new'])}; bounded = the defaults; "
        "refusals only = a bare grpc.aio server whose one RPC place is held"
    )
    print(_table(summaries))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "started_utc": started_utc,
                "args": {k: str(v) for k, v in vars(args).items()},
                "summaries": [asdict(s) for s in summaries],
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
