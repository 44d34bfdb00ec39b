"""The frontend's long-lived state: Triton pool, coding clients, one ModelServer per route, admission."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from frontend.coding_clients import CodingClients
from frontend.config import FrontendConfig
from frontend.coordinator import ModelServer
from frontend.dispatch import Dispatcher
from frontend.service_time import ServiceTime
from frontend.workers import FaultInjector, TritonPool, WorkerError, parse_fault_metadata
from service_common.errors import NotFound, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


class FrontendApp:
    def __init__(self, config: FrontendConfig) -> None:
        self.config = config
        self.pool = self._pool(config.triton_urls, seed=config.faults.seed)
        parity_urls = config.parity_triton_urls or config.triton_urls
        self.parity_pool = (
            self.pool if parity_urls == config.triton_urls else self._pool(parity_urls, seed=config.faults.seed + 1)
        )
        self.coders = CodingClients(
            config.encoder_address, config.decoder_address, config.coding_timeout_s, config.max_message_bytes
        )
        faults = FaultInjector(config.faults)
        coded_faults = tuple((worker, parse_fault_metadata(f)) for worker, f in config.faults.coded)
        self.servers = {
            r.model: ModelServer(
                r,
                Dispatcher(self.pool, r.dispatch, faults, config.cancel_losers),
                self.pool,
                self.parity_pool,
                self.coders,
                config.straggler_timeout_ms / 1e3,
                config.fill_timeout_ms / 1e3,
                coded_faults,
            )
            for r in config.routes
        }
        self._inflight = 0

    def _pool(self, urls: tuple[str, ...], seed: int) -> TritonPool:
        name = self.config.faults.service_time
        service_time = ServiceTime(name, seed) if name else None
        return TritonPool(urls, self.config.triton_timeout_s, self.config.max_message_bytes, service_time)

    async def start(self) -> None:
        await self.pool.start()
        if self.parity_pool is not self.pool:
            await self.parity_pool.start()
        await self.coders.start()

    async def close(self) -> None:
        await asyncio.gather(*(s.drain(timeout_s=5.0) for s in self.servers.values()))
        await self.pool.close()
        if self.parity_pool is not self.pool:
            await self.parity_pool.close()
        await self.coders.close()

    @property
    def ready(self) -> bool:
        return all(s.signature is not None for s in self.servers.values())

    async def load_until_ready(self, retry_s: float = 1.0, give_up_s: float | None = None) -> None:
        """Read every model's signature from Triton, retrying while Triton starts up."""
        loop = asyncio.get_running_loop()
        deadline = None if give_up_s is None else loop.time() + give_up_s
        while True:
            try:
                for server in self.servers.values():
                    if server.signature is None:
                        await server.load()
                log.info("all models ready: %s", ", ".join(self.servers))
                return
            except WorkerError as exc:
                if deadline is not None and loop.time() >= deadline:
                    raise
                log.info("waiting for Triton: %s", exc)
                await asyncio.sleep(retry_s)

    def model_server(self, model: str) -> ModelServer:
        server = self.servers.get(model)
        if server is None:
            raise NotFound(f"model {model!r} is not served by this frontend; served: {sorted(self.servers)}")
        if server.signature is None:
            raise Unavailable(
                f"model {model!r} is not ready yet: Triton at {self.config.triton_urls[0]} has not reported it ready"
            )
        return server

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        if self._inflight >= self.config.max_inflight:
            raise ResourceExhausted(
                f"frontend overloaded: {self._inflight} queries in flight "
                f"(max_inflight={self.config.max_inflight}); retry with backoff"
            )
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1
