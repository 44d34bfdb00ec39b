"""Health that tells the truth: what the frontend can answer now, from probes of what it depends on.

Every ``interval_s`` the monitor asks each Triton instance ``ModelReady`` for every model placed on it,
and the encoder and decoder their grpc.health.v1 status, over the channels the queries use (a probe
unanswered within ``timeout_s`` counts as down: a stalled Triton). Where the queries' own ModelInfers
keep failing, ready means a real inference answered (:meth:`TritonPool.model_ready`): a Triton that
says ready and fails every inference is down. The placer is told which instances
did not answer, so new slots go elsewhere (frontend.core.placement). :func:`judge` turns what answered into
each route's state:

- *serving*: every model of its data slots has a ready instance, and coding works;
- *degraded*: it is answered, but not protected from stragglers: either a coded slot's model (the
  parity model) has no ready instance, or the encoder or decoder (when the scheme needs it) is down,
  and queries get their own outputs; or a data slot's model has no ready instance but the code
  rebuilds every query without it (:func:`rebuilds_without`: Collage's collage model, COIN's coded
  model for one member), and queries get reconstructions;
- *down*: its queries cannot be answered: a data slot's model has no ready instance and the code
  cannot stand in for it. They fail UNAVAILABLE.

The frontend is SERVING (grpc.health.v1 ``""``, the KServe ServerReady) while some route can be
answered: one route without a ready Triton takes only itself out, never the pod (and with it every other
route) out of its Service. Per route, ``codedserve.v1.Frontend/<model>`` is SERVING unless the route is
down, and for a coded route ``codedserve.coded/<model>`` is SERVING only while it is coded (NOT_SERVING:
degraded). A down route's queries are refused UNAVAILABLE at once, naming the route and why
(:meth:`frontend.dataplane.coordinator.Dataplane.set_down`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from coding.scheme import Arrivals
from frontend.core.routes import Route
from service_common.logs import RateLimitedLog

if TYPE_CHECKING:
    from frontend.app.assembly import FrontendApp

log = logging.getLogger(__name__)

SERVING, DEGRADED, DOWN = "serving", "degraded", "down"
ROUTE_HEALTH_PREFIX = "codedserve.v1.Frontend/"  # + model: SERVING unless the route is down
CODED_HEALTH_PREFIX = "codedserve.coded/"  # + model, coded routes only: SERVING while coding works

DEPENDENCY_UP = Gauge(
    "codedserve_dependency_up",
    "1 while the frontend's last probe of a dependency succeeded (Triton: every model placed on it ready)",
    ["dependency", "address"],
)
ROUTE_DEGRADED = Gauge(
    "codedserve_route_degraded",
    "1 while a coded route is answered uncoded (parity model, encoder or decoder down)",
    ["model"],
)
ROUTE_UP = Gauge(
    "codedserve_route_up", "1 while a route's queries can be answered (a ready instance per data model)", ["model"]
)


@dataclass(frozen=True)
class Probes:
    """What one round of probes saw: the (instance, model) pairs answering ModelReady, and which coding
    services answer SERVING (empty with ``--coding local``)."""

    ready: frozenset[tuple[int, str]]
    coders: Mapping[str, bool]


@dataclass(frozen=True)
class RouteHealth:
    model: str
    coded: bool
    state: str  # SERVING, DEGRADED or DOWN
    why: tuple[str, ...] = ()  # what makes it degraded or down

    @property
    def answerable(self) -> bool:
        return self.state != DOWN


@dataclass(frozen=True)
class Health:
    routes: tuple[RouteHealth, ...]
    dependencies: tuple[tuple[str, str, bool], ...]  # (dependency, address, up)

    @property
    def serving(self) -> bool:
        """Some route can be answered (the pod belongs in its Service)."""
        return any(r.answerable for r in self.routes)

    def down(self) -> dict[str, str]:
        """Each route that cannot be answered -> why."""
        return {r.model: "; ".join(r.why) for r in self.routes if not r.answerable}

    def route(self, model: str) -> RouteHealth | None:
        return next((r for r in self.routes if r.model == model), None)

    def statuses(self) -> dict[str, bool]:
        """grpc.health.v1 service name (besides "" and the service names) -> SERVING."""
        names = {ROUTE_HEALTH_PREFIX + r.model: r.answerable for r in self.routes}
        names.update({CODED_HEALTH_PREFIX + r.model: r.state == SERVING for r in self.routes if r.coded})
        return names


def judge(
    routes: Sequence[Route],
    loaded: Collection[str],
    serving: Mapping[str, tuple[int, ...]],
    urls: Sequence[str],
    probes: Probes,
    addresses: Mapping[str, str] | None = None,
    waiting: Mapping[str, str] | None = None,
) -> Health:
    """Each route's state from the probes. ``loaded``: the routes whose signatures were read; ``serving``:
    model -> the instances it is placed on; ``urls``: every instance's address, by number; ``addresses``:
    the coding services'; ``waiting``: why a route not loaded is not (what Triton says of its models)."""
    judged = tuple(_route(r, r.model in loaded, serving, urls, probes, (waiting or {}).get(r.model)) for r in routes)
    models_on: dict[int, list[str]] = {}
    for model, instances in serving.items():
        for i in instances:
            models_on.setdefault(i, []).append(model)
    deps = [("triton", urls[i], all((i, m) in probes.ready for m in ms)) for i, ms in sorted(models_on.items())]
    deps += [(name, (addresses or {}).get(name, ""), up) for name, up in sorted(probes.coders.items())]
    return Health(judged, tuple(deps))


