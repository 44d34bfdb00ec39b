"""The frontend's one frozen configuration, built and validated from flags/env in __main__."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from coding.errors import CodingError
from coding.scheme import Scheme, Uncoded, group_size
from coding.schemes import get_scheme
from frontend.batching import DEFAULT_ESTIMATE_MAX_AGE_S
from frontend.deadlines import DeadlinePolicy
from service_common.channels import DEFAULT_RECONNECT_BACKOFF_MS
from service_common.event_loop import DEFAULT_LOOP
from service_common.tls import ClientTLS, ServerTLS

UNCODED = "none"
BASELINES = (UNCODED, "replicate", "hedge")  # uncoded ways to serve a model, judged against the codes
# When a coded route decodes an absent output: at its straggler deadline, once decodable (the default), or
# as soon as what has arrived can rebuild it (ParM's own policy; systematic schemes only).
DECODE_POLICIES = ("deadline", "eager")


HEDGE_QUANTILE = 0.95  # The Tail at Scale: hedge after about the p95 of normal latency
HEDGE_QUANTILES = (0.5, 0.99)  # the adaptive delay's quantile may be chosen within p50 ... p99


@dataclass(frozen=True)
class Dispatch:
    """How one deployed-model call is sent: to one instance, to ``copies`` instances at once
    (replication), or to a second instance when the first is slower than ``hedge_delay_ms``
    (a hedged request; None = adaptive, the observed ``hedge_quantile`` of deployed calls). First answer
    wins. ``hedge_budget``: at most this share of deployed calls get a hedge copy (None: no cap; see
    :class:`frontend.dispatch.HedgeBudget`)."""

    mode: str = "single"  # single | replicate | hedge
    copies: int = 2
    hedge_delay_ms: float | None = None
    hedge_quantile: float = HEDGE_QUANTILE
    hedge_budget: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("single", "replicate", "hedge"):
            raise ValueError(f"unknown dispatch mode {self.mode!r}")
        if self.copies < 2:
            raise ValueError(f"copies must be >= 2, got {self.copies}")
        if self.hedge_delay_ms is not None and self.hedge_delay_ms <= 0:
            raise ValueError(f"hedge_delay_ms must be positive, got {self.hedge_delay_ms}")
        low, high = HEDGE_QUANTILES
        if not low <= self.hedge_quantile <= high:
            raise ValueError(f"the hedge delay's quantile must be in [{low}, {high}], got {self.hedge_quantile}")
        if self.hedge_budget is not None and not 0 < self.hedge_budget <= 1:
            raise ValueError(f"the hedge budget is a share of calls in (0, 1], got {self.hedge_budget}")


@dataclass(frozen=True)
class Route:
    """How one served model is served: a coding scheme, or an uncoded baseline (``code`` is then
    :class:`coding.scheme.Uncoded`). ``model`` is the name clients ask for."""

    model: str
    scheme: str = UNCODED
    k: int = 1  # queries per coding group
    params: tuple[tuple[str, str], ...] = ()
    dispatch: Dispatch = field(default_factory=Dispatch)
    code: Scheme = field(default_factory=Uncoded)
    code_k: int = 1  # the k the scheme was built with (COIN: its members), as the coding services rebuild it
    decode: str = "deadline"  # when a systematic code decodes an absent output: see DECODE_POLICIES

    @property
    def coded(self) -> bool:
        return self.scheme not in BASELINES

    @property
    def param_dict(self) -> dict[str, str]:
        return dict(self.params)

    @property
    def models(self) -> dict[str, str]:
        """Role -> model name on Triton, for every model the route's slots run on."""
        return self.code.models(self.model)

    @cached_property
    def data_models(self) -> frozenset[str]:  # once: admission asks it for every query
        return frozenset(self.models[s.role] for s in self.code.data_slots)

    @property
    def parity_model(self) -> str:
        """The model of the coded slots when it is not one the data slots run on ("" otherwise)."""
        coded = [self.models[s.role] for s in self.code.coded_slots]
        return next((m for m in coded if m not in self.data_models), "")


