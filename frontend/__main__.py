"""python -m frontend: the client-facing coded-serving frontend (groups, deadlines, Triton dispatch)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from coding.schemes import load_scheme_modules
from frontend.config import FaultPlan, FrontendConfig, parse_route
from frontend.deadlines import DeadlinePolicy
from frontend.injection import parse_fault_metadata
from frontend.server import create_server
from frontend.service_time import DISTRIBUTIONS
from service_common.cli import DEFAULT_MAX_MESSAGE_BYTES
from service_common.logs import setup_logging
from service_common.metrics import serve_metrics
from service_common.server import BindError, wait_for_signal

log = logging.getLogger("frontend")


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m frontend", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--address",
        default=env("CODEDSERVE_FRONTEND_ADDRESS", "127.0.0.1:8100"),
        help="host:port to listen on (port 0 picks a free one)",
    )
    p.add_argument(
        "--kserve-address",
        default=env("CODEDSERVE_FRONTEND_KSERVE_ADDRESS"),
        help="also serve Triton's KServe v2 gRPC protocol (tritonclient, perf_analyzer) on this "
        "host:port; off when unset",
    )
    p.add_argument(
        "--triton-url",
        action="append",
        default=None,
        help="Triton gRPC host:port; repeat for several instances (env CODEDSERVE_TRITON_URLS, comma-sep)",
    )
    p.add_argument(
        "--parity-triton-url",
        action="append",
        default=None,
        help="Triton instance(s) for the parity models (default: the --triton-url ones)",
    )
    p.add_argument(
        "--cancel-losers",
        action="store_true",
        help="cancel the losing copy of hedged/replicated calls (only for Triton >= 2.57: "
        "cancelling in-flight calls crashes the local 2.51)",
    )
    p.add_argument(
        "--coding",
        choices=("services", "local"),
        default=env("CODEDSERVE_CODING", "services"),
        help="where groups are encoded and decoded: the encoder/decoder services, or the same coding "
        "library inside the frontend (no hop; for cheap encoders)",
    )
    p.add_argument("--encoder", default=env("CODEDSERVE_ENCODER_ADDRESS", "127.0.0.1:8101"))
    p.add_argument("--decoder", default=env("CODEDSERVE_DECODER_ADDRESS", "127.0.0.1:8102"))
    p.add_argument(
        "--route",
        action="append",
        default=None,
        help="MODEL=SCHEME[:key=value,...], e.g. mnist_cnn=parm:k=2,encoder=concat or mnist_cnn=none "
        "(env CODEDSERVE_ROUTES, ';'-separated)",
    )
    p.add_argument(
        "--straggler-timeout-ms",
        type=float,
        default=float(env("CODEDSERVE_STRAGGLER_TIMEOUT_MS", 20)),
        help="how long to wait for a deployed-model answer before decoding it (with --straggler-quantile: the cap)",
    )
    p.add_argument(
        "--straggler-quantile",
        type=float,
        default=float(env("CODEDSERVE_STRAGGLER_QUANTILE", 0)) or None,
        help="adaptive straggler deadline: this quantile of recent deployed-call latencies, e.g. 0.95 "
        "(unset: fixed at --straggler-timeout-ms)",
    )
    p.add_argument(
        "--straggler-floor-ms",
        type=float,
        default=float(env("CODEDSERVE_STRAGGLER_FLOOR_MS", 1)),
        help="the adaptive straggler deadline never goes below this",
    )
    p.add_argument(
        "--fill-timeout-ms",
        type=float,
        default=float(env("CODEDSERVE_FILL_TIMEOUT_MS", 5)),
        help="a partial coding group is sealed (padded) after this (with --adaptive-fill: the cap)",
    )
    p.add_argument(
        "--adaptive-fill",
        action="store_true",
        default=env("CODEDSERVE_ADAPTIVE_FILL", "") in ("1", "true"),
        help="seal a partial group sooner when its parity would otherwise come back after the straggler "
        "deadline, or when partners are overdue at the observed arrival rate",
    )
    p.add_argument(
        "--fill-floor-ms",
        type=float,
        default=float(env("CODEDSERVE_FILL_FLOOR_MS", 0.5)),
        help="the adaptive fill timeout never goes below this",
    )
    p.add_argument(
        "--resend-after-ms",
        type=float,
        default=float(env("CODEDSERVE_RESEND_AFTER_MS", 0)) or None,
        help="Collage-CNN's fallback: a query still missing its own answer after this, which its group "
        "cannot rebuild yet, is sent once more to another instance (unset: off)",
    )
    p.add_argument(
        "--batch-inflight",
        type=int,
        default=int(env("CODEDSERVE_BATCH_INFLIGHT", 1)),
        help="ModelInfer calls in flight per Triton instance and model; calls that queue meanwhile leave "
        "together as one batch",
    )
    p.add_argument("--default-deadline-s", type=float, default=5.0, help="deadline for clients that set none")
    p.add_argument("--triton-timeout-s", type=float, default=30.0, help="safety deadline of each Triton call")
    p.add_argument("--max-inflight", type=int, default=4096, help="beyond this many queries: RESOURCE_EXHAUSTED")
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=env("CODEDSERVE_FRONTEND_METRICS_PORT"),
        help="serve Prometheus /metrics on 127.0.0.1:PORT",
    )
    p.add_argument("--log-level", default=env("CODEDSERVE_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--scheme-module",
        action="append",
        default=None,
        help="import this module at start-up so it registers more coding schemes; repeatable; the encoder "
        "and decoder need the same ones (env CODEDSERVE_SCHEME_MODULES, comma-separated)",
    )
    faults = p.add_argument_group("fault injection (demos and tests only)")
    faults.add_argument("--inject-delay-share", type=float, default=0.0, help="share of deployed calls delayed")
    faults.add_argument("--inject-delay-ms", default="50,200", help="MIN,MAX of the injected delay")
    faults.add_argument("--inject-fail-share", type=float, default=0.0, help="share of deployed calls failed")
    faults.add_argument("--inject-seed", type=int, default=0)
    faults.add_argument(
        "--inject-service-time",
        default="",
        choices=["", *sorted(DISTRIBUTIONS)],
        help="every Triton call lasts at least a latency drawn from this distribution (collage: Collage-CNN's recipe)",
    )
    faults.add_argument(
        "--inject-worker-faults",
        "--inject-coded-faults",
        dest="inject_worker_faults",
        default="",
        help="faults pinned to workers of every group, WORKER=FAULT,... e.g. 3=delay=3000,5=corrupt; workers "
        "are numbered data slots first, then coded slots (coded slots only for a non-systematic code)",
    )
    faults.add_argument(
        "--allow-fault-metadata",
        action="store_true",
        help="honour a request's codedserve-fault metadata (delay=MS | fail)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> FrontendConfig:
    env = os.environ.get
    urls = args.triton_url or [u for u in env("CODEDSERVE_TRITON_URLS", "127.0.0.1:8001").split(",") if u]
    routes = args.route or [r for r in env("CODEDSERVE_ROUTES", "mnist_cnn=parm:k=2,encoder=concat").split(";") if r]
    delay_min, _, delay_max = args.inject_delay_ms.partition(",")
    modules = args.scheme_module or [m for m in env("CODEDSERVE_SCHEME_MODULES", "").split(",") if m]
    try:
        load_scheme_modules(modules)  # before the routes: they may name a plug-in scheme
        faults = FaultPlan(
            args.inject_delay_share,
            float(delay_min),
            float(delay_max or delay_min),
            args.inject_fail_share,
            args.inject_seed,
            args.allow_fault_metadata,
            _worker_faults(args.inject_worker_faults),
            args.inject_service_time,
        )
        return FrontendConfig(
            address=args.address,
            triton_urls=tuple(urls),
            encoder_address=args.encoder,
            decoder_address=args.decoder,
            routes=tuple(parse_route(r) for r in routes),
            deadlines=DeadlinePolicy(
                straggler_ms=args.straggler_timeout_ms,
                straggler_quantile=args.straggler_quantile,
                straggler_floor_ms=args.straggler_floor_ms,
                fill_ms=args.fill_timeout_ms,
                adaptive_fill=args.adaptive_fill,
                fill_floor_ms=args.fill_floor_ms,
                resend_ms=args.resend_after_ms,
            ),
            batch_inflight=args.batch_inflight,
            default_deadline_s=args.default_deadline_s,
            triton_timeout_s=args.triton_timeout_s,
            max_inflight=args.max_inflight,
            max_message_bytes=args.max_message_bytes,
            metrics_port=int(args.metrics_port) if args.metrics_port else None,
            log_level=args.log_level,
            kserve_address=args.kserve_address or None,
            faults=faults,
            parity_triton_urls=tuple(args.parity_triton_url or ()),
            cancel_losers=args.cancel_losers,
            scheme_modules=tuple(modules),
            coding=args.coding,
        )
    except ValueError as exc:
        raise SystemExit(f"frontend: bad configuration: {exc}") from exc


def _worker_faults(text: str) -> tuple[tuple[int, str], ...]:
    """``3=delay=3000,5=corrupt`` -> ((3, "delay=3000"), (5, "corrupt")), each fault checked."""
    pinned = []
    for item in filter(None, text.split(",")):
        worker, _, fault = item.partition("=")
        parse_fault_metadata(fault)  # raises ValueError naming a bad fault
        pinned.append((int(worker), fault))
    return tuple(pinned)


async def _main(config: FrontendConfig) -> None:
    server = await create_server(config)
    log.info(
        "frontend serving on port %d (KServe v2: %s); routes: %s",
        server.port,
        server.kserve_port or "off",
        ", ".join(f"{r.model}={r.scheme}(k={r.k})" for r in config.routes),
    )
    await wait_for_signal()
    await server.stop()


def main() -> None:
    config = config_from_args(_parser().parse_args())
    setup_logging(config.log_level)
    serve_metrics(config.metrics_port)
    try:
        asyncio.run(_main(config))
    except BindError as exc:
        raise SystemExit(f"frontend: {exc}") from None


if __name__ == "__main__":
    main()
