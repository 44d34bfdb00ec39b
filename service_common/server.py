"""Assemble a grpc.aio server: our interceptor, health, reflection, message limits, graceful stop.

Every server refuses to share its port: grpcio turns SO_REUSEPORT on by default, and a second server
started on a port in use would bind it silently and take part of its traffic. With it off, the
second one fails at once with :class:`BindError` naming the address. Given :class:`ServerTLS`, the port
speaks only TLS (and, with a client CA, only to clients presenting a certificate it signed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from service_common.channels import message_limits
from service_common.gc_tuning import freeze_startup_heap
from service_common.interceptor import ErrorMappingInterceptor
from service_common.tls import ServerTLS

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NO_PORT_SHARING = ("grpc.so_reuseport", 0)
# A health name that is SERVING from start to graceful shutdown whatever the dependencies: what a liveness
# probe asks (``grpc: {port, service}``), while readiness asks "" (NOT_SERVING until e.g. Triton is ready).
LIVENESS_SERVICE = "codedserve.liveness"


class BindError(OSError):
    """A server could not bind its address (in use by another process, or not ours to bind)."""


@dataclass
class Running:
    """A started server: the port it bound and its health servicer (to flip readiness)."""

    server: grpc.aio.Server
    port: int
    health: HealthServicer
    service_names: tuple[str, ...]

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_server(
    register: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    address: str,
    max_message_bytes: int,
    serving: bool = True,
    tls: ServerTLS | None = None,
) -> Running:
    """Bind ``address`` (``host:0`` picks a free port; TLS when ``tls`` is given), register services +
    health + reflection, start."""
    options = [*message_limits(max_message_bytes), NO_PORT_SHARING]
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()], options=options)
    for add in register:
        add(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = _bind(server, address, tls)
    await server.start()
    running = Running(server, port, health_servicer, tuple(service_names))
    await running.set_serving(serving)
    await health_servicer.set(LIVENESS_SERVICE, SERVING)
    freeze_startup_heap()  # no full-heap GC pauses in the serving path (see gc_tuning)
    return running


def _bind(server: grpc.aio.Server, address: str, tls: ServerTLS | None) -> int:
    cause: RuntimeError | None = None
    try:
        port = server.add_insecure_port(address) if tls is None else server.add_secure_port(address, tls.credentials())
    except RuntimeError as exc:  # grpcio's way of saying the bind failed (older ones returned 0)
        port, cause = 0, exc
    if port == 0:
        unusable = ", or its TLS certificate and key are unusable" if tls is not None else ""
        raise BindError(
            f"could not bind {address}: in use by another process, or not an address of this host{unusable} "
            "(servers never share a port)"
        ) from cause
    return port


async def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (the caller then drains and stops)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("signal received; shutting down")
