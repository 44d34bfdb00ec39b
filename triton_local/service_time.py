"""Emulated accelerator time: per-model laws for how long one execution holds a model instance.

The local backend (``backend/onnxruntime/model.py``) runs the real ONNX model, then holds the instance until a
time drawn from the model's law has passed since the execution began. The Python backend runs one execution
at a time per instance, so requests queue behind a busy instance and Triton's dynamic batcher forms batches
as it would in front of an accelerator. This module is copied beside that backend (the stub's interpreter
cannot import the project's packages), so it imports the standard library alone.

Laws are written ``MODEL=LAW[;MODEL=LAW...]``; ``*`` stands for every model not named. A law is one of

- ``collage``: Collage-CNN's published straggler recipe, drawn piecewise-linearly between its quantiles;
- ``samples:path=FILE[,scale=X]``: measured times, one number in ms per line (``#`` comments), each equally
  likely, multiplied by X (default 1);
- ``lognormal:median=MS,p99=MS``: a lognormal law with that median and 99th percentile;
- ``fixed:ms=MS``: the same time every execution;

One tritonserver emulates one accelerator: the executions of all its models and instances take turns on it
(a lock file the launcher names in ``TRITON_LOCAL_ACCELERATOR``), as they would share one GPU that each
execution keeps fully busy. Without that, each model's backend stub would hold its own instance, and a
server serving two models would behave as two accelerators.

Laws are optionally followed by ``,batch=GROWTH``, how the time grows with the rows ``b`` of one execution:
``flat`` (the default: a batch takes one draw, whatever its size) or ``linear:per_row=X``, where
t(b) = t(1)·(1 + X·(b − 1)). Example: ``mnist_cnn=lognormal:median=20,p99=60,batch=linear:per_row=0.1;*=collage``.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

# How the launcher hands the laws to the backend stubs (tritonserver's environment, which they inherit).
ENV_LAWS = "TRITON_LOCAL_SERVICE_TIME"
ENV_SEED = "TRITON_LOCAL_SERVICE_TIME_SEED"
ENV_ACCELERATOR = "TRITON_LOCAL_ACCELERATOR"  # the lock file all of one server's executions take turns on
ANY_MODEL = "*"
_Z99 = 2.3263478740408408  # the standard normal's 99th percentile

# Collage-CNN's published worker latency: (cumulative probability, latency in ms). The artifact's 137,594 samples are
# not public, only these quantiles; the empty gap between the two modes (about 98% of samples in 84-275 ms,
# about 2% in 610-800 ms) is kept empty.
COLLAGE_QUANTILES_MS: tuple[tuple[float, float], ...] = (
    (0.0, 83.6),
    (0.5, 138.2),
    (0.9, 189.0),
    (0.95, 215.0),
    (0.975, 263.0),
    (0.978, 275.0),  # top of the main mode
    (0.9781, 610.0),  # bottom of the straggler mode
    (0.98, 627.0),
    (0.99, 702.0),
    (0.999, 770.0),
    (1.0, 1039.0),
)
TABLES: dict[str, tuple[tuple[float, float], ...]] = {"collage": COLLAGE_QUANTILES_MS}


class ServiceTimeError(ValueError):
    """A law's text that cannot be used; the message names the entry and the problem."""


@dataclass(frozen=True)
class Quantiles:
    """A piecewise-linear quantile function through a published table."""

    name: str

    def draw_ms(self, rng: random.Random) -> float:
        return interpolate(TABLES[self.name], rng.random())

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Samples:
    """Measured times, drawn uniformly (with replacement)."""

    path: Path
    values_ms: tuple[float, ...]
    scale: float = 1.0

    def draw_ms(self, rng: random.Random) -> float:
        return rng.choice(self.values_ms) * self.scale

    def __str__(self) -> str:
        return f"samples:path={self.path}" + (f",scale={self.scale!r}" if self.scale != 1.0 else "")


@dataclass(frozen=True)
class LogNormal:
    """exp(N(ln median, σ²)) with σ = ln(p99 / median) / z₀.₉₉."""

    median_ms: float
    p99_ms: float

    def draw_ms(self, rng: random.Random) -> float:
        return rng.lognormvariate(math.log(self.median_ms), math.log(self.p99_ms / self.median_ms) / _Z99)

    def __str__(self) -> str:
        return f"lognormal:median={self.median_ms!r},p99={self.p99_ms!r}"


@dataclass(frozen=True)
class Fixed:
    ms: float

    def draw_ms(self, rng: random.Random) -> float:
        return self.ms

    def __str__(self) -> str:
        return f"fixed:ms={self.ms!r}"


Shape = Quantiles | Samples | LogNormal | Fixed


@dataclass(frozen=True)
class Law:
    """One model's law: the time of a one-row execution, and its growth per extra row (0: flat)."""

    shape: Shape
    per_row: float = 0.0

    def draw_ms(self, rng: random.Random, rows: int = 1) -> float:
        return self.shape.draw_ms(rng) * (1.0 + self.per_row * (max(rows, 1) - 1))

    def __str__(self) -> str:
        return f"{self.shape},batch=linear:per_row={self.per_row!r}" if self.per_row else str(self.shape)


def interpolate(table: tuple[tuple[float, float], ...], p: float) -> float:
    """The table's value at cumulative probability ``p``, linear between its points."""
    i = min(max(bisect.bisect_right(table, (p, math.inf)), 1), len(table) - 1)
    (p0, v0), (p1, v1) = table[i - 1], table[i]
    return v0 if p1 == p0 else v0 + (v1 - v0) * (min(max(p, p0), p1) - p0) / (p1 - p0)


