"""The papers' layouts as testbed profiles: which instances serve what, under which law, at which rate.

Pure: no processes. A profile at a scale is a :class:`Testbed`: ``deployed`` instances of the deployed model
(instances 0..m-1), the redundancy each scheme adds as more instances after them, one emulated service-time
law for every model, and an arrival rate set by a target utilisation of the deployed instances.

- ``parm``: m deployed + m/k parity instances (ParM's 12 + 6 at k = 2); ``equal`` serves the deployed model
  on all m + m/k (the same resources as extra replicas), ``replicate`` sends every query to two of 2m
  instances (full replication, 2x the resources), ``hedge`` hedges over the m deployed instances. Beside
  them, to set coding against hedging at the same extra load: hedging swept over its delay quantile and
  capped by a budget (:data:`HEDGE_SWEEP`), ParM with ``decode=eager`` (its own policy), and ParM at k = 3
  and 4 (m/k = 4 and 3 parity instances, on the first of k = 2's). Tiny scale keeps :data:`TINY_PARM`.
- ``collage``: m deployed + ceil(m/s²) Collage-CNN instances for s = 2 and 3, each also with Collage's resend
  fallback; ``equal`` has as many extra replicas as s = 2 has collage instances.
- ``approxifer``: each (K, S) codes K queries into K + S and spreads them over ceil(m (K + S) / K) instances
  (its redundancy (K + S) / K on the same m of base capacity); ``equal`` has as many as the largest.

Time: a paper-scale profile emulates the paper's service time multiplied by ``time_scale`` and divides the
paper's rate by it, so each instance's utilisation is the paper's while the machine sends ``time_scale``
times fewer queries per second; the frontend's timers, the stall schedule and the shuffles' links are scaled
alike.

Faults (:data:`FAULTS`): SIGSTOP stalls on every instance (the default), ParM's background shuffles over
shaped links (every instance in a network namespace), or both.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bench.faults import InstanceStallProfile, ShuffleProfile
from bench.netns import LinkShape
from frontend.core.routes import parse_route
from triton_local.service_time import parse_law

PROFILES = ("parm", "collage", "approxifer")
SCALES = ("tiny", "paper")
FAULTS = ("stalls", "shuffles", "both")

# ParM's latency experiments (its artifact's clipper-parm/run/config, fig9a/fig10/fig11): 12 deployed
# ResNet-18 instances on K80s, k = 2, 150-390 q/s Poisson (fig9a), 270 q/s in fig10 and fig11.
PARM_PAPER_INSTANCES = 12
PARM_PAPER_RATES = (150.0, 390.0)
PARM_PAPER_RATE = 270.0
# ResNet-18 at batch 1 on one K80, one query per execution. ASSUMED: the papers' service times were not
# available here (the one latency at hand, median 80 ms / p99.9 266 ms, is the artifact's
# end-to-end sample output, marked not meaningful). Chosen so ParM's 150-390 q/s load the 12 instances to
# 26-68%; batch=linear:per_row=1 makes a batch of b take b draws' worth, as serving at batch 1 would.
RESNET18_PAPER = "lognormal:median=20,p99=40"
RESNET18_SOURCE = (
    "assumed: a lognormal stand-in for ResNet-18 at batch 1 on a K80 (median 20 ms, p99 40 ms, paper time); "
    "no published per-query service time was available"
)
COLLAGE_SOURCE = (
    "Collage-CNN's published worker latency (its artifact's collage_worker/latency_distribution.npy: "
    "median 138 ms, p99 702 ms, a 2% straggler mode at 610-800 ms), used by its S-CNN and collage workers alike"
)
PER_ROW = "batch=linear:per_row=1"
# SIGSTOP stalls per instance, in paper time: 2.5-12.5 times the ResNet-18 median, 3-9 s apart. A stand-in
# for ParM's background shuffles (which slow an instance's network for seconds rather than stop it), which
# run with --faults shuffles where network namespaces can be made.
PAPER_STALLS = InstanceStallProfile(stall_ms=(50.0, 250.0), every_s=(3.0, 9.0))
TINY_STALLS = InstanceStallProfile(stall_ms=(20.0, 100.0), every_s=(0.5, 1.5))
# ParM's shuffles (fig9-11): 128-256 MB between random pairs of its instances, 4 at once over 12, on
# 1 Gbit/s links (1-2 s a transfer). The tiny scale's are small enough that whole ones fit its 2 s segments.
PAPER_SHUFFLES = ShuffleProfile()
TINY_SHUFFLES = ShuffleProfile(megabytes=(16, 32))
PAPER_LINK_MBIT = 1000.0
COLLAGE_RESEND_MS = 300.0  # just above the top of Collage's main mode (275 ms), as bench.compare's
# Hedging's delay swept (the default, p95 of recent calls, is ``hedge``'s), and capped by a token-bucket
# budget at a delay low enough (p50) that the budget, not the delay, sets how many calls are hedged.
HEDGE_SWEEP = (
    ("hedge_q50", "delay_q=0.5"),
    ("hedge_q90", "delay_q=0.9"),
    ("hedge_q99", "delay_q=0.99"),
    ("hedge_q50_b05", "delay_q=0.5,budget=0.05"),
    ("hedge_q50_b10", "delay_q=0.5,budget=0.1"),
)
# ParM at more k, same rate: the add encoder's parity models (the concat encoder has none for k = 3).
MORE_K = (3, 4)
MORE_K_ENCODER = "add"
# The tiny scale's subset of the parm profile (CI): one budgeted hedge, eager decoding, no other k.
TINY_PARM = ("none", "equal", "hedge", "hedge_q50_b10", "replicate", "parm", "parm_eager")


@dataclass(frozen=True)
class Scheme:
    """One frontend: its route for the deployed model, the instances of its deployed-model calls, and those
    of its coded model (parity or collage; ``--parity-triton-url``)."""

    name: str
    route: str
    data: tuple[int, ...]
    coded: tuple[int, ...] = ()
    resend: bool = False  # Collage's fallback (--resend-after-ms, at the testbed's resend_ms)

    @property
    def instances(self) -> tuple[int, ...]:
        return tuple(sorted({*self.data, *self.coded}))


@dataclass(frozen=True)
class LawFigures:
    """Mean, median and p99 in ms of one execution of one row, from draws of the law."""

    mean_ms: float
    median_ms: float
    p99_ms: float

    @classmethod
    def of(cls, law: str, draws: int = 200_000) -> LawFigures:
        parsed, rng = parse_law(law), random.Random(0)
        values = np.array([parsed.draw_ms(rng) for _ in range(draws)])
        return cls(float(values.mean()), float(np.median(values)), float(np.quantile(values, 0.99)))


@dataclass(frozen=True)
class Testbed:
    """A profile at a scale, ready to start.

    With ``shuffles``, every instance runs in a network namespace behind ``link`` (bench.netns), and
    :attr:`shuffle_loops` transfers at a time cross those links. ``link`` is :func:`paper_link`: the paper's
    1 Gbit/s divided by ``time_scale`` (250mbit at 4), so a 128-256 MB transfer takes ``time_scale`` times
    the paper's 1-2 s, as every other time here does, and overlaps as many queries as it did in the paper;
    the queue's size in bytes is kept, so the delay it can add scales alike."""

    profile: str
    scale: str
    deployed: int
    schemes: tuple[Scheme, ...]
    law: str  # every model's emulated law (triton_local.service_time), already in emulated time
    law_source: str
    time_scale: float  # emulated ms per paper ms (1: the law is used as published, or not a paper's)
    utilisation: float  # offered load per deployed instance under `none`: rate x mean service time / m
    utilisation_source: str
    stalls: InstanceStallProfile | None  # emulated time; None: no stalls
    duration_s: float  # of load per scheme
    rounds: int
    resend_ms: float  # Collage's resend deadline, for the schemes that use it
    warmup_s: float = 1.0  # of unmeasured load per scheme before its first round
    shuffles: ShuffleProfile | None = None  # ParM's background transfers; None: none (no namespaces either)
    # Every instance's inbound link, when shuffles run: ParM's 1 Gbit/s divided by time_scale (see the docstring).
    link: LinkShape = LinkShape()

    @property
    def figures(self) -> LawFigures:
        return _figures(self.law)

    @property
    def rate(self) -> float:
        """Poisson arrivals per second that load the deployed instances to ``utilisation``."""
        return self.utilisation * self.deployed / (self.figures.mean_ms / 1e3)

    @property
    def shuffle_loops(self) -> int:
        """Concurrent shuffles: ParM's ratio (4 over 12) to the deployed instances, whatever the redundancy
        adds, so every scheme meets the same intensity (0 without shuffles)."""
        return 0 if self.shuffles is None else self.shuffles.loops(self.deployed)

    @property
    def faults(self) -> tuple[str, ...]:
        """Which faults run: ``stalls``, ``shuffles``, both or neither."""
        return tuple(name for name, on in (("stalls", self.stalls), ("shuffles", self.shuffles)) if on is not None)

    @property
    def instance_count(self) -> int:
        return 1 + max(i for s in self.schemes for i in s.instances)

    def instance_models(self) -> list[list[str]]:
        """The models each instance loads: the deployed model where a scheme calls it, a coded model where
        a scheme sends its coded queries."""
        models: list[dict[str, None]] = [{} for _ in range(self.instance_count)]
        for scheme in self.schemes:
            route = parse_route(scheme.route)
            for i in scheme.data:
                models[i].update(dict.fromkeys(sorted(route.data_models)))
            for i in scheme.coded:
                models[i][route.parity_model] = None
        return [list(m) for m in models]

    def frontend_flags(self, scheme: Scheme) -> list[str]:
        """Every frontend alike: admission off (latency is measured), timers scaled with the clock; coded
        routes: an adaptive straggler deadline (p95 of recent calls, capped at twice the law's p99), an
        adaptive fill timeout (capped at the law's median), coding inside the frontend."""
        scale, law = self.time_scale, self.figures
        flags = ["--route", scheme.route, "--max-inflight", "100000", "--max-inflight-per-client", "100000"]
        flags += ["--no-refuse-by-wait", "--default-deadline-s", f"{60 * scale:g}"]
        flags += ["--health-interval-s", f"{0.5 * scale:g}", "--health-timeout-s", f"{1.0 * scale:g}"]
        if parse_route(scheme.route).coded:
            flags += ["--straggler-quantile", "0.95", "--straggler-timeout-ms", f"{2 * law.p99_ms:.1f}"]
            flags += ["--adaptive-fill", "--fill-timeout-ms", f"{law.median_ms:.1f}", "--coding", "local"]
        return flags + (["--resend-after-ms", f"{self.resend_ms:g}"] if scheme.resend else [])

    def with_utilisation(self, utilisation: float, source: str) -> Testbed:
        return dataclasses.replace(self, utilisation=utilisation, utilisation_source=source)


