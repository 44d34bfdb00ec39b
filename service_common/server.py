"""Assemble a grpc.aio server: error mapping, health, reflection, message limits, graceful stop.

Every server refuses to share its port: grpcio turns SO_REUSEPORT on by default, and a second server
started on a port in use would bind it silently and take part of its traffic. With it off, the
second one fails at once with :class:`BindError` naming the address. Given :class:`ServerTLS`, the port
speaks only TLS (and, with a client CA, only to clients presenting a certificate it signed).

Given a health address, a second, always-plaintext port serves only ``grpc.health.v1``, from the same
health servicer as the main port: kubelet's native ``grpc:`` probe speaks neither TLS nor mTLS, so a pod
whose main port does TLS is probed there. It carries no data service: a plaintext port never answers a query.

Given ``max_concurrent_rpcs``, the main port holds at most that many RPCs open at once (a stream is one RPC
however many messages it carries). grpc.aio counts an RPC from the moment it takes it from the core until
its handler's task ends, and answers one more at once with RESOURCE_EXHAUSTED ``Concurrent RPC limit
exceeded!`` (grpcio 1.81) before looking at its request or running a handler. The count is the port's: every
service on it, grpc.health.v1 included, takes a place and can be refused. The health-only port never has
the bound, so probes that must be answered whatever the load ask there.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service_common.channels import message_limits
from service_common.errors import BindError
from service_common.gc_tuning import freeze_startup_heap
from service_common.health import Health
from service_common.interceptor import ErrorMappingServer
from service_common.tls import ServerTLS

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
NO_PORT_SHARING = ("grpc.so_reuseport", 0)
# A health name that is SERVING from start to graceful shutdown whatever the dependencies: what a liveness
# probe asks (``grpc: {port, service}``), while readiness asks "" (NOT_SERVING until e.g. Triton is ready).
LIVENESS_SERVICE = "codedserve.liveness"
# A health request is a service name: nothing bigger is read on the plaintext health port.
HEALTH_PORT_OPTIONS = [("grpc.max_receive_message_length", 4096), NO_PORT_SHARING]


@dataclass
class Running:
    """A started server: the port it bound and its health servicer (to flip readiness)."""

    server: grpc.aio.Server
    port: int
    health: Health
    service_names: tuple[str, ...]
    health_server: grpc.aio.Server | None = None  # the plaintext health-only port, when asked for
    health_port: int | None = None

    async def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        servers = [s for s in (self.server, self.health_server) if s is not None]
        await asyncio.gather(*(s.stop(grace_s) for s in servers))


async def start_server(
    register: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    address: str,
    max_message_bytes: int,
    serving: bool = True,
    tls: ServerTLS | None = None,
    read_slack: int = 1,
    health_address: str | None = None,
    max_concurrent_rpcs: int | None = None,
) -> Running:
    """Bind ``address`` (``host:0`` picks a free port; TLS when ``tls`` is given), register services +
    health + reflection, start; with ``health_address``, also the plaintext health-only port there.

    gRPC refuses a message over its receive limit unread and ends the whole call. A server whose
    servicer checks ``max_message_bytes`` per message itself (so that a stream answers an oversized
    message alone and goes on) reads up to ``read_slack`` times that limit; past it, gRPC still ends the
    call, since reading further would hold memory no limit bounds. ``max_concurrent_rpcs`` (None: no
    bound) bounds the RPCs open at once on ``address`` alone (module docstring)."""
    options = [*message_limits(max_message_bytes, read_slack), NO_PORT_SHARING]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=max_concurrent_rpcs)
    mapped = ErrorMappingServer(server)  # every status and count comes from service_common.interceptor
    for add in register:
        add(mapped)  # type: ignore[arg-type]  # it has the two methods registration calls
    health_servicer = Health()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, mapped)  # type: ignore[arg-type]
    reflection_names = (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(reflection_names), mapped
    )  # type: ignore[arg-type]
    port = _bind(server, address, tls)
    await server.start()
    running = Running(server, port, health_servicer, tuple(service_names))
    if health_address is not None:
        try:
            running.health_server, running.health_port = await _start_health_port(health_servicer, health_address)
        except BindError:
            await server.stop(None)  # a started server releases its port when stopped (a bound, unstarted one not)
            raise
    await running.set_serving(serving)
    await health_servicer.set(LIVENESS_SERVICE, SERVING)
    freeze_startup_heap()  # no full-heap GC pauses in the serving path (see gc_tuning)
    return running


async def _start_health_port(health_servicer: Health, address: str) -> tuple[grpc.aio.Server, int]:
    """Only ``grpc.health.v1`` from the main port's servicer (so every status is the main port's), no
    reflection, in plaintext."""
    server = grpc.aio.server(options=HEALTH_PORT_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = _bind(server, address, None)
    await server.start()
    log.info("plaintext grpc.health.v1 only on port %d", port)
    return server, port


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
