"""What every service's command line shares: listen address, metrics port, message limit, log level."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from coding.errors import CodingError
from coding.schemes import load_scheme_modules

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ServiceConfig:
    address: str
    metrics_port: int | None
    max_message_bytes: int
    log_level: str
    scheme_modules: tuple[str, ...] = ()  # plug-in modules that register more coding schemes


def add_service_flags(parser: argparse.ArgumentParser, env_prefix: str, default_port: int) -> None:
    """Flags with env fallbacks (``<PREFIX>_ADDRESS`` etc.), so k8s can configure by env."""
    env = os.environ.get
    parser.add_argument(
        "--address",
        default=env(f"{env_prefix}_ADDRESS", f"127.0.0.1:{default_port}"),
        help="host:port to listen on; port 0 picks a free one (env %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=env(f"{env_prefix}_METRICS_PORT"),
        help="serve Prometheus /metrics on 127.0.0.1:PORT (off when unset)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=int(env(f"{env_prefix}_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES)),
        help="largest gRPC message accepted or sent; bigger ones get RESOURCE_EXHAUSTED",
    )
    parser.add_argument("--log-level", default=env(f"{env_prefix}_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--scheme-module",
        action="append",
        default=None,
        help="import this module at start-up so it registers more coding schemes; repeatable; the frontend "
        "needs the same ones (env CODEDSERVE_SCHEME_MODULES, comma-separated)",
    )


def service_config(args: argparse.Namespace) -> ServiceConfig:
    if args.max_message_bytes <= 0:
        raise SystemExit(f"--max-message-bytes must be positive, got {args.max_message_bytes}")
    metrics_port = int(args.metrics_port) if args.metrics_port not in (None, "") else None
    modules = args.scheme_module or [m for m in os.environ.get("CODEDSERVE_SCHEME_MODULES", "").split(",") if m]
    try:
        load_scheme_modules(modules)
    except CodingError as exc:
        raise SystemExit(str(exc)) from exc
    return ServiceConfig(args.address, metrics_port, args.max_message_bytes, args.log_level, tuple(modules))
