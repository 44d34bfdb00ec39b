"""The frontend assembled: the dataplane (one ModelServer per route, admission) over the Triton pool, the coding
clients, discovery and the model catalog; its start-up (routes checked against Triton, signatures read,
warm-up) and close. Fault injection is wired in here, and only here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Any

import grpc
import numpy as np

from frontend.app.config import FrontendConfig
from frontend.core.admission import Admission
from frontend.core.calls import CallInfo, Coder, Pool, WorkerError
from frontend.core.faults import parse_fault_metadata
from frontend.core.placement import Placer
from frontend.core.routes import RouteError
from frontend.dataplane.coordinator import Dataplane
from frontend.dataplane.injection import InjectingPool
from frontend.transport.catalog import ModelCatalog
from frontend.transport.coding_clients import CodingClients, LocalCoding
from frontend.transport.discovery import Discovery, Source, resolver_for
from frontend.transport.triton import TritonPool
from service_common.logs import RateLimitedLog
from service_common.loop_lag import LoopLag

log = logging.getLogger(__name__)


class FrontendApp(Dataplane):
    """The assembled frontend: the dataplane over the Triton pool (wrapped by fault injection when configured),
    the coding clients, discovery and the model catalog, with their start, close, start-up and warm-up.
    ``triton_stub``: what each Triton channel is called through (default: the KServe v2 gRPC stub), for an
    in-process stand-in of Triton's wire (bench.handler_cost)."""

    def __init__(self, config: FrontendConfig, triton_stub: Callable[[grpc.aio.Channel], Any] | None = None) -> None:
        self.config = config
        placer = Placer(serving(config))
        self.placer = placer
        self.triton = TritonPool(
            instance_urls(config),
            config.triton_timeout_s,
            config.max_message_bytes,
            config.batch_inflight,
            tls=config.triton_tls,
            reconnect_backoff_ms=config.reconnect_backoff_ms,
            transport=config.triton_transport,
            wait_estimate_max_age_s=config.wait_estimate_max_age_s,
            stub=triton_stub,
            cancel_losers=config.cancel_losers,
        )
        self.catalog = ModelCatalog(self.triton, placer, config.routes)
        self.discovery = self._discovery()
        coders: Coder = (
            LocalCoding()
            if config.coding == "local"
            else CodingClients(
                config.encoder_address,
                config.decoder_address,
                config.max_message_bytes,
                tls=config.coding_tls,
                reconnect_backoff_ms=config.reconnect_backoff_ms,
                transport=config.coding_transport,
            )
        )
        super().__init__(
            config.routes,
            self._pool(),
            placer,
            coders,
            config.deadlines,
            Admission(config.max_inflight, config.max_inflight_per_client),
            max_message_bytes=config.max_message_bytes,
            default_deadline_s=config.default_deadline_s,
            refuse_by_wait=config.refuse_by_wait,
            forced_fault=parse_fault_metadata if config.faults.allow_metadata else None,
        )
        self.loop_lag = LoopLag()  # a gauge only: see service_common.loop_lag
        self._warm_ups: set[asyncio.Task[None]] = set()  # warm-up calls (or late warm-ups) not finished yet
        self._closing = asyncio.Event()  # start-up stops waiting for Triton once set
        self._pending: dict[str, str] = {}  # route not loaded -> why (check_repository, ModelServer.load)
        self._held: set[str] = set()  # the routes whose models Triton has but does not serve (not waited for)
        self._late = RateLimitedLog(log)  # load_pending's failures, one line per cause and period

    def _pool(self) -> Pool:
        """The Triton pool; wrapped by fault injection only when the configuration asks for it."""
        if not self.config.faults.active:
            return self.triton
        deployed = set().union(*(r.data_models for r in self.config.routes))
        return InjectingPool(self.triton, self.config.faults, deployed)

    def _discovery(self) -> Discovery | None:
        """Instances from the --triton-dns / --parity-triton-dns names (None: a fixed list of urls)."""
        sources = discovery_sources(self.config)
        if not sources:
            return None
        resolver = resolver_for(self.config.dns_server)
        return Discovery(sources, self.triton, self.placer, resolver, self.config.dns_refresh_s)

    async def start(self) -> None:
        self.loop_lag.start()
        await self.pool.start()
        await self.coders.start()
        if self.discovery is not None:
            await self.discovery.start()

    async def close(self) -> None:
        self._closing.set()
        await asyncio.gather(*(s.drain(timeout_s=5.0) for s in self.servers.values()))
        if self.discovery is not None:
            await self.discovery.close()
        await self.pool.close()
        await self.coders.close()
        await self.loop_lag.stop()

    def _check_instances(self) -> None:
        """Raises WorkerError while a model has no instance yet (its DNS name has not resolved to a ready pod)."""
        waiting = sorted(m for r in self.config.routes for m in r.models.values() if not self.placer.serving(m))
        if waiting:
            names = ", ".join(s.target for s in discovery_sources(self.config).values())
            raise WorkerError(f"no ready Triton instance behind {names or 'the configured urls'} yet for {waiting}")

    @property
    def pending(self) -> dict[str, str]:
        """Each route not loaded yet -> why (what Triton says of its models)."""
        return {m: self._pending.get(m, self.waiting_for) for m, s in self.servers.items() if s.signature is None}

    async def load_until_ready(self, retry_s: float = 1.0, give_up_s: float | None = None) -> None:
        """Check every routed model against Triton's repository, then read their signatures, trying again
        while Triton starts up (one log line per cause and 10 s), until every route is loaded except those
        held by Triton (a model it has but does not serve: not loaded, failed to load), and at least one
        route is: the held ones are left to :meth:`load_pending`, and are down meanwhile. Raises
        :class:`RouteError` at once for a model absent from Triton's repository (:meth:`check_repository`),
        or a route its models do not fit (:meth:`ModelServer.load`): waiting would not mend either.
        Between tries it waits for the first of: discovery's next look at DNS, the frontend closing,
        ``retry_s``, the end of ``give_up_s``."""
        deadline = None if give_up_s is None else asyncio.get_running_loop().time() + give_up_s
        waiting = RateLimitedLog(log)
        while (problem := await self._try_load()) is not None:
            self.waiting_for = str(problem)
            left_s = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if (left_s is not None and left_s <= 0) or self._closing.is_set():
                raise problem
            waiting.log(logging.INFO, str(problem), "waiting for Triton: %s", problem)
            await self._next_try(retry_s if left_s is None else min(retry_s, left_s))
        for model, why in self.pending.items():
            log.warning("route %s is down until Triton serves its models: %s", model, why)
        log.info("models ready: %s", ", ".join(m for m, s in self.servers.items() if s.signature is not None))

    async def _try_load(self) -> WorkerError | None:
        """One try at :meth:`load_until_ready`: None once it may serve (the routes not loaded are all held by
        Triton, and some route is loaded), else what it waits for."""
        try:
            self._check_instances()
            await self._load_routes()
        except WorkerError as exc:
            return exc
        unloaded = {m for m, s in self.servers.items() if s.signature is None}
        loading = unloaded - self._held
        if not loading and len(unloaded) < len(self.servers):
            return None
        return WorkerError("; ".join(self._pending[m] for m in sorted(loading or unloaded)))

    async def _load_routes(self) -> list[str]:
        """Check and load every route not loaded yet, each on its own: a route whose model Triton has but
        does not serve waits (its reason kept in :attr:`pending`), the others load. Returns the routes
        loaded now. Raises RouteError (a configuration error) and WorkerError (an instance not answering)."""
        held = await self.check_repository()
        self._held = set(held)
        loaded = []
        for model, server in self.servers.items():
            if server.signature is not None:
                continue
            if model in held:
                self._pending[model] = held[model]
                continue
            try:
                await server.load()
            except WorkerError as exc:
                self._pending[model] = str(exc)
                continue
            self._pending.pop(model, None)
            loaded.append(model)
        return loaded

    async def load_pending(self) -> None:
        """One more try at the routes start-up left waiting (the health monitor calls it each round); a route
        that loads is warmed up. Never raises: a route that still cannot load stays down, and one that
        became a configuration error (a model now absent, or not fitting) is logged and stays down."""
        if not self.pending:
            return
        try:
            loaded = await self._load_routes()
        except (RouteError, WorkerError) as exc:
            self._late.log(logging.WARNING, str(exc), "routes still down: %s", exc)
            return
        if loaded:
            log.info("route(s) %s ready", ", ".join(loaded))
            if self.config.warm_up:  # beside the probes, which must not wait for it
                task = asyncio.create_task(self.warm_up(routes=loaded))
                self._warm_ups.add(task)
                task.add_done_callback(self._warm_ups.discard)

    async def _next_try(self, timeout_s: float) -> None:
        events: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._closing.wait())]
        if self.discovery is not None:
            events.append(asyncio.ensure_future(self.discovery.next_refresh()))
        try:
            await asyncio.wait(events, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for event in events:
                event.cancel()

    async def check_repository(self) -> dict[str, str]:
        """Every model a route not loaded yet runs on, against the repository index of each instance it is
        placed on. Raises :class:`RouteError` naming the route, the model and the instance for one absent
        from the repository (a configuration error). Returns route -> why for each route one of whose
        models is there but not served: not loaded (explicit model control without it) or failed to
        load (Triton's reason quoted); that route waits, the others do not. Models still loading pass
        (their signatures are waited for); an instance that does not answer raises WorkerError (waited for)."""
        indexes: dict[int, dict[str, tuple[str, str]]] = {}
        held: dict[str, str] = {}
        for route in self.config.routes:
            if self.servers[route.model].signature is not None:
                continue
            for role, model in route.models.items():
                for instance in self.placer.serving(model):
                    if instance not in indexes:
                        indexes[instance] = await self.pool.repository(instance)
                    entry = indexes[instance].get(model)
                    problem = _not_served(entry)
                    if not problem:
                        continue
                    where = (
                        f"route {route.model}={route.scheme}: its {role} model {model!r} is not served by Triton "
                        f"at {self.triton.urls[instance]}: it {problem}"
                    )
                    if entry is not None:
                        held.setdefault(route.model, where)
                        continue
                    has = ", ".join(sorted(indexes[instance])) or "nothing"
                    raise RouteError(f"{where} (the repository has: {has}); add it there, or change the route")
        return held

    async def warm_up(self, timeout_s: float = 10.0, routes: Collection[str] | None = None) -> None:
        """One all-zero query to every model on every instance it is placed on, before the frontend says
        SERVING: a freshly loaded model's first inference takes about 50 ms on a CPU Triton, which would
        make every route's first real group a straggler. A failure or a call still out after
        ``timeout_s`` is logged, never fatal (health and the calls judge the instances), and a call
        still out is left to finish, never cancelled (cancelling in-flight calls crashes Triton 2.51).
        ``routes``: only these routes' models (default: every route loaded)."""
        servers = [s for m, s in self.servers.items() if routes is None or m in routes]
        signatures = {m: sig for s in servers for m, sig in s.signatures.items()}
        targets = [(m, i) for m in signatures for i in self.placer.serving(m)]

        async def one(model: str, instance: int) -> None:
            sig = signatures[model]
            try:
                await self.triton.infer(CallInfo(model, instance), np.zeros((1, *sig.shape), sig.dtype), sig)
            except WorkerError as exc:
                log.warning("warm-up of %s at %s failed: %s", model, self.triton.urls[instance], exc)

        calls = [asyncio.create_task(one(m, i)) for m, i in targets]
        if not calls:
            return
        _, pending = await asyncio.wait(calls, timeout=timeout_s)
        if pending:
            still = (len(pending), len(calls), timeout_s)
            log.warning("warm-up: %d of %d calls still out after %.0f s; serving anyway", *still)
        for task in pending:  # referenced until they finish
            self._warm_ups.add(task)
            task.add_done_callback(self._warm_ups.discard)


def _not_served(entry: tuple[str, str] | None) -> str | None:
    """Why a repository index entry (state, reason) is a model Triton will not serve; None if it will."""
    if entry is None:
        return "is not in the model repository"
    state, reason = entry
    if state in ("READY", "LOADING"):
        return None
    if not state:
        return "is in the model repository but was not loaded (explicit model control, without it)"
    return f"is {state}: {reason or 'Triton gives no reason'}"


def _fixed_urls(config: FrontendConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The instances given as urls: the deployed models', the parity models' (a DNS name replaces either)."""
    data = () if config.triton_dns else config.triton_urls
    return data, () if config.parity_triton_dns else config.parity_triton_urls


def instance_urls(config: FrontendConfig) -> tuple[str, ...]:
    """Every fixed Triton instance, numbered: the deployed models' first, then the parity-only ones.
    Discovered instances are numbered after these, as they appear."""
    data, parity = _fixed_urls(config)
    return tuple(dict.fromkeys((*data, *parity)))


def serving(config: FrontendConfig) -> dict[str, tuple[int, ...]]:
    """Model -> the fixed instances that serve it: the models of data slots on ``triton_urls``, the others
    (parity, collage, coded models) on ``parity_triton_urls`` (default: the same instances)."""
    number = {url: i for i, url in enumerate(instance_urls(config))}
    data_urls, parity_urls = _fixed_urls(config)
    data = tuple(number[u] for u in data_urls)
    coded = tuple(number[u] for u in parity_urls) if _has_parity(config) else data
    result: dict[str, tuple[int, ...]] = {}
    for route in config.routes:
        for model in route.models.values():
            instances = data if model in route.data_models else coded
            result[model] = tuple(dict.fromkeys((*result.get(model, ()), *instances)))
    return result


def _has_parity(config: FrontendConfig) -> bool:
    return bool(config.parity_triton_urls or config.parity_triton_dns)


def _model_roles(config: FrontendConfig) -> tuple[set[str], set[str]]:
    """The models some route runs data slots on, and those some route runs coded slots on."""
    data = {m for r in config.routes for m in r.data_models}
    coded = {m for r in config.routes for m in r.models.values() if m not in r.data_models}
    return data, coded


def discovery_sources(config: FrontendConfig) -> dict[str, Source]:
    """The DNS names to watch and the models each one's instances serve (parity models go with the
    deployed ones unless they have instances of their own)."""
    data_models, coded_models = _model_roles(config)
    sources = {}
    if config.triton_dns:
        models = data_models if _has_parity(config) else data_models | coded_models
        sources["triton"] = Source(config.triton_dns, frozenset(models))
    if config.parity_triton_dns:
        sources["parity"] = Source(config.parity_triton_dns, frozenset(coded_models))
    return sources