def _route(
    route: Route,
    loaded: bool,
    serving: Mapping[str, tuple[int, ...]],
    urls: Sequence[str],
    probes: Probes,
    waiting: str | None = None,
) -> RouteHealth:
    def none_ready(model: str) -> str | None:
        if any((i, model) in probes.ready for i in serving.get(model, ())):
            return None
        where = ", ".join(urls[i] for i in serving.get(model, ())) or "no instance"
        return f"no ready Triton instance for {model} ({where})"

    coded = route.coded
    if not loaded:
        return RouteHealth(route.model, coded, DOWN, (waiting or "its models' signatures are not read yet",))
    missing = {m: why for m in sorted(route.data_models) if (why := none_ready(m))}
    down = list(missing.values())
    if not coded:
        return RouteHealth(route.model, coded, DOWN if down else SERVING, tuple(down))
    coded_models = sorted({route.models[s.role] for s in route.code.coded_slots} - route.data_models)
    degraded = [why for m in coded_models if (why := none_ready(m))]
    services = ("encoder", "decoder") if route.code.encodes else ("decoder",)
    degraded += [f"the {s} is down" for s in services if not probes.coders.get(s, True)]
    if not down:
        return RouteHealth(route.model, coded, DEGRADED if degraded else SERVING, tuple(degraded))
    if degraded or not rebuilds_without(route, missing):
        return RouteHealth(route.model, coded, DOWN, tuple(down + degraded))
    return RouteHealth(route.model, coded, DEGRADED, (*down, "its queries are answered by reconstruction alone"))


def rebuilds_without(route: Route, missing: Collection[str]) -> bool:
    """Whether the route's code rebuilds every query of a full coding group whose data slots on the
    ``missing`` models never answer, from its coded slots (Collage's collage model answers every cell;
    COIN's coded model stands in for one member model). Only a systematic code: a non-systematic one
    sends no data slot."""
    code = route.code
    if not code.systematic:
        return False
    data = tuple(route.models[s.role] not in missing for s in code.data_slots)
    arrivals = Arrivals(data, tuple(True for _ in code.coded_slots), tuple(range(len(data))))
    return set(arrivals.absent()) <= code.recoverable(arrivals)