class RouteError(Exception):
    """A route that cannot be served as configured: a model Triton will not serve, a scheme that cannot code
    the deployed model's queries, a parity model of the wrong shape. Found at start-up; the frontend exits."""


def parse_route(text: str) -> Route:
    """``MODEL=SCHEME[:key=value,...]``. Coded: ``mnist_cnn=parm:k=2,encoder=concat`` (any scheme of
    :mod:`coding.schemes`; its own parameters, e.g. ParM's ``parity_model=``; ``decode=eager`` decodes an
    absent output as soon as it can be, not at the straggler deadline). Baselines: ``mnist_cnn=none``,
    ``mnist_cnn=replicate[:copies=2]``, ``mnist_cnn=hedge[:delay_ms=8|delay_q=0.9][,budget=0.05]`` (no
    delay: adaptive, the ``delay_q`` quantile of deployed calls, p95 unless given; ``budget``: the most
    hedges per deployed call). A set of models (COIN's members) is routed uncoded with ``members=a+b``,
    e.g. ``ens=hedge:members=ens_m0+ens_m1``: every member answers each query, each call hedged."""
    model, sep, rest = text.partition("=")
    if not sep or not model:
        raise ValueError(f"route {text!r}: expected MODEL=SCHEME[:key=value,...]")
    scheme, _, opts = rest.partition(":")
    params = dict(_kv(item, text) for item in opts.split(",") if item)
    try:
        if scheme in BASELINES:
            members = tuple(m for m in params.pop("members", "").split("+") if m)
            baseline = Uncoded(scheme, members)
            return Route(model, scheme, dispatch=_baseline_dispatch(scheme, params), code=baseline)
        k = int(params.pop("k", "2"))
        decode = params.pop("decode", "deadline")
        code = get_scheme(scheme, k, params)  # validates scheme, k and params now, not at the first query
        _check_decode(decode, code)
    except (CodingError, ValueError) as exc:
        raise ValueError(f"route {text!r}: {exc}") from exc
    # k is the queries per group, whatever the scheme was told (collage: s² from its s).
    return Route(model, scheme, group_size(code), tuple(sorted(params.items())), code=code, code_k=k, decode=decode)


def _check_decode(decode: str, code: Scheme) -> None:
    if decode not in DECODE_POLICIES:
        raise ValueError(f"decode must be one of {DECODE_POLICIES}, got {decode!r}")
    if decode == "eager" and not code.systematic:
        raise ValueError(f"decode=eager needs a systematic scheme: {code.name} decodes every answer")


def _baseline_dispatch(scheme: str, params: dict[str, str]) -> Dispatch:
    known = {UNCODED: set(), "replicate": {"copies"}, "hedge": {"delay_ms", "delay_q", "budget"}}[scheme]
    if set(params) - known:
        raise ValueError(f"{scheme} takes {sorted(known) or 'no options'}, got {sorted(params)}")
    if scheme == "replicate":
        return Dispatch("replicate", copies=int(params.get("copies", "2")))
    if scheme == "hedge":
        if "delay_ms" in params and "delay_q" in params:
            raise ValueError("hedge takes a fixed delay_ms or an adaptive delay_q, not both")
        delay, budget = params.get("delay_ms"), params.get("budget")
        return Dispatch(
            "hedge",
            hedge_delay_ms=float(delay) if delay else None,
            hedge_quantile=float(params.get("delay_q", HEDGE_QUANTILE)),
            hedge_budget=float(budget) if budget else None,
        )
    return Dispatch()


def _kv(item: str, text: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"route {text!r}: option {item!r} is not key=value")
    return key.strip(), value.strip()


