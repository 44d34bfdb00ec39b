"""The frontend's gRPC server: Frontend service + health (NOT_SERVING until Triton has the models)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from frontend.app import FrontendApp
from frontend.config import FrontendConfig
from frontend.servicer import FrontendServicer
from service_common.server import Running, start_server

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Frontend"].full_name


@dataclass
class FrontendServer:
    running: Running
    app: FrontendApp
    _loader: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace_s: float = 2.0) -> None:
        self._loader.cancel()
        await self.running.stop(grace_s)
        await self.app.close()


async def create_server(config: FrontendConfig) -> FrontendServer:
    """Start serving at once; health flips to SERVING when every routed model is ready on Triton."""
    app = FrontendApp(config)
    await app.start()
    running = await start_server(
        [lambda server: pb_grpc.add_FrontendServicer_to_server(FrontendServicer(app), server)],
        [SERVICE_NAME], config.address, config.max_message_bytes, serving=False,
    )

    async def become_ready() -> None:
        await app.load_until_ready()
        await running.set_serving(True)

    return FrontendServer(running, app, asyncio.create_task(become_ready()))
