"""The shape of a service's process, and the whole of the two coding services but their servicers.

:func:`run_service` is what every ``python -m <service>`` does once its flags are a config: logging,
``/metrics``, then the service on its event loop, and a one-line exit (not a traceback) for an error the
operator must fix, such as a port someone else holds. :class:`CodingService` is the encoder's and the
decoder's flags, server and main: the two differ only in name, default port and servicer.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from codedserve.v1 import codedserve_pb2 as pb

from service_common import event_loop
from service_common.cli import ServiceConfig, coding_service_parser, common_config
from service_common.errors import BindError
from service_common.logs import setup_logging
from service_common.metrics import serve_metrics
from service_common.server import Running, start_server, wait_for_signal
from service_common.tls import describe


class ProcessConfig(Protocol):
    """What :func:`run_service` reads of a service's config."""

    @property
    def log_level(self) -> str: ...
    @property
    def log_format(self) -> str: ...
    @property
    def metrics_port(self) -> int | None: ...
    @property
    def metrics_address(self) -> str: ...
    @property
    def event_loop(self) -> str: ...


def run_service(
    process: str,
    config: ProcessConfig,
    serve: Callable[[], Coroutine[Any, Any, None]],
    exits: tuple[type[Exception], ...] = (BindError,),
) -> None:
    """Set up logging, serve ``/metrics``, run ``serve()`` on the configured event loop until it returns.
    An error of a type in ``exits`` ends the process with SystemExit ``"<process>: <error>"``."""
    setup_logging(config.log_level, config.log_format)
    try:
        serve_metrics(config.metrics_port, config.metrics_address)
        event_loop.run(serve(), config.event_loop)
    except exits as exc:  # a clear line, not a traceback: e.g. the port (gRPC or metrics) is someone else's
        raise SystemExit(f"{process}: {exc}") from None


@dataclass(frozen=True)
class CodingService:
    """One stateless coding service: ``python -m <name>_service``, flags read ``CODEDSERVE_<NAME>_*``.

    ``grpc_service`` is its service in codedserve.v1 (also a health name, SERVING while it runs);
    ``add_servicer`` registers a new servicer of it on a server."""

    name: str
    default_port: int
    grpc_service: str
    add_servicer: Callable[[grpc.aio.Server], None]

    @property
    def service_name(self) -> str:
        """The full gRPC name, ``codedserve.v1.Encoder``: what health and reflection name."""
        return str(pb.DESCRIPTOR.services_by_name[self.grpc_service].full_name)

    @property
    def process(self) -> str:
        return f"{self.name}_service"

    async def create_server(self, config: ServiceConfig) -> Running:
        """Start serving on config.address (TLS when config.tls is set), and health alone on
        config.health_address when set; returns the running server and its bound port."""
        return await start_server(
            [self.add_servicer],
            [self.service_name],
            config.address,
            config.max_message_bytes,
            tls=config.tls,
            health_address=config.health_address,
        )

    def parser(self, description: str | None, environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
        """Flags, each also a ``CODEDSERVE_<NAME>_*`` variable (``--help`` names them)."""
        return coding_service_parser(self.name, description, self.default_port, environ)[0]

    def main(self, description: str | None, argv: list[str] | None = None) -> None:
        """Parse the flags (``argv``, else the command line), then serve until SIGINT or SIGTERM."""
        config = common_config(self.parser(description).parse_args(argv))
        run_service(self.process, config, lambda: self._serve(config))

    async def _serve(self, config: ServiceConfig) -> None:
        running = await self.create_server(config)
        logging.getLogger(self.process).info(
            "%s serving on port %d (%s)", self.name, running.port, describe(config.tls)
        )
        await wait_for_signal()
        await running.stop()
