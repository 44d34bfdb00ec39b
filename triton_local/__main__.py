"""``python -m triton_local``: serve a model repository with the real tritonserver on CPU until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from service_common.tls import server_tls
from triton_local import service_time
from triton_local.server import DEFAULT_BUILD_DIR, TritonConfig, TritonServer, TritonStartError

LOG = logging.getLogger("triton_local")
TLS_FLAGS = ("--grpc-tls-cert", "--grpc-tls-key", "--grpc-tls-client-ca")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m triton_local",
        description="Run tritonserver (nvidia-pytriton wheel) on 127.0.0.1 over a model repository whose configs "
        "say backend: onnxruntime, served by our Python-based onnxruntime backend.",
    )
    parser.add_argument("--model-repository", type=Path, required=True, help="directory of <model>/config.pbtxt")
    parser.add_argument("--grpc-port", type=int, default=8001, help="0 picks a free port (default %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port (default %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="0 picks a free port (default %(default)s)")
    parser.add_argument("--models", help="comma-separated models to load (explicit model control); default: all")
    parser.add_argument("--model-config-name", help="load configs/<NAME>.pbtxt where a model has one")
    parser.add_argument("--build-dir", type=Path, default=DEFAULT_BUILD_DIR, help="backend dir and logs go here")
    parser.add_argument("--log-file", type=Path, help="tritonserver output (default: <build-dir>/logs/...)")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    parser.add_argument("--log-level", default="INFO")
    emulation = parser.add_argument_group(
        "emulated accelerator time (local benchmarks only; the model repository stays as a GPU cluster serves it)"
    )
    emulation.add_argument(
        "--service-time",
        default="",
        metavar="MODEL=LAW[;MODEL=LAW...]",
        help="hold each execution of MODEL's instance until a time drawn from LAW has passed since it began "
        "('*' = every model not named). LAW: collage | samples:path=FILE (ms per line) | "
        "lognormal:median=MS,p99=MS | fixed:ms=MS, optionally followed by ,batch=flat (a batch takes one draw) "
        "or ,batch=linear:per_row=X (t(b) = t(1)*(1 + X*(b-1))). "
        "E.g. 'mnist_cnn=lognormal:median=20,p99=60;*=collage' (default: off)",
    )
    emulation.add_argument(
        "--service-time-seed",
        type=int,
        default=0,
        help="seed of the draws, with model and instance (default %(default)s)",
    )
    tls = parser.add_argument_group("TLS on the gRPC port (off when unset; HTTP and metrics stay plaintext)")
    tls.add_argument("--grpc-tls-cert", metavar="FILE", help="PEM certificate tritonserver presents on gRPC")
    tls.add_argument("--grpc-tls-key", metavar="FILE", help="PEM private key of --grpc-tls-cert")
    tls.add_argument("--grpc-tls-client-ca", metavar="FILE", help="clients must present a cert this CA signed (mTLS)")
    return parser


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TritonConfig:
    """Flags -> one validated config; a bad value exits with the flag's name."""
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models is not None else None
    try:
        service_time.parse(args.service_time)
    except service_time.ServiceTimeError as exc:
        parser.error(f"--service-time: {exc}")
    try:
        tls = server_tls(args.grpc_tls_cert, args.grpc_tls_key, args.grpc_tls_client_ca, TLS_FLAGS)
        return TritonConfig(
            model_repository=args.model_repository,
            grpc_port=args.grpc_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            models=models,
            model_config_name=args.model_config_name,
            build_dir=args.build_dir,
            log_path=args.log_file,
            ready_timeout_s=args.ready_timeout,
            grpc_tls=tls,
            service_time=args.service_time,
            service_time_seed=args.service_time_seed,
        )
    except ValueError as exc:  # TLSConfigError too
        parser.error(str(exc))


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM and SIGINT both unwind the ``with`` block below, which stops the server. Installed explicitly:
    a shell starts background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = _config(args, parser)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    server = TritonServer(config)
    try:
        with server:
            LOG.info("serving: grpc %s  http %s  metrics %s", server.grpc_url, server.http_url, server.metrics_url)
            code = server.wait()
            LOG.error("tritonserver exited on its own (%s):\n%s", code, server.log_tail())
            return 1
    except TritonStartError as exc:
        LOG.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        LOG.info("stopped")
        return 0


if __name__ == "__main__":
    sys.exit(main())