def parse(text: str) -> dict[str, Law]:
    """``MODEL=LAW[;MODEL=LAW...]`` -> model -> law; empty text means no emulation. Raises
    :class:`ServiceTimeError` naming the entry at fault."""
    laws: dict[str, Law] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        model, eq, law = (part.strip() for part in entry.partition("="))
        if not eq or not model or not law:
            raise ServiceTimeError(f"{entry!r}: expected MODEL=LAW (MODEL a model name or '*')")
        if model in laws:
            raise ServiceTimeError(f"{entry!r}: {model!r} has a law already")
        try:
            laws[model] = parse_law(law)
        except ServiceTimeError as exc:
            raise ServiceTimeError(f"{entry!r}: {exc}") from None
    return laws


def parse_law(text: str) -> Law:
    """``KIND[:K=V,...][,batch=flat|linear:per_row=X]`` -> :class:`Law`."""
    shape_text, _, growth = text.partition(",batch=")
    if shape_text.startswith("batch="):
        raise ServiceTimeError("the law comes before batch=")
    kind, _, rest = shape_text.partition(":")
    params = _params(rest)
    return Law(_shape(kind.strip(), params), _per_row(growth.strip()) if growth else 0.0)


def render(laws: dict[str, Law]) -> str:
    """The text :func:`parse` reads back into ``laws`` (samples paths absolute)."""
    return ";".join(f"{model}={law}" for model, law in laws.items())


def law_for(laws: dict[str, Law], model: str) -> Law | None:
    """The model's own law, else the ``*`` law, else None (not emulated)."""
    return laws.get(model, laws.get(ANY_MODEL))


def _params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            raise ServiceTimeError(f"expected KEY=VALUE, got {item!r}")
        if key in params:
            raise ServiceTimeError(f"{key} given twice")
        params[key] = value
    return params


_KEYS = {"collage": (), "fixed": ("ms",), "lognormal": ("median", "p99"), "samples": ("path",)}
_OPTIONAL = {"samples": ("scale",)}


def _shape(kind: str, params: dict[str, str]) -> Shape:
    if kind not in _KEYS:
        raise ServiceTimeError(f"unknown law {kind!r}; known: {', '.join(sorted(_KEYS))}")
    wanted, optional = _KEYS[kind], _OPTIONAL.get(kind, ())
    if unknown := sorted(set(params) - {*wanted, *optional}):
        takes = ", ".join((*wanted, *optional)) or "no parameters"
        raise ServiceTimeError(f"{kind} takes {takes}, not {', '.join(unknown)}")
    if missing := [k for k in wanted if k not in params]:
        raise ServiceTimeError(f"{kind} needs {', '.join(missing)}")
    if kind == "collage":
        return Quantiles(kind)
    if kind == "fixed":
        return Fixed(_number("ms", params["ms"]))
    if kind == "samples":
        scale = _number("scale", params.get("scale", "1"), positive=True)
        return dataclasses.replace(_samples(Path(params["path"])), scale=scale)
    median, p99 = _number("median", params["median"], positive=True), _number("p99", params["p99"], positive=True)
    if p99 < median:
        raise ServiceTimeError(f"lognormal needs p99 >= median, got median={median:g}, p99={p99:g}")
    return LogNormal(median, p99)


def _per_row(text: str) -> float:
    if text == "flat":
        return 0.0
    kind, _, rest = text.partition(":")
    params = _params(rest)
    if kind.strip() != "linear" or set(params) != {"per_row"}:
        raise ServiceTimeError(f"batch growth is 'flat' or 'linear:per_row=X', got {text!r}")
    return _number("per_row", params["per_row"])


def _number(key: str, text: str, positive: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ServiceTimeError(f"{key} must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ServiceTimeError(f"{key} must be a finite number {'> 0' if positive else '>= 0'}, got {text!r}")
    return value


def _samples(path: Path) -> Samples:
    """Read the file now, so a bad one fails in the launcher; the path is kept absolute for the stubs."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ServiceTimeError(f"samples file {path}: {exc.strerror}") from None
    values = []
    for number, line in enumerate(lines, 1):
        if text := line.split("#", 1)[0].strip():
            try:
                values.append(_number("a sample", text))
            except ServiceTimeError as exc:
                raise ServiceTimeError(f"samples file {path} line {number}: {exc}") from None
    if not values:
        raise ServiceTimeError(f"samples file {path} holds no samples")
    return Samples(path.resolve(), tuple(values))


class InstanceClock:
    """One model instance's draws: seeded by (seed, model, instance), so a run is reproducible."""

    def __init__(self, law: Law, seed: int, model: str, instance: str) -> None:
        self.law = law
        self._rng = random.Random(f"{seed}/{model}/{instance}")  # a str seed is hashed with SHA-512: stable

    def draw_s(self, rows: int = 1) -> float:
        return self.law.draw_ms(self._rng, rows) / 1e3

    def hold(self, started: float, rows: int) -> None:
        """Sleep until a drawn time has passed since ``started`` (a ``time.monotonic()``)."""
        remaining = self.draw_s(rows) - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)


class Accelerator:
    """One server's emulated accelerator: ``with accelerator:`` waits for the turn, across the backend stubs
    of every model on the server (an exclusive ``flock`` on a file they all open)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> Accelerator:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def accelerator_busy(path: str | Path) -> bool:
    """True while an execution holds the accelerator at ``path`` (a probe that takes and drops the turn)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    return False
