"""``python -m export route``: the frontend's ``--route`` text and the models Triton must load for one scheme.

The models are the scheme's own answer (``coding.schemes``: ``Scheme.models``), so the names printed are the
ones the frontend will call; each is checked to be in the repository.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coding.schemes import get_scheme
from export.manifest import read_manifest
from export.own_import import model_path

SCHEMES = ("none", "hedge", "parm", "collage", "approxifer", "coin")


@dataclass(frozen=True)
class RouteText:
    route: str
    models: tuple[str, ...]
    missing: tuple[str, ...]

    def lines(self, repository: Path) -> list[str]:
        out = [
            f"--route '{self.route}'",
            f"python -m triton_local --model-repository {repository} --models {','.join(self.models)}",
        ]
        if self.missing:
            out.append(f"missing from {repository}: {', '.join(self.missing)} (make them first)")
        return out


def route(name: str, scheme: str, k: int, repository: Path, options: dict[str, str] | None = None) -> RouteText:
    """``name`` is the served model (COIN: the set's name, its members ``name_m0``...)."""
    options = dict(options or {})
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    models: tuple[str, ...] = (name,)
    if scheme in ("none", "hedge"):
        text = f"{name}={scheme}"
    else:
        if scheme == "collage":
            options.setdefault("s", str(int(round(k**0.5))))
        params = ",".join(f"{key}={value}" for key, value in sorted(options.items()))
        k_text = "" if scheme == "collage" else f"k={k}"
        text = f"{name}={scheme}:" + ",".join(p for p in (k_text, params) if p)
        code = get_scheme(scheme, k, options)
        models = tuple(dict.fromkeys(code.models(name).values()))
        shape = _input_shape(repository, models[0])
        problem = code.rejects(shape) if shape else None
        if problem:
            raise ValueError(f"{text}: {problem} ({models[0]} takes {list(shape or ())})")
    missing = tuple(m for m in models if not model_path(repository, m).is_file())
    return RouteText(text, models, missing)


def _input_shape(repository: Path, model: str) -> tuple[int, ...] | None:
    """One query's shape as import recorded it (None for a model not imported with ``python -m export``)."""
    user = read_manifest(repository).get(model, {}).get("user") or {}
    return tuple(user["input_shape"]) if "input_shape" in user else None
