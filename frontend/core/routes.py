"""Routes: which scheme serves a model, on which Triton models, dispatched how (``--route`` parsed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from coding.errors import CodingError
from coding.scheme import Scheme, Uncoded, group_size
from coding.schemes import get_scheme
from frontend.core.deadlines import DeadlinePolicy

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
    :class:`frontend.dataplane.dispatch.HedgeBudget`)."""

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
    deadlines: DeadlinePolicy | None = None  # the route's own straggler/fill settings; None: the frontend's

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
        return build_route(model, scheme, params)
    except ValueError as exc:
        raise ValueError(f"route {text!r}: {exc}") from exc


def build_route(model: str, scheme: str, params: dict[str, str]) -> Route:
    """The route of ``model`` by ``scheme`` with ``params``, the options of :func:`parse_route` (``k`` among
    them), checked now, not at the first query; raises ValueError naming what is wrong."""
    params = dict(params)
    try:
        if scheme in BASELINES:
            members = tuple(m for m in params.pop("members", "").split("+") if m)
            baseline = Uncoded(scheme, members)
            return Route(model, scheme, dispatch=_baseline_dispatch(scheme, params), code=baseline)
        k = int(params.pop("k", "2"))
        decode = params.pop("decode", "deadline")
        code = get_scheme(scheme, k, params)
        _check_decode(decode, code)
    except CodingError as exc:
        raise ValueError(str(exc)) from exc
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
