"""Triton pod discovery: every address behind a headless Service's DNS name is one Triton instance.

Why: coding protects a group only when its slots run on different Triton pods, and a ClusterIP Service
pins one HTTP/2 connection to one pod (Triton issue #6177). A headless Service's name resolves to the
address of every *ready* pod instead (Triton's readiness is /v2/health/ready: all models loaded).

Every ``refresh_s`` each name (``--triton-dns``, ``--parity-triton-dns``) is resolved again: a new address
becomes an instance once it answers ServerReady, placed level with the others (:meth:`Placer.add`); an
address that is gone is taken out of placement at once and its channel closed once the calls already on
it have finished on their own (:meth:`TritonPool.drain`: never cancelled). A failed or empty answer keeps
the instances as they are (a DNS hiccup must not empty the pool; calls to a pod that died fail on their
own and are decoded around). IPv4 (A records) only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import dns.asyncresolver
import dns.exception
from prometheus_client import Gauge

from frontend.core.placement import Placer
from frontend.transport.triton import TritonPool
from service_common.logs import RateLimitedLog

log = logging.getLogger(__name__)

INSTANCES = Gauge("codedserve_triton_instances", "Triton instances placed on, by source (--*-dns name)", ["source"])


class Resolver(Protocol):
    async def addresses(self, host: str) -> tuple[str, ...]:
        """Every IPv4 address of ``host``, sorted; raises OSError or dns.exception.DNSException."""
        ...


class SystemResolver:
    """The system's resolver (getaddrinfo: /etc/resolv.conf, so a pod's search domains apply)."""

    async def addresses(self, host: str) -> tuple[str, ...]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
        return tuple(sorted({str(info[4][0]) for info in infos}))


class DnsServerResolver:
    """Asks one DNS server (``HOST[:PORT]``) for A records, with no search domains: give full names."""

    def __init__(self, server: str, timeout_s: float = 2.0) -> None:
        host, _, port = server.partition(":")
        self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = [host]
        self._resolver.port = int(port or 53)
        self._resolver.lifetime = timeout_s

    async def addresses(self, host: str) -> tuple[str, ...]:
        answer = await self._resolver.resolve(host, "A", search=False)
        return tuple(sorted({record.to_text() for record in answer}))


def resolver_for(dns_server: str) -> Resolver:
    return DnsServerResolver(dns_server) if dns_server else SystemResolver()


@dataclass(frozen=True)
class Source:
    """One DNS name, ``NAME:PORT``, and the models every instance behind it serves."""

    target: str
    models: frozenset[str]

    @property
    def host(self) -> str:
        return self.target.rpartition(":")[0]

    def url(self, address: str) -> str:
        return f"{address}:{self.target.rpartition(':')[2]}"


@dataclass
class _State:
    placed: set[str] = field(default_factory=set)  # urls whose instance this source's models are placed on


class Discovery:
    """Keeps ``pool`` and ``placer`` equal to the addresses behind every source's name."""

    def __init__(
        self, sources: Mapping[str, Source], pool: TritonPool, placer: Placer, resolver: Resolver, refresh_s: float
    ) -> None:
        self.sources = dict(sources)
        self._pool = pool
        self._placer = placer
        self._resolver = resolver
        self._refresh_s = refresh_s
        self._state = {name: _State() for name in self.sources}
        self._instance: dict[str, int] = {}  # url -> instance number, while its channel is open
        self._drains: set[asyncio.Task[int]] = set()
        self._changed = asyncio.Condition()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._warn = RateLimitedLog(log)
        self.rounds = 0  # refreshes done

    def placed(self, source: str) -> tuple[str, ...]:
        """The urls of the instances ``source``'s models are placed on now."""
        return tuple(sorted(self._state[source].placed))

    def instance(self, url: str) -> int | None:
        return self._instance.get(url)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        for task in self._drains:
            task.cancel()  # waits for calls to end, holds no call itself: the pool closes every channel next
        await asyncio.gather(*self._drains, return_exceptions=True)

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until ``predicate()`` holds after a refresh; raises TimeoutError."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def next_refresh(self) -> None:
        """Return after the next look at DNS (whether or not it changed anything)."""
        async with self._changed:
            await self._changed.wait()

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.refresh()
            try:
                await asyncio.wait_for(self._stop.wait(), self._refresh_s)
            except TimeoutError:
                pass

    async def refresh(self) -> None:
        """Resolve every name once and add or drain instances to match."""
        resolved = {name: await self._resolve(name, source) for name, source in self.sources.items()}
        for name, urls in resolved.items():
            if urls is not None:
                await self._update(name, urls)
        wanted = set().union(*(urls or self._state[n].placed for n, urls in resolved.items()))
        for url in [u for u in self._instance if u not in wanted]:
            self._drain(url)
        self.rounds += 1
        async with self._changed:
            self._changed.notify_all()

    async def _resolve(self, name: str, source: Source) -> set[str] | None:
        try:
            addresses = await self._resolver.addresses(source.host)
        except (OSError, dns.exception.DNSException) as exc:
            self._warn.warning(name, "%s: cannot resolve %s (%s); keeping its instances", name, source.host, exc)
            return None
        if not addresses:
            self._warn.warning(name, "%s: %s has no address; keeping its instances", name, source.host)
            return None
        return {source.url(a) for a in addresses}

    async def _update(self, name: str, urls: set[str]) -> None:
        source, state = self.sources[name], self._state[name]
        new = sorted(urls - state.placed)
        for url in new:
            if url not in self._instance:
                self._instance[url] = self._pool.add(url)
        ready = await asyncio.gather(*(self._pool.ready(self._instance[u]) for u in new))
        for url, is_ready in zip(new, ready, strict=True):
            if is_ready:  # one that is not is asked again at the next refresh
                self._placer.add(self._instance[url], source.models)
                state.placed.add(url)
                log.info("%s: Triton instance %s added (instance %d)", name, url, self._instance[url])
        for url in sorted(state.placed - urls):
            self._placer.remove(self._instance[url], source.models)
            state.placed.discard(url)
            log.info("%s: Triton instance %s removed; draining it", name, url)
        INSTANCES.labels(name).set(len(state.placed))

    def _drain(self, url: str) -> None:
        """Close the url's channel once its calls are done (it is no source's instance any more)."""
        instance = self._instance.pop(url)

        async def drain() -> int:
            waited = await self._pool.drain(instance)
            log.info("Triton instance %s drained: %d calls finished after its removal", url, waited)
            return waited

        task = asyncio.create_task(drain())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)