_FIGURES: dict[str, LawFigures] = {}


def _figures(law: str) -> LawFigures:
    if law not in _FIGURES:
        _FIGURES[law] = LawFigures.of(law)
    return _FIGURES[law]


def scaled_law(law: str, factor: float) -> str:
    """A fixed or lognormal law with every time multiplied by ``factor`` (its batch growth kept)."""
    shape, sep, growth = law.partition(",batch=")
    kind, _, params = shape.partition(":")
    if kind not in ("fixed", "lognormal"):
        raise ValueError(f"only fixed and lognormal laws scale, got {law!r}")
    scaled = ",".join(f"{k}={float(v) * factor:g}" for k, v in (p.split("=") for p in params.split(",")))
    return f"{kind}:{scaled}{sep}{growth}"


def paper_link(time_scale: float) -> LinkShape:
    """ParM's 1 Gbit/s links on a clock ``time_scale`` times slower: a transfer takes its paper time, scaled."""
    return LinkShape(rate=f"{PAPER_LINK_MBIT / time_scale:g}mbit")


def paper_utilisation(paper_rate: float) -> float:
    """Per-instance utilisation of ParM's 12 instances at ``paper_rate`` q/s under the ResNet-18 law."""
    return paper_rate * _figures(RESNET18_PAPER).mean_ms / 1e3 / PARM_PAPER_INSTANCES


