"""python -m bench.call_cost: the CPU each KServe call costs the process that serves it, hop by hop.

Starts one Triton (mnist_cnn), the uncoded frontend's KServe port, ``bench.floor_proxy`` (one server
call and one Triton call per call, raw bytes) and ``bench.floor_proxy --canned`` (the server half alone:
every ModelInfer answered with Triton's first answer, no Triton call). A grpc.aio client sends the same
MNIST-shaped ModelInfer to each in turn, ``--concurrency`` at a time, ``--rounds`` times interleaved.
Prints, per target and round: the serving process's CPU per call (all threads, and its main thread,
where the event loop and every Python handler run), Triton's CPU per call, and the rows per Triton
request (the frontend's batching). Read with /proc, so the figures hold on a shared machine better
than throughput does; the load generator's own CPU is not counted.

``--coded`` adds three ParM k = 2 frontends (concat encoder, the parity model on the same Triton):
``coded`` (the encoder and decoder services, batches as messages on one stream per service),
``coded_unary`` (the same services, one unary call per batch: ``--coding-transport unary``) and
``coded_local`` (``--coding local``), with the coding services' CPU per call in a column of its own.
Its calls per second come from one run on a shared machine: compare them within a round only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from bench.load import infer_request
from bench.proc import cpu_s, process_tree, thread_cpu_s
from bench.stack import FrontendSpec, Stack, floor_proxy
from export import spec
from service_common.logs import setup_logging

log = logging.getLogger("bench.call_cost")
INFER = "/inference.GRPCInferenceService/ModelInfer"


async def _drive(address: str, request: bytes, calls: int, concurrency: int) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(INFER)

        async def client(n: int) -> None:
            for _ in range(n):
                await infer(request, timeout=10.0)

        await asyncio.gather(*(client(20) for _ in range(concurrency)))  # warm: connections, first batches
        await asyncio.gather(*(client(calls // concurrency) for _ in range(concurrency)))


def _triton_counts(url: str, model: str) -> tuple[int, int]:
    """(rows, requests) Triton has run of ``model``."""
    with grpc.insecure_channel(url) as channel:
        stats = kpb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(kpb.ModelStatisticsRequest(name=model))
    model_stats = stats.model_stats[0]
    return model_stats.inference_count, model_stats.inference_stats.success.count


def _frontends(model: str, coded: bool) -> dict[str, FrontendSpec]:
    frontends = {"uncoded": FrontendSpec(flags=["--route", f"{model}=none"], kserve=True)}
    if coded:
        route = ["--route", f"{model}=parm:k=2,encoder=concat"]
        frontends["coded"] = FrontendSpec(flags=route, kserve=True)
        frontends["coded_unary"] = FrontendSpec(flags=[*route, "--coding-transport", "unary"], kserve=True)
        frontends["coded_local"] = FrontendSpec(flags=[*route, "--coding", "local"], kserve=True)
    return frontends


@contextlib.contextmanager
def _targets(stack: Stack, scratch: Path) -> Iterator[dict[str, tuple[str, int]]]:
    assert stack.triton is not None
    url = stack.triton.grpc_url
    with (
        floor_proxy(url, scratch / "floor.log") as (floor, floor_pid),
        floor_proxy(url, scratch / "canned.log", canned=True) as (canned, canned_pid),
    ):
        targets = {"canned": (canned, canned_pid), "floor": (floor, floor_pid)}
        for name in stack.frontends:
            process = stack.services[name].proc
            assert process is not None
            targets[name] = (stack.kserve_address(name), process.pid)
        yield targets


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.call_cost", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--concurrency", type=int, default=4, help="calls in flight from the load generator")
    p.add_argument("--calls", type=int, default=6000, help="calls per target and round")
    p.add_argument(
        "--rounds", type=int, default=2, help="rounds, the targets interleaved within each (odd rounds in reverse)"
    )
    p.add_argument("--targets", default="", help="comma-separated subset of the targets to run (default: all)")
    p.add_argument(
        "--coded", action="store_true", help="also the coded frontends (services by stream, by unary, local)"
    )
    args = p.parse_args()
    model = spec.deployed_model_name("mnist")
    known = ["canned", "floor", *_frontends(model, args.coded)]
    unknown = [t for t in args.targets.split(",") if t and t not in known]
    if unknown:
        p.error(f"unknown --targets {unknown}; with these flags the targets are {known}")
    setup_logging()
    request = infer_request(model)
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, load average {os.getloadavg()[0]:.2f}")
    columns = ["process CPU / call (us)", "main thread (us)", "Triton CPU / call (us)", "rows / Triton call"]
    if args.coded:
        columns += ["coding services CPU / call (us)", "calls/s"]
    print("| round | target | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    models = [model, *(["mnist_parm_concat_k2"] if args.coded else [])]
    with tempfile.TemporaryDirectory(prefix="call_cost.") as tmp:
        scratch = Path(tmp)
        frontends = _frontends(model, args.coded)
        with Stack(models, frontends, log_dir=scratch / "logs") as stack, _targets(stack, scratch) as targets:
            assert stack.triton is not None and stack.triton.pid is not None
            triton_pids = process_tree(stack.triton.pid)
            coders = [s.proc.pid for n in ("encoder", "decoder") if (s := stack.services[n]).proc is not None]
            for round_ in range(1, args.rounds + 1):
                chosen = [n for n in targets if not args.targets or n in args.targets.split(",")]
                for name in chosen if round_ % 2 else chosen[::-1]:  # alternate: no target always goes first
                    address, pid = targets[name]
                    before, triton_before = thread_cpu_s(pid), sum(cpu_s(t) for t in triton_pids)
                    coders_before = sum(cpu_s(c) for c in coders)
                    rows_before, requests_before = _triton_counts(stack.triton.grpc_url, model)
                    start = time.perf_counter()
                    asyncio.run(_drive(address, request, args.calls, args.concurrency))
                    wall = time.perf_counter() - start
                    after, triton_after = thread_cpu_s(pid), sum(cpu_s(t) for t in triton_pids)
                    coders_us = sum(cpu_s(c) for c in coders) - coders_before
                    rows, requests = _triton_counts(stack.triton.grpc_url, model)
                    calls = args.calls // args.concurrency * args.concurrency + 20 * args.concurrency
                    per_call = [1e6 * (a - b) / calls for a, b in zip(after, before, strict=True)]
                    triton_us = 1e6 * (triton_after - triton_before) / calls
                    batch = (rows - rows_before) / (requests - requests_before) if requests > requests_before else 0
                    cells = [f"{per_call[0]:.0f}", f"{per_call[1]:.0f}", f"{triton_us:.0f}", f"{batch:.2f}"]
                    if args.coded:
                        cells += [f"{1e6 * coders_us / calls:.0f}", f"{calls / wall:.0f}"]
                    print(f"| {round_} | {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
