"""python -m frontend: the client-facing coded-serving frontend (groups, deadlines, Triton dispatch).

Settings come from flags, over CODEDSERVE_FRONTEND_* variables, over a TOML file named by --config
(CODEDSERVE_FRONTEND_CONFIG), over the built-in defaults. There is no default route."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
from collections.abc import Mapping, Sequence

from frontend.app.config import FrontendConfig
from frontend.app.config_file import ROUTE_KEY, deadline_policy, file_routes
from frontend.app.server import create_server
from frontend.core.deadlines import DeadlinePolicy
from frontend.core.faults import FaultPlan, parse_fault_metadata
from frontend.core.routes import Route, RouteError, parse_route
from frontend.dataplane.batching import DEFAULT_ESTIMATE_MAX_AGE_S
from service_common import event_loop
from service_common.channels import DEFAULT_RECONNECT_BACKOFF_MS
from service_common.cli import (
    CLIENT_TLS_FLAGS,  # noqa: F401 - the flags this command line takes (tests read them here)
    Flags,
    add_client_tls_flags,
    add_common_flags,
    client_tls_from_args,
    common_config,
    env_name,
    new_parser,
)
from service_common.config_file import ConfigFile, ConfigFileError, load_config_file
from service_common.logs import setup_logging
from service_common.metrics import serve_metrics
from service_common.server import BindError, wait_for_signal
from service_common.tls import describe

log = logging.getLogger("frontend")
CONFIG_ENV = env_name("frontend", "--config")
NO_ROUTE = (
    f"no route: give --route MODEL=SCHEME[:key=value,...], {env_name('frontend', '--route', True)}, or "
    f"[[route]] tables in a --config file ({CONFIG_ENV})"
)


def parser(environ: Mapping[str, str] | None = None, config: str | None = None) -> argparse.ArgumentParser:
    """Every flag, each also a ``CODEDSERVE_FRONTEND_*`` variable (``--help`` names them) and a key of the
    configuration file ``config`` (None: the one ``CODEDSERVE_FRONTEND_CONFIG`` names, if any). Raises
    ConfigFileError naming the file, the key and the problem."""
    environ = os.environ if environ is None else environ
    path = config or environ.get(CONFIG_ENV, "")
    return _flags(environ, load_config_file(path) if path else None).parser


def parse(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """The command line ``argv`` (None: sys.argv's) over ``environ`` over the ``--config`` file it names;
    a bad file exits naming the file, the key and the problem."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    config = pre.parse_known_args(argv)[0].config
    try:
        return parser(environ, config).parse_args(argv)
    except ConfigFileError as exc:
        raise SystemExit(f"frontend: bad configuration: {exc}") from None


def _flags(environ: Mapping[str, str], file: ConfigFile | None) -> Flags:
    flags = Flags(new_parser("python -m frontend", __doc__), "frontend", environ, file)
    add = flags.add
    add(
        "--config",
        metavar="FILE",
        in_file=False,
        help="a TOML file of settings: any flag by its name without '--', and [[route]] tables (each with its "
        "own deadlines if it sets them); variables and flags override it (docs/configuration.md)",
    )
    add_common_flags(flags, default_port=8100)
    add("--kserve-address", help="also serve Triton's KServe v2 gRPC protocol (tritonclient, perf_analyzer) here")
    _triton_flags(flags)
    add(
        "--coding",
        choices=("services", "local"),
        default="services",
        help="where groups are encoded and decoded: the encoder/decoder services, or the same coding library "
        "inside the frontend (no hop; for cheap encoders)",
    )
    add(
        "--coding-transport",
        choices=("stream", "unary"),
        default="stream",
        help="how encodes and decodes reach the coding services: messages on one long-lived stream per service "
        "(a fraction of a call's CPU), or one unary call per batch (what services older than EncodeStream serve)",
    )
    add(
        "--encoder-url",
        "--encoder",
        default="127.0.0.1:8101",
        help="the encoder service's host:port",
    )
    add(
        "--decoder-url",
        "--decoder",
        default="127.0.0.1:8102",
        help="the decoder service's host:port",
    )
    add(
        "--route",
        repeat=True,
        sep=";",
        in_file=False,  # the file's [[route]] tables: frontend.app.config_file
        help="MODEL=SCHEME[:key=value,...], e.g. mnist_cnn=parm:k=2,encoder=concat or mnist_cnn=none; "
        "repeatable (in the variable: ';'-separated). Replaces the --config file's routes; no default: a route "
        "must come from one of the three",
    )
    _deadline_flags(flags)
    add("--default-deadline-s", type=float, default=5.0, help="deadline for clients that set none")
    add("--triton-timeout-s", type=float, default=30.0, help="safety deadline of each Triton call")
    add(
        "--max-inflight",
        type=int,
        default=256,
        help="beyond this many queries in flight: RESOURCE_EXHAUSTED at once (a KServe batch counts its rows)",
    )
    add(
        "--max-inflight-per-client",
        type=int,
        default=128,
        help="beyond this many queries in flight from one client (its x-codedserve-client metadata, else its "
        "connection): RESOURCE_EXHAUSTED at once",
    )
    add(
        "--max-concurrent-rpcs",
        type=int,
        help="gRPC's own bound, checked before any handler runs: beyond this many RPCs open at once on a data "
        "port, RESOURCE_EXHAUSTED 'Concurrent RPC limit exceeded!'. Each port counts its own; a stream is one RPC "
        "however many messages it carries; health and reflection on the port count too, the --health-address "
        "port never. Unset: --max-inflight plus a quarter (at least 64 more), so that admission's own bounds "
        "answer ordinary overload first; 0: off",
    )
    add(
        "--refuse-by-wait",
        switch=True,
        default=True,
        help="refuse a query at once (RESOURCE_EXHAUSTED) when the Triton queue ahead of it would take longer "
        "than its deadline (--no-refuse-by-wait: only the counts bound admission)",
    )
    add(
        "--wait-estimate-max-age-s",
        type=float,
        default=DEFAULT_ESTIMATE_MAX_AGE_S,
        help="the call time behind --refuse-by-wait is forgotten when no Triton call has returned for this long "
        "(the next query is let through to measure again): after a fault, short deadlines are refused for at "
        "most about this long",
    )
    add_client_tls_flags(flags)
    _health_flags(flags)
    _fault_flags(flags)
    flags.check_file(elsewhere=[ROUTE_KEY])
    flags.parser.set_defaults(config_file=file, flag_settings=flags.settings)
    return flags


def _health_flags(flags: Flags) -> None:
    add = flags.add
    add(
        "--health-interval-s",
        type=float,
        default=0.5,
        help="how often Triton's ModelReady (a real inference once a model's calls keep failing) and the coding "
        "services' health are probed; grpc.health.v1 and the KServe ServerReady/ModelReady follow "
        "(frontend.app.health)",
    )
    add("--health-timeout-s", type=float, default=1.0, help="a probe unanswered this long counts as down")
    add(
        "--warm-up",
        switch=True,
        default=True,
        help="send every model one all-zero query on each of its instances before health says SERVING, so the "
        "first real queries do not pay a fresh model's first inference (--no-warm-up: skip it)",
    )
    add(
        "--reconnect-backoff-ms",
        type=int,
        default=DEFAULT_RECONNECT_BACKOFF_MS,
        help="the longest wait between reconnect attempts of a channel to Triton or a coding service (gRPC's "
        "default grows to 120 s)",
    )


def _triton_flags(flags: Flags) -> None:
    add = flags.add
    add(
        "--triton-url",
        repeat=True,
        help="Triton gRPC host:port; repeat for several instances (127.0.0.1:8001 when no --triton-dns)",
    )
    add("--parity-triton-url", repeat=True, help="Triton instance(s) for the parity models (default: --triton-url's)")
    add(
        "--triton-dns",
        help="NAME:PORT of a headless Service: every address behind NAME is one Triton instance, re-resolved "
        "every --dns-refresh-s (instead of --triton-url)",
    )
    add("--parity-triton-dns", help="NAME:PORT of the parity models' headless Service (default: --triton-dns's)")
    add("--dns-refresh-s", type=float, default=5.0, help="how often --triton-dns names are resolved again")
    add("--dns-server", help="HOST[:PORT] of the DNS server to ask for --triton-dns names (default: the system's)")
    add(
        "--batch-inflight",
        type=int,
        default=1,
        help="ModelInfer calls in flight per Triton instance and model; calls that queue meanwhile leave together "
        "as one batch",
    )
    add(
        "--triton-transport",
        choices=("unary", "stream"),
        default="unary",
        help="how calls reach Triton: one ModelInfer call each, or messages on one long-lived ModelStreamInfer "
        "stream per instance",
    )
    add(
        "--cancel-losers",
        switch=True,
        default=False,
        help="give up Triton calls no query waits for any more (losing hedged/replicated copies, the calls of a "
        "coding group whose queries are all answered): dropped while queued, and a sent call cancelled once every "
        "call batched into it was given up (unary transport only). Only for Triton 24.12 or later: the local 2.51 "
        "crashes on a cancelled call",
    )


def _deadline_flags(flags: Flags) -> None:
    """The frontend's deadlines (frontend.core.deadlines); a route of the --config file may set its own."""
    add = flags.add
    add(
        "--straggler-timeout-ms",
        type=float,
        default=20.0,
        help="how long to wait for a deployed-model answer before decoding it (with --straggler-quantile: the cap)",
    )
    add(
        "--straggler-quantile",
        type=float,
        help="adaptive straggler deadline: this quantile of recent deployed-call latencies, e.g. 0.95 "
        "(unset: fixed at --straggler-timeout-ms)",
    )
    add("--straggler-floor-ms", type=float, default=1.0, help="the adaptive straggler deadline never goes below this")
    add(
        "--fill-timeout-ms",
        type=float,
        default=5.0,
        help="a partial coding group is sealed (padded) after this (with --adaptive-fill: the cap)",
    )
    add(
        "--adaptive-fill",
        switch=True,
        default=False,
        help="seal a partial group sooner when its parity would otherwise come back after the straggler deadline, "
        "or when partners are overdue at the observed arrival rate",
    )
    add("--fill-floor-ms", type=float, default=0.5, help="the adaptive fill timeout never goes below this")
    add(
        "--resend-after-ms",
        type=float,
        help="Collage-CNN's fallback: a query still missing its own answer after this, which its group cannot "
        "rebuild yet, is sent once more to another instance (unset: off)",
    )


def _fault_flags(flags: Flags) -> None:
    group = flags.parser.add_argument_group("fault injection (demos and tests only)")
    add = functools.partial(flags.add, group=group)
    add("--inject-delay-share", type=float, default=0.0, help="share of deployed calls delayed")
    add("--inject-delay-ms", default="50,200", help="MIN,MAX of the injected delay")
    add("--inject-fail-share", type=float, default=0.0, help="share of deployed calls failed")
    add("--inject-seed", type=int, default=0, help="seed of the injected faults")
    add(
        "--inject-worker-faults",
        "--inject-coded-faults",
        default="",
        help="faults pinned to workers of every group, WORKER=FAULT,... e.g. 3=delay=3000,5=corrupt; workers are "
        "numbered data slots first, then coded slots (coded slots only for a non-systematic code)",
    )
    add(
        "--allow-fault-metadata",
        switch=True,
        default=False,
        help="honour a request's codedserve-fault metadata (delay=MS | fail)",
    )


def config_from_args(args: argparse.Namespace) -> FrontendConfig:
    common = common_config(args)  # imports the scheme modules before the routes: they may name a plug-in scheme
    urls = args.triton_url or ([] if args.triton_dns else ["127.0.0.1:8001"])
    delay_min, _, delay_max = args.inject_delay_ms.partition(",")
    try:
        faults = FaultPlan(
            args.inject_delay_share,
            float(delay_min),
            float(delay_max or delay_min),
            args.inject_fail_share,
            args.inject_seed,
            args.allow_fault_metadata,
            _worker_faults(args.inject_worker_faults),
        )
        triton_tls, coding_tls = client_tls_from_args(args)
        deadlines = deadline_policy(vars(args))
        return FrontendConfig(
            address=common.address,
            triton_urls=tuple(urls),
            encoder_address=args.encoder_url,
            decoder_address=args.decoder_url,
            routes=_routes(args, deadlines),
            deadlines=deadlines,
            batch_inflight=args.batch_inflight,
            triton_transport=args.triton_transport,
            cancel_losers=args.cancel_losers,
            default_deadline_s=args.default_deadline_s,
            triton_timeout_s=args.triton_timeout_s,
            max_inflight=args.max_inflight,
            max_inflight_per_client=args.max_inflight_per_client,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            refuse_by_wait=args.refuse_by_wait,
            wait_estimate_max_age_s=args.wait_estimate_max_age_s,
            max_message_bytes=common.max_message_bytes,
            metrics_port=common.metrics_port,
            metrics_address=common.metrics_address,
            log_level=common.log_level,
            log_format=common.log_format,
            kserve_address=args.kserve_address or None,
            faults=faults,
            parity_triton_urls=tuple(args.parity_triton_url),
            scheme_modules=common.scheme_modules,
            coding=args.coding,
            coding_transport=args.coding_transport,
            triton_dns=args.triton_dns or "",
            parity_triton_dns=args.parity_triton_dns or "",
            dns_refresh_s=args.dns_refresh_s,
            dns_server=args.dns_server or "",
            tls=common.tls,
            health_address=common.health_address,
            event_loop=common.event_loop,
            triton_tls=triton_tls,
            coding_tls=coding_tls,
            reconnect_backoff_ms=args.reconnect_backoff_ms,
            health_interval_s=args.health_interval_s,
            health_timeout_s=args.health_timeout_s,
            warm_up=args.warm_up,
        )
    except ValueError as exc:
        raise SystemExit(f"frontend: bad configuration: {exc}") from exc


def _routes(args: argparse.Namespace, deadlines: DeadlinePolicy) -> tuple[Route, ...]:
    """--route / CODEDSERVE_FRONTEND_ROUTES if given, else the --config file's; none at all is an error."""
    if args.route:
        return tuple(parse_route(r) for r in args.route)
    routes = tuple(r.resolve(deadlines) for r in file_routes(getattr(args, "config_file", None), args.flag_settings))
    if not routes:
        raise ValueError(NO_ROUTE)
    return routes


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
        "frontend serving on port %d (KServe v2: %s; %s); routes: %s",
        server.port,
        server.kserve_port or "off",
        describe(config.tls),
        ", ".join(f"{r.model}={r.scheme}(k={r.k})" for r in config.routes),
    )
    signalled = asyncio.ensure_future(wait_for_signal())
    try:
        await asyncio.wait({signalled, server.loading}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
        await server.stop()
    loading = server.loading
    if loading.done() and not loading.cancelled() and (error := loading.exception()) is not None:
        raise error  # a route Triton will not serve: main() exits naming it


def main() -> None:
    config = config_from_args(parse())
    setup_logging(config.log_level, config.log_format)
    try:
        serve_metrics(config.metrics_port, config.metrics_address)
        event_loop.run(_main(config), config.event_loop)
    except RouteError as exc:  # a configuration error, found once Triton answered: exit, naming it
        raise SystemExit(f"frontend: {exc}") from None
    except BindError as exc:  # a clear line, not a traceback: the port (gRPC or metrics) is someone else's
        raise SystemExit(f"frontend: {exc}") from None


if __name__ == "__main__":
    main()
