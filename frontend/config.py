"""The frontend's one frozen configuration, built and validated from flags/env in __main__."""

from __future__ import annotations

from dataclasses import dataclass, field

from coding import spec
from coding.errors import CodingError
from coding.schemes import get_scheme

UNCODED = "none"


@dataclass(frozen=True)
class Route:
    """How one deployed model is served: its coding scheme, k and the parity model."""

    model: str
    scheme: str = UNCODED
    k: int = 1
    params: tuple[tuple[str, str], ...] = ()
    parity_model: str = ""

    @property
    def coded(self) -> bool:
        return self.scheme != UNCODED

    @property
    def param_dict(self) -> dict[str, str]:
        return dict(self.params)


def parse_route(text: str) -> Route:
    """``MODEL=SCHEME[:key=value,...]``, e.g. ``mnist_cnn=parm:k=2,encoder=concat`` or ``mnist_cnn=none``.

    The parity model defaults to the export naming (``mnist_parm_concat_k2``); ``parity_model=`` overrides.
    """
    model, sep, rest = text.partition("=")
    if not sep or not model:
        raise ValueError(f"route {text!r}: expected MODEL=SCHEME[:key=value,...]")
    scheme, _, opts = rest.partition(":")
    params = dict(_kv(item, text) for item in opts.split(",") if item)
    if scheme == UNCODED:
        return Route(model=model)
    k = int(params.pop("k", "2"))
    parity_model = params.pop("parity_model", "")
    try:
        get_scheme(scheme, k, params)  # validates scheme, k and params now, not at the first query
    except CodingError as exc:
        raise ValueError(f"route {text!r}: {exc}") from exc
    if not parity_model:
        dataset = model.removesuffix("_cnn")
        parity_model = spec.parity_model_name(dataset, params.get("encoder", "add"), k)
    return Route(model, scheme, k, tuple(sorted(params.items())), parity_model)


def _kv(item: str, text: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"route {text!r}: option {item!r} is not key=value")
    return key.strip(), value.strip()


@dataclass(frozen=True)
class FaultPlan:
    """Injected faults on deployed-model calls, for demos and tests (never on in production).

    A share of calls is delayed by a uniform [delay_min_ms, delay_max_ms], another share fails.
    ``allow_metadata`` lets a request's ``codedserve-fault`` metadata (``delay=MS`` or ``fail``)
    force a fault on that one query: how integration tests make exactly one straggler.
    """

    delay_share: float = 0.0
    delay_min_ms: float = 50.0
    delay_max_ms: float = 200.0
    fail_share: float = 0.0
    seed: int = 0
    allow_metadata: bool = False

    def __post_init__(self) -> None:
        for name in ("delay_share", "fail_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.delay_share + self.fail_share > 1.0:
            raise ValueError("delay_share + fail_share must not exceed 1")
        if not 0 <= self.delay_min_ms <= self.delay_max_ms:
            raise ValueError(f"need 0 <= delay_min_ms <= delay_max_ms, got {self.delay_min_ms}, {self.delay_max_ms}")

    @property
    def active(self) -> bool:
        return self.delay_share > 0 or self.fail_share > 0 or self.allow_metadata


@dataclass(frozen=True)
class FrontendConfig:
    address: str
    triton_urls: tuple[str, ...]
    encoder_address: str
    decoder_address: str
    routes: tuple[Route, ...]
    straggler_timeout_ms: float = 20.0  # stop waiting for an original and decode after this
    fill_timeout_ms: float = 5.0  # a partial coding group is sealed (padded) after this
    default_deadline_s: float = 5.0  # for clients that send no deadline
    triton_timeout_s: float = 30.0  # safety deadline only: expiring calls stress Triton 2.51
    coding_timeout_s: float = 2.0  # encoder/decoder calls
    max_inflight: int = 4096  # queries accepted at once; beyond: RESOURCE_EXHAUSTED
    max_message_bytes: int = 16 * 1024 * 1024
    metrics_port: int | None = None
    log_level: str = "INFO"
    faults: FaultPlan = field(default_factory=FaultPlan)

    def __post_init__(self) -> None:
        if not self.triton_urls:
            raise ValueError("at least one Triton URL is needed (--triton-url / CODEDSERVE_TRITON_URLS)")
        if not self.routes:
            raise ValueError("at least one route is needed (--route / CODEDSERVE_ROUTES)")
        names = [r.model for r in self.routes]
        if len(set(names)) != len(names):
            raise ValueError(f"a model is routed twice: {names}")
        for name in ("straggler_timeout_ms", "fill_timeout_ms", "default_deadline_s", "triton_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")

    def route(self, model: str) -> Route | None:
        return next((r for r in self.routes if r.model == model), None)
