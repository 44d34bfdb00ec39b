"""python -m encoder_service: k queries -> r parity queries, as a stateless gRPC service."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping

from encoder_service.server import create_server
from service_common import event_loop
from service_common.cli import ServiceConfig, coding_service_parser, common_config
from service_common.logs import setup_logging
from service_common.metrics import serve_metrics
from service_common.server import BindError, wait_for_signal
from service_common.tls import describe

log = logging.getLogger("encoder_service")


async def _main(config: ServiceConfig) -> None:
    running = await create_server(config)
    log.info("encoder serving on port %d (%s)", running.port, describe(config.tls))
    await wait_for_signal()
    await running.stop()


def parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Flags, each also a ``CODEDSERVE_ENCODER_*`` variable (``--help`` names them)."""
    return coding_service_parser("encoder", __doc__, 8101, environ)[0]


def main() -> None:
    config = common_config(parser().parse_args())
    setup_logging(config.log_level)
    try:
        serve_metrics(config.metrics_port, config.metrics_address)
        event_loop.run(_main(config), config.event_loop)
    except BindError as exc:  # a clear line, not a traceback: the port (gRPC or metrics) is someone else's
        raise SystemExit(f"encoder_service: {exc}") from None


if __name__ == "__main__":
    main()