class HealthMonitor:
    """Probes every ``interval_s``; on a change, updates the metrics, logs the transition (rate-limited
    per state) and calls ``publish``. ``health`` is the latest judgement (None before the first)."""

    def __init__(
        self,
        probe: Callable[[float], Awaitable[Probes]],
        judge_now: Callable[[Probes], Health],
        publish: Callable[[Health], Awaitable[None]],
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._probe = probe
        self._judge = judge_now
        self._publish = publish
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.health: Health | None = None
        self._log = RateLimitedLog(log)
        self._stop = asyncio.Event()

    @property
    def serving(self) -> bool:
        return self.health is not None and self.health.serving

    def answerable(self, model: str) -> bool:
        route = self.health.route(model) if self.health is not None else None
        return route is not None and route.answerable

    async def check(self) -> Health:
        """Probe once and publish what changed."""
        health = self._judge(await self._probe(self.timeout_s))
        if health != self.health:
            self._record(health)
            self.health = health
            await self._publish(health)
        return health

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.check()
            except Exception:  # a bug here must not freeze health where it was: log, probe again
                log.exception("health probe failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()

    def _record(self, health: Health) -> None:
        for dependency, address, up in health.dependencies:
            DEPENDENCY_UP.labels(dependency, address).set(int(up))
        for route in health.routes:
            ROUTE_UP.labels(route.model).set(int(route.answerable))
            ROUTE_DEGRADED.labels(route.model).set(int(route.state == DEGRADED))
        self._log_transitions(health)

    def _log_transitions(self, health: Health) -> None:
        """One line per dependency or route that changed (rate-limited per state: a flapping one is quiet)."""
        was_up = {(d, a): up for d, a, up in self.health.dependencies} if self.health is not None else {}
        for dependency, address, up in health.dependencies:
            if was_up.get((dependency, address), True) != up:
                level = logging.INFO if up else logging.WARNING
                where = f" at {address}" if address else ""
                self._log.log(level, (dependency, address, up), "%s%s is %s", dependency, where, "up" if up else "down")
        before = {r.model: r for r in self.health.routes} if self.health is not None else {}
        for route in health.routes:
            old = before.get(route.model)
            if old is None and route.state == SERVING or old == route:
                continue
            level = logging.INFO if route.state == SERVING else logging.WARNING
            why = f": {'; '.join(route.why)}" if route.why else ""
            self._log.log(
                level, (route.model, route.state, route.why), "route %s is %s%s", route.model, route.state, why
            )


def monitor_for(app: FrontendApp, publish: Callable[[Health], Awaitable[None]]) -> HealthMonitor:
    """The app's monitor: probes over its Triton pool's and coding clients' own channels, after one more try
    at loading the routes start-up left waiting (:meth:`FrontendApp.load_pending`)."""
    config = app.config
    models = sorted({m for r in config.routes for m in r.models.values()})

    def placed() -> dict[str, tuple[int, ...]]:
        return {m: app.placer.serving(m) for m in models}

    async def probe(timeout_s: float) -> Probes:
        await app.load_pending()  # a route Triton did not serve at start-up joins once it does
        pairs = [(i, m) for m, instances in placed().items() for i in instances]
        signatures = {m: sig for s in app.servers.values() for m, sig in s.signatures.items()}
        checks = (app.triton.model_ready(i, m, timeout_s, signatures.get(m)) for i, m in pairs)
        answers, coders = await asyncio.gather(asyncio.gather(*checks), app.coders.ready(timeout_s))
        ready = frozenset(p for p, up in zip(pairs, answers, strict=True) if up)
        app.placer.set_unready(set(pairs) - ready)  # new slots avoid what did not answer
        return Probes(ready, coders)

    def judge_now(probes: Probes) -> Health:
        loaded = [m for m, s in app.servers.items() if s.signature is not None]
        coders = {"encoder": config.encoder_address, "decoder": config.decoder_address}
        return judge(config.routes, loaded, placed(), app.triton.urls, probes, coders, app.pending)

    return HealthMonitor(probe, judge_now, publish, config.health_interval_s, config.health_timeout_s)
