"""python -m bench.overload: what the frontend does with more queries than Triton can serve.

Starts the real local stack (one tritonserver on CPU, the encoder and decoder) with two frontends over
the same Triton: ``old`` with the admission of before issue 14 (``--max-inflight 4096``, no per-client
bound, no refusal by wait) and ``new`` with the defaults. Each gets the same closed-loop load in turn:
``--concurrency`` workers, each sending one query at a time with a ``--deadline-s`` gRPC deadline (each
worker is a client of its own, ``x-codedserve-client``); a worker that is refused waits ``--backoff-ms``
before its next query, as a client told to retry with backoff would. Prints, per frontend, the queries
accepted and refused, how fast a refusal comes back (p50/p99) and the accepted queries' latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench.stack import REPO_ROOT, Stack
from coding import spec
from export.datasets import load
from frontend.servicer import CLIENT_METADATA_KEY
from service_common.tensors import from_numpy

log = logging.getLogger("bench.overload")

OLD_ADMISSION = ["--max-inflight", "4096", "--max-inflight-per-client", "4096", "--no-refuse-by-wait"]


@dataclass(frozen=True)
class Outcome:
    latency_s: float
    code: str


@dataclass(frozen=True)
class OverloadSummary:
    frontend: str
    concurrency: int
    seconds: float
    sent: int
    ok: int
    refused: int  # RESOURCE_EXHAUSTED
    other_errors: dict[str, int]
    refusal_p50_ms: float
    refusal_p99_ms: float
    ok_p50_ms: float
    ok_p99_ms: float
    ok_per_s: float


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.overload", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--concurrency", type=int, default=500, help="queries offered at once (closed loop)")
    p.add_argument("--seconds", type=float, default=15.0, help="how long each frontend is loaded")
    p.add_argument("--deadline-s", type=float, default=1.0, help="each query's gRPC deadline")
    p.add_argument("--backoff-ms", type=float, default=50.0, help="a refused worker waits this long before retrying")
    p.add_argument(
        "--route", default=f"{spec.deployed_model_name('mnist')}=none", help="the route both frontends serve"
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "overload.json")
    return p


async def _load(address: str, model: str, images: np.ndarray, args: argparse.Namespace) -> list[Outcome]:
    requests = [pb.ClassifyRequest(model=model, input=from_numpy(x)) for x in images]
    outcomes: list[Outcome] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)
        end = time.perf_counter() + args.seconds

        async def worker(w: int) -> None:
            metadata = ((CLIENT_METADATA_KEY, f"worker-{w}"),)
            i = w
            while time.perf_counter() < end:
                start = time.perf_counter()
                try:
                    await stub.Classify(requests[i % len(requests)], timeout=args.deadline_s, metadata=metadata)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                outcomes.append(Outcome(time.perf_counter() - start, code))
                i += args.concurrency
                if code == "RESOURCE_EXHAUSTED":
                    await asyncio.sleep(args.backoff_ms / 1e3)

        await asyncio.gather(*(worker(w) for w in range(args.concurrency)))
    return outcomes


def _ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1e3) if values else float("nan")


def summarize(frontend: str, outcomes: list[Outcome], args: argparse.Namespace) -> OverloadSummary:
    ok = [o.latency_s for o in outcomes if o.code == "OK"]
    refused = [o.latency_s for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    others: dict[str, int] = {}
    for o in outcomes:
        if o.code not in ("OK", "RESOURCE_EXHAUSTED"):
            others[o.code] = others.get(o.code, 0) + 1
    return OverloadSummary(
        frontend, args.concurrency, args.seconds, len(outcomes), len(ok), len(refused), others,
        _ms(refused, 50), _ms(refused, 99), _ms(ok, 50), _ms(ok, 99), len(ok) / args.seconds,
    )  # fmt: skip


def _table(summaries: list[OverloadSummary]) -> str:
    rows = [
        "| frontend | sent | OK | refused | other errors | refusal p50 / p99 ms | OK p50 / p99 ms | OK/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        rows.append(
            f"| {s.frontend} | {s.sent} | {s.ok} | {s.refused} | {s.other_errors or '-'} | "
            f"{s.refusal_p50_ms:.1f} / {s.refusal_p99_ms:.1f} | {s.ok_p50_ms:.0f} / {s.ok_p99_ms:.0f} | "
            f"{s.ok_per_s:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    args = _parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    images = load("mnist", "test")[0][:1000, None].astype("float32") / 255.0
    model = args.route.partition("=")[0]
    frontends = {"old": ["--route", args.route, *OLD_ADMISSION], "new": ["--route", args.route]}
    with Stack([model], frontends) as stack:
        summaries = []
        for name in frontends:
            log.info("%s: %d queries at once for %.0f s", name, args.concurrency, args.seconds)
            summaries.append(summarize(name, asyncio.run(_load(stack.address(name), model, images, args)), args))
    print(
        f"\n{args.concurrency} workers, closed loop, {args.deadline_s:g} s deadline, {args.backoff_ms:g} ms "
        f"backoff after a refusal, {args.seconds:g} s per frontend; route {args.route}; old = {' '.join(OLD_ADMISSION)}"
    )
    print(_table(summaries))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "summaries": [asdict(s) for s in summaries]}, indent=2
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