@dataclass(frozen=True)
class FaultPlan:
    """Injected faults on deployed-model calls, for demos and tests (never on in production).

    A share of calls is delayed by a uniform [delay_min_ms, delay_max_ms], another share fails.
    ``allow_metadata`` lets a request's ``codedserve-fault`` metadata (``delay=MS``, ``fail`` or ``corrupt``)
    force a fault on that one query: how integration tests make exactly one straggler.
    """

    delay_share: float = 0.0
    delay_min_ms: float = 50.0
    delay_max_ms: float = 200.0
    fail_share: float = 0.0
    seed: int = 0
    allow_metadata: bool = False
    # Faults pinned to workers of every group, e.g. ((3, "delay=3000"), (5, "corrupt")): how tests make one
    # straggling and one lying ApproxIFER worker, or one slow COIN member. Workers are numbered data slots
    # first, then coded slots (coded slots only when non-systematic), as in coding.berrut.coded_nodes.
    workers: tuple[tuple[int, str], ...] = ()

    @property
    def active(self) -> bool:
        """Anything to inject: only then does the frontend wrap its Triton pool (frontend.injection)."""
        return bool(self.delay_share or self.fail_share or self.allow_metadata or self.workers)

    def __post_init__(self) -> None:
        for name in ("delay_share", "fail_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.delay_share + self.fail_share > 1.0:
            raise ValueError("delay_share + fail_share must not exceed 1")
        if not 0 <= self.delay_min_ms <= self.delay_max_ms:
            raise ValueError(f"need 0 <= delay_min_ms <= delay_max_ms, got {self.delay_min_ms}, {self.delay_max_ms}")


@dataclass(frozen=True)
class FrontendConfig:
    address: str
    triton_urls: tuple[str, ...]  # instances serving the deployed models
    encoder_address: str
    decoder_address: str
    routes: tuple[Route, ...]
    deadlines: DeadlinePolicy = field(default_factory=DeadlinePolicy)  # straggler deadline, fill timeout
    default_deadline_s: float = 5.0  # for clients that send no deadline
    triton_timeout_s: float = 30.0  # safety deadline only: expiring calls stress Triton 2.51
    # Queries accepted at once, in all and from one client (frontend.admission); beyond: RESOURCE_EXHAUSTED.
    # 256 is four full batches of the 64-row models per instance of a 1-2 instance stack: more only queues.
    max_inflight: int = 256
    max_inflight_per_client: int = 128
    # gRPC's own bound on the RPCs open at once on each data port (service_common.server), checked before any
    # handler runs: None = derived from max_inflight (rpc_bound); 0 = off.
    max_concurrent_rpcs: int | None = None
    refuse_by_wait: bool = True  # also refuse a query whose deadline is shorter than the Triton queue ahead of it
    # The wait estimate's measured call time is forgotten when no call has renewed it for this long, so an
    # estimate a fault inflated cannot refuse short deadlines for good (Batcher.recent_call_s).
    wait_estimate_max_age_s: float = DEFAULT_ESTIMATE_MAX_AGE_S
    max_message_bytes: int = 16 * 1024 * 1024
    metrics_port: int | None = None
    log_level: str = "INFO"
    kserve_address: str | None = None  # also serve Triton's KServe v2 gRPC protocol here; None = off
    faults: FaultPlan = field(default_factory=FaultPlan)
    parity_triton_urls: tuple[str, ...] = ()  # instances serving parity models; empty = triton_urls
    scheme_modules: tuple[str, ...] = ()  # plug-in modules that register more coding schemes
    coding: str = "services"  # "services": the encoder/decoder services; "local": coding/ in-process
    coding_transport: str = "stream"  # how batches reach the coding services: "stream" or "unary" calls
    batch_inflight: int = 1  # ModelInfer calls out per instance and model; what queues meanwhile is batched
    triton_transport: str = "unary"  # "unary": a ModelInfer call each; "stream": messages on one stream per instance
    metrics_address: str = "127.0.0.1"  # the host /metrics binds (0.0.0.0 in a pod)
    # Triton pod discovery (frontend.discovery): NAME:PORT of a headless Service whose every address is one
    # instance, re-resolved every dns_refresh_s, instead of triton_urls (which then holds NAME:PORT itself,
    # a gRPC target any pod answers, for control calls). The parity one replaces parity_triton_urls.
    triton_dns: str = ""
    parity_triton_dns: str = ""
    dns_refresh_s: float = 5.0
    dns_server: str = ""  # HOST[:PORT] of the DNS server asked for those names; "" = the system resolver
    tls: ServerTLS | None = None  # both of the frontend's ports (None: plaintext)
    health_address: str | None = None  # the Frontend port's grpc.health.v1 alone, in plaintext (None: off)
    event_loop: str = DEFAULT_LOOP  # the asyncio loop the frontend runs on (service_common.event_loop)
    triton_tls: ClientTLS | None = None  # the channels to Triton (every instance, and the KServe control channel)
    coding_tls: ClientTLS | None = None  # the channels to the encoder and decoder services
    reconnect_backoff_ms: int = DEFAULT_RECONNECT_BACKOFF_MS  # longest wait between a channel's reconnect attempts
    health_interval_s: float = 0.5  # how often dependencies are probed (frontend.health)
    health_timeout_s: float = 1.0  # a probe unanswered this long counts as down
    warm_up: bool = True  # one all-zero query per model and instance before SERVING (FrontendApp.warm_up)

    def __post_init__(self) -> None:
        self._check_discovery()
        if not self.triton_urls:
            raise ValueError("at least one Triton URL is needed (--triton-url / CODEDSERVE_TRITON_URLS)")
        if not self.routes:
            raise ValueError("at least one route is needed (--route / CODEDSERVE_ROUTES)")
        names = [r.model for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"a model is routed twice: {names}")
        positive = ("default_deadline_s", "triton_timeout_s", "health_interval_s", "health_timeout_s")
        for name in (*positive, "wait_estimate_max_age_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.coding not in ("services", "local"):
            raise ValueError(f"coding must be 'services' or 'local', got {self.coding!r}")
        if self.triton_transport not in ("stream", "unary"):
            raise ValueError(f"triton_transport must be 'stream' or 'unary', got {self.triton_transport!r}")
        if self.coding_transport not in ("stream", "unary"):
            raise ValueError(f"coding_transport must be 'stream' or 'unary', got {self.coding_transport!r}")
        if self.batch_inflight < 1:
            raise ValueError(f"batch_inflight must be >= 1, got {self.batch_inflight}")
        for name in ("max_inflight", "max_inflight_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs < 0:
            raise ValueError(f"max_concurrent_rpcs must be >= 0 (0: off), got {self.max_concurrent_rpcs}")

    def _check_discovery(self) -> None:
        for name, urls in (("triton", "triton_urls"), ("parity_triton", "parity_triton_urls")):
            target = getattr(self, f"{name}_dns")
            if not target:
                continue
            if getattr(self, urls) not in ((), (target,)):
                raise ValueError(f"give --{name.replace('_', '-')}-url or --{name.replace('_', '-')}-dns, not both")
            host, sep, port = target.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{name}_dns must be NAME:PORT, got {target!r}")
        if self.triton_dns:  # control calls (the KServe port's metadata) go to any pod behind the name
            object.__setattr__(self, "triton_urls", (self.triton_dns,))
        if self.dns_refresh_s <= 0:
            raise ValueError(f"dns_refresh_s must be positive, got {self.dns_refresh_s}")

    @property
    def rpc_bound(self) -> int | None:
        """The RPCs each data port holds open at once before gRPC refuses more (None: no bound). Derived, it
        is ``max_inflight`` plus a quarter (at least 64): above admission's count, so that admission, with its
        per-bound messages and per-client fairness, answers ordinary overload. The headroom holds what
        admission does not count (calls it is refusing, answered calls whose task has not ended yet, open
        streams, health); past it, gRPC answers without running any of the frontend's code."""
        if self.max_concurrent_rpcs is None:
            return self.max_inflight + max(64, self.max_inflight // 4)
        return self.max_concurrent_rpcs or None

    @property
    def discovers(self) -> bool:
        """Instances come (at least in part) from DNS, not a fixed list."""
        return bool(self.triton_dns or self.parity_triton_dns)

    def route(self, model: str) -> Route | None:
        return next((r for r in self.routes if r.model == model), None)
