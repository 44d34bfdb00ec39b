"""The frontend's gRPC servers: the Frontend service and, when configured, Triton's own KServe v2
protocol on a second port. Health on both is NOT_SERVING until Triton has the models, then follows
the health monitor (:mod:`frontend.app.health`): NOT_SERVING while some route cannot be answered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from tritonclient.grpc import service_pb2_grpc as kserve_grpc

from frontend.api.classify import FrontendServicer
from frontend.api.common import READ_SLACK
from frontend.api.kserve import SERVICE_NAME as KSERVE_SERVICE_NAME
from frontend.api.kserve import KServeServicer
from frontend.app.assembly import FrontendApp
from frontend.app.config import FrontendConfig
from frontend.app.health import Health, HealthMonitor, monitor_for
from service_common.server import NOT_SERVING, SERVING, Running, start_server

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Frontend"].full_name


@dataclass
class FrontendServer:
    running: Running
    app: FrontendApp
    _loader: asyncio.Task[None]
    kserve: Running | None = None  # the KServe v2 port (config.kserve_address), sharing the same app
    _kserve_servicer: KServeServicer | None = None
    monitor: HealthMonitor | None = None

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def loading(self) -> asyncio.Task[None]:
        """Becoming ready, then the health monitor: done only once stopped, or when becoming ready failed
        (:class:`frontend.app.RouteError`: a route names a model Triton will not serve)."""
        return self._loader

    @property
    def kserve_port(self) -> int | None:
        return self.kserve.port if self.kserve is not None else None

    async def stop(self, grace_s: float = 2.0) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        self._loader.cancel()
        await asyncio.gather(*(r.stop(grace_s) for r in (self.running, self.kserve) if r is not None))
        if self._kserve_servicer is not None:
            await self._kserve_servicer.close()
        await self.app.close()


async def create_server(config: FrontendConfig) -> FrontendServer:
    """Start serving at once; health flips to SERVING once the routes are loaded (those whose models Triton
    has but does not serve stay down, under their own health names, until it does: FrontendApp.load_pending).
    Raises BindError (naming the address) when a port is taken, after closing what it opened."""
    app = FrontendApp(config)
    ports: list[Running] = []  # whose health the monitor sets
    monitor = monitor_for(app, lambda health: _publish(app, health, ports))
    async with contextlib.AsyncExitStack() as undo:  # runs only when a bind fails: close what was opened
        await app.start()
        undo.push_async_callback(app.close)
        running = await start_server(
            [lambda server: pb_grpc.add_FrontendServicer_to_server(FrontendServicer(app), server)],
            [SERVICE_NAME],
            config.address,
            config.max_message_bytes,
            serving=False,
            tls=config.tls,
            read_slack=READ_SLACK,
            health_address=config.health_address,  # follows this port's health (the same servicer); no bound
            max_concurrent_rpcs=config.rpc_bound,
        )
        undo.push_async_callback(running.stop, 0)
        kserve, kservicer = None, None
        if config.kserve_address is not None:
            kservicer = KServeServicer(app, app.catalog, monitor)
            undo.push_async_callback(kservicer.close)
            kserve = await start_server(
                [lambda server: kserve_grpc.add_GRPCInferenceServiceServicer_to_server(kservicer, server)],
                [KSERVE_SERVICE_NAME],
                config.kserve_address,
                config.max_message_bytes,
                serving=False,
                tls=config.tls,
                read_slack=READ_SLACK,
                max_concurrent_rpcs=config.rpc_bound,  # a bound of its own: the count is per port
            )
        undo.pop_all()
    ports += [p for p in (running, kserve) if p is not None]

    async def become_ready() -> None:
        await app.load_until_ready()
        if config.warm_up:
            await app.warm_up()
        await monitor.run()

    return FrontendServer(running, app, asyncio.create_task(become_ready()), kserve, kservicer, monitor)


async def _publish(app: FrontendApp, health: Health, ports: list[Running]) -> None:
    """Every port's grpc.health.v1: "" and its service names, and one name per route (frontend.app.health);
    the dataplane refuses a down route's queries at once."""
    app.set_down(health.down())
    for running in ports:
        await running.set_serving(health.serving)
        for name, up in health.statuses().items():
            await running.health.set(name, SERVING if up else NOT_SERVING)