def baselines(m: int, extra: int) -> list[Scheme]:
    """Uncoded on m; the same route on m + ``extra`` (equal resources); hedged over m; replicated on 2m."""
    return [
        Scheme("none", "{model}=none", _span(m)),
        Scheme("equal", "{model}=none", _span(m + extra)),
        Scheme("hedge", "{model}=hedge", _span(m)),
        Scheme("replicate", "{model}=replicate", _span(2 * m)),
    ]


def parm_schemes(m: int, k: int, encoder: str, parity: str, more: dict[int, str] | None = None) -> list[Scheme]:
    """ParM at k and its baselines, the hedging sweep, eager decoding, and ParM at each k of ``more``
    (k -> its parity model, :data:`MORE_K_ENCODER`'s), each on the first m/k of the parity instances."""
    hedges = [Scheme(name, f"{{model}}=hedge:{opts}", _span(m)) for name, opts in HEDGE_SWEEP]
    return [
        *baselines(m, math.ceil(m / k)),
        *hedges,
        _parm("parm", m, k, encoder, parity),
        _parm("parm_eager", m, k, encoder, parity, ",decode=eager"),
        *(_parm(f"parm_k{k2}", m, k2, MORE_K_ENCODER, p) for k2, p in (more or {}).items()),
    ]


def _parm(name: str, m: int, k: int, encoder: str, parity: str, options: str = "") -> Scheme:
    route = f"{{model}}=parm:k={k},encoder={encoder},parity_model={parity}{options}"
    return Scheme(name, route, _span(m), _span(m + math.ceil(m / k), m))


