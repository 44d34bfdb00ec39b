"""python -m bench.demo: the main job of `make demo`.

Starts the real tritonserver (CPU) with the committed MNIST models, the encoder, the decoder and
two frontends over the same Triton — one coded (ParM), one uncoded — with the same injected
faults on deployed-model calls. Sends the MNIST test split through each at a steady Poisson rate,
prints latency and accuracy side by side, and stops everything it started. With ``--service-time``
Triton holds each instance for an emulated accelerator time (``'*=collage'``: Collage-CNN's own).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path

from bench.load import load_frontend
from bench.report import markdown_table, summarize
from bench.stack import REPO_ROOT, Stack
from export import spec
from export.datasets import load
from frontend.core.routes import parse_route
from service_common.logs import setup_logging

log = logging.getLogger("bench.demo")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.demo", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--dataset", default="mnist", choices=spec.DATASETS)
    p.add_argument(
        "--scheme", default="parm", choices=("parm", "collage"), help="the coded run's scheme (collage: s = sqrt(k))"
    )
    p.add_argument("--encoder", default="concat", choices=spec.PARM_ENCODERS, help="ParM's encoder")
    p.add_argument("--k", type=int, default=2, help="queries per group (collage: 4 or 9)")
    p.add_argument("--queries", type=int, default=10000, help="how many test images to send (max 10000)")
    p.add_argument("--rate", type=float, default=200.0, help="Poisson arrival rate, queries per second")
    p.add_argument("--delay-share", type=float, default=0.05, help="share of deployed-model calls delayed")
    p.add_argument("--delay-ms", default="50,200", help="MIN,MAX of an injected delay")
    p.add_argument("--fail-share", type=float, default=0.01, help="share of deployed-model calls failed")
    p.add_argument("--straggler-timeout-ms", type=float, default=15.0)
    p.add_argument("--fill-timeout-ms", type=float, default=10.0)
    p.add_argument(
        "--service-time",
        default="",
        metavar="MODEL=LAW[;...]",
        help="emulated accelerator time in Triton (python -m triton_local --service-time), e.g. '*=collage' "
        "for Collage-CNN's published worker latencies; requests queue behind a busy instance (default: off)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "bench" / "results" / "demo.json",
        help="where to write the summary as JSON",
    )
    return p


def _frontend_flags(args: argparse.Namespace, route: str) -> list[str]:
    return [
        "--route",
        route,
        "--straggler-timeout-ms",
        str(args.straggler_timeout_ms),
        "--fill-timeout-ms",
        str(args.fill_timeout_ms),
        "--inject-delay-share",
        str(args.delay_share),
        "--inject-delay-ms",
        args.delay_ms,
        "--inject-fail-share",
        str(args.fail_share),
        "--inject-seed",
        "7",
    ]


def main() -> None:
    args = _parser().parse_args()
    setup_logging()
    began = time.perf_counter()
    images, labels = load(args.dataset, "test")
    images = images[: args.queries, None].astype("float32") / 255.0
    deployed = spec.deployed_model_name(args.dataset)
    encoder = f",encoder={args.encoder}" if args.scheme == "parm" else ""
    route = f"{deployed}={args.scheme}:k={args.k}{encoder}"
    coded_route = parse_route(route)
    label = f"ParM {args.encoder} k={args.k}" if args.scheme == "parm" else f"Collage-CNN {coded_route.k} cells"
    frontends = {"coded": _frontend_flags(args, route), "uncoded": _frontend_flags(args, f"{deployed}=none")}
    parity = coded_route.parity_model
    with Stack([deployed, parity], frontends, service_time=args.service_time) as stack:
        log.info(
            "stack ready in %.1f s; sending %d queries at %.0f q/s to each frontend",
            time.perf_counter() - began,
            len(images),
            args.rate,
        )
        summaries = []
        for name in ("uncoded", "coded"):
            records = asyncio.run(load_frontend(stack.address(name), deployed, images, args.rate, desc=name))
            summaries.append(summarize(f"{name} ({label if name == 'coded' else 'none'})", records, labels))
    print()
    print(
        f"{len(images)} {args.dataset} test queries per run at {args.rate:.0f} q/s (Poisson); faults on "
        f"deployed-model calls: {args.delay_share:.0%} delayed {args.delay_ms} ms, {args.fail_share:.0%} failed; "
        f"straggler timeout {args.straggler_timeout_ms:.0f} ms"
        + (f"; emulated service time {args.service_time}" if args.service_time else "")
    )
    print(markdown_table(summaries))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "summaries": [s.as_dict() for s in summaries]},
            indent=2,
        )
    )
    print(f"\nwrote {args.out}; total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
