"""The frontend's one frozen configuration, built and validated from flags/env in __main__."""

from __future__ import annotations

from dataclasses import dataclass, field

from frontend.core.deadlines import DeadlinePolicy
from frontend.core.faults import FaultPlan
from frontend.core.routes import Route
from frontend.dataplane.batching import DEFAULT_ESTIMATE_MAX_AGE_S
from service_common.channels import DEFAULT_RECONNECT_BACKOFF_MS
from service_common.event_loop import DEFAULT_LOOP
from service_common.tls import ClientTLS, ServerTLS


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
    # Queries accepted at once, in all and from one client (frontend.core.admission); beyond: RESOURCE_EXHAUSTED.
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
    log_format: str = "text"  # "text" or "json" (service_common.logs)
    kserve_address: str | None = None  # also serve Triton's KServe v2 gRPC protocol here; None = off
    faults: FaultPlan = field(default_factory=FaultPlan)
    parity_triton_urls: tuple[str, ...] = ()  # instances serving parity models; empty = triton_urls
    scheme_modules: tuple[str, ...] = ()  # plug-in modules that register more coding schemes
    coding: str = "services"  # "services": the encoder/decoder services; "local": coding/ in-process
    coding_transport: str = "stream"  # how batches reach the coding services: "stream" or "unary" calls
    batch_inflight: int = 1  # ModelInfer calls out per instance and model; what queues meanwhile is batched
    triton_transport: str = "unary"  # "unary": a ModelInfer call each; "stream": messages on one stream per instance
    # Give up Triton calls no query waits for any more (losing copies, queued or rebuilt originals): needs a Triton
    # that survives cancelled calls (24.12 or later; the local 2.51 crashes), so off by default.
    cancel_losers: bool = False
    metrics_address: str = "127.0.0.1"  # the host /metrics binds (0.0.0.0 in a pod)
    # Triton pod discovery (frontend.transport.discovery): NAME:PORT of a headless Service whose every address is one
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
    health_interval_s: float = 0.5  # how often dependencies are probed (frontend.app.health)
    health_timeout_s: float = 1.0  # a probe unanswered this long counts as down
    warm_up: bool = True  # one all-zero query per model and instance before SERVING (FrontendApp.warm_up)

    def __post_init__(self) -> None:
        self._check_discovery()
        if not self.triton_urls:
            raise ValueError("at least one Triton URL is needed (--triton-url / CODEDSERVE_FRONTEND_TRITON_URLS)")
        if not self.routes:
            raise ValueError("at least one route is needed (--route / CODEDSERVE_FRONTEND_ROUTES / --config)")
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