def collage_schemes(m: int, sides: Iterable[int]) -> list[Scheme]:
    extras = {s: math.ceil(m / (s * s)) for s in sides}
    coded = []
    for s, extra in extras.items():
        spread = (_span(m), _span(m + extra, m))
        coded.append(Scheme(f"collage{s}", f"{{model}}=collage:s={s}", *spread))
        coded.append(Scheme(f"collage{s}_resend", f"{{model}}=collage:s={s}", *spread, resend=True))
    return [*baselines(m, max(extras.values())), *coded]


def approxifer_schemes(m: int, codes: Iterable[tuple[int, int]]) -> list[Scheme]:
    spread = {(k, s): math.ceil(m * (k + s) / k) for k, s in codes}
    coded = [
        Scheme(f"approxifer_k{k}_s{s}", f"{{model}}=approxifer:k={k},s={s}", _span(n)) for (k, s), n in spread.items()
    ]
    return [*baselines(m, max(spread.values()) - m), *coded]


def _span(stop: int, start: int = 0) -> tuple[int, ...]:
    return tuple(range(start, stop))


def testbed(
    profile: str,
    scale: str,
    model: str,
    parity: str,
    encoder: str = "concat",
    k: int = 2,
    more_parities: dict[int, str] | None = None,
    deployed: int | None = None,
    faults: str = "stalls",
) -> Testbed:
    """``profile`` at ``scale`` serving ``model`` (ParM: with ``parity``, built with ``encoder`` and ``k``;
    at paper scale also at each k of ``more_parities``, k -> parity model), on ``deployed`` instances (the
    scale's unless given: the rate follows, at the same utilisation), under ``faults`` (:data:`FAULTS`)."""
    if faults not in FAULTS:
        raise ValueError(f"unknown faults {faults!r}; known: {', '.join(FAULTS)}")
    paper = scale == "paper"
    m = deployed or (PARM_PAPER_INSTANCES if paper else 4)
    schemes = tuple(
        dataclasses.replace(s, route=s.route.format(model=model))
        for s in _schemes(profile, paper, m, parity, encoder, k, more_parities if paper else None)
        if paper or profile != "parm" or s.name in TINY_PARM
    )
    if not paper:
        tiny = Testbed(
            profile=profile, scale=scale, deployed=m, schemes=schemes, law=f"fixed:ms=10,{PER_ROW}",
            law_source="fixed 10 ms: a structural check, not a paper's law", time_scale=1.0, utilisation=0.15,
            utilisation_source="chosen light, for CI", stalls=TINY_STALLS, duration_s=2.0, rounds=1, resend_ms=30.0,
            warmup_s=0.5,
        )  # fmt: skip
        return _faulted(tiny, faults, TINY_SHUFFLES)
    collage = profile == "collage"  # Collage's law as published: its own time, its own stragglers, no stalls
    time_scale = 1.0 if collage else 4.0
    bed = Testbed(
        profile=profile, scale=scale, deployed=m, schemes=schemes,
        law=f"collage,{PER_ROW}" if collage else scaled_law(f"{RESNET18_PAPER},{PER_ROW}", time_scale),
        law_source=COLLAGE_SOURCE if collage else RESNET18_SOURCE, time_scale=time_scale,
        utilisation=paper_utilisation(PARM_PAPER_RATE),
        utilisation_source=f"ParM's {PARM_PAPER_RATE:g} q/s on {PARM_PAPER_INSTANCES} instances (fig10, fig11) "
        "under the ResNet-18 law",
        stalls=None if collage else PAPER_STALLS.scaled(time_scale), duration_s=75.0, rounds=4,
        resend_ms=COLLAGE_RESEND_MS, warmup_s=3.0,
    )  # fmt: skip
    return _faulted(bed, faults, PAPER_SHUFFLES)


def _faulted(bed: Testbed, faults: str, shuffles: ShuffleProfile) -> Testbed:
    """``bed`` (with its scale's stalls) under ``faults``: the stalls kept unless shuffles alone, the scale's
    ``shuffles`` added unless stalls alone, on links at the scale's time."""
    return dataclasses.replace(
        bed,
        stalls=None if faults == "shuffles" else bed.stalls,
        shuffles=None if faults == "stalls" else shuffles,
        link=paper_link(bed.time_scale),
    )


def _schemes(
    profile: str, paper: bool, m: int, parity: str, encoder: str, k: int, more: dict[int, str] | None
) -> list[Scheme]:
    if profile == "parm":
        return parm_schemes(m, k, encoder, parity, more)
    if profile == "collage":
        return collage_schemes(m, (2, 3))
    if profile == "approxifer":
        return approxifer_schemes(m, ((8, 1), (8, 2), (12, 1), (12, 2)) if paper else ((2, 1), (4, 1)))
    raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
