"""The registry of coding schemes: a name, k and parameters -> an object speaking :class:`coding.scheme.Scheme`.

Each scheme lives in its own module beside its math (ParM in :mod:`coding.parm`, ApproxIFER in
:mod:`coding.approxifer`, Collage-CNN in :mod:`coding.collage`, COIN in :mod:`coding.coin`); this
module only builds them. The frontend, the encoder and the decoder all call :func:`get_scheme`, so
the three agree on a code by its name. More schemes can be registered by a module named in ``--scheme-module`` /
``CODEDSERVE_SCHEME_MODULES`` (every service imports it at start-up and it calls :func:`register`): how
the tests plug toy schemes into the real services.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Mapping

from coding.approxifer import ApproxiferScheme
from coding.coin import CoinScheme
from coding.collage import SIDES, CollageScheme
from coding.errors import CodingError
from coding.parm import ParmScheme
from coding.scheme import Scheme

Builder = Callable[[int, Mapping[str, str]], Scheme]


def int_param(params: Mapping[str, str], key: str) -> int:
    try:
        return int(params[key])
    except ValueError:
        raise CodingError(f"parameter {key}={params[key]!r} is not an integer") from None


def bool_param(params: Mapping[str, str], key: str) -> bool:
    value = params.get(key, "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise CodingError(f"parameter {key}={params[key]!r} is not a boolean (true/false)")
    return value in ("true", "1", "yes")


def check_params(scheme: str, params: Mapping[str, str], known: Iterable[str]) -> None:
    unknown = set(params) - set(known)
    if unknown:
        raise CodingError(f"{scheme} takes {', '.join(sorted(known))}; got unknown {sorted(unknown)}")


def _parm(k: int, params: Mapping[str, str]) -> ParmScheme:
    check_params("parm", params, ("encoder", "parity_model"))
    return ParmScheme(encoder=params.get("encoder", "add"), k=k, parity_model=params.get("parity_model", ""))


def _collage(k: int, params: Mapping[str, str]) -> CollageScheme:
    """``s`` cells a side (k = s²); without ``s``, k must be a square."""
    check_params("collage", params, ("s", "collage_model"))
    s = int_param(params, "s") if "s" in params else math.isqrt(k)
    if "s" not in params and s * s != k:
        raise CodingError(f"collage needs s (one of {SIDES}) or a square k = s², got k={k}")
    return CollageScheme(s, collage_model=params.get("collage_model", ""))


def _approxifer(k: int, params: Mapping[str, str]) -> ApproxiferScheme:
    check_params("approxifer", params, ("n", "s", "a", "systematic"))
    n = int_param(params, "n") if "n" in params else None
    s = int_param(params, "s") if "s" in params else 1
    a = int_param(params, "a") if "a" in params else 0
    return ApproxiferScheme(k=k, n=n, s=s, a=a, systematic=bool_param(params, "systematic"))


def _coin(k: int, params: Mapping[str, str]) -> CoinScheme:
    """k member models; ``members=a+b+...`` and ``coded_model=`` name them, ``lambdas=0.5+0.5`` weighs them."""
    check_params("coin", params, ("method", "space", "lambdas", "members", "coded_model"))
    try:
        weights = tuple(float(w) for w in params["lambdas"].split("+")) if "lambdas" in params else ()
    except ValueError:
        raise CodingError(f"parameter lambdas={params['lambdas']!r} is not numbers joined by '+'") from None
    members = tuple(m for m in params.get("members", "").split("+") if m)
    return CoinScheme(
        k,
        method=params.get("method", "fisher"),
        space=params.get("space", "logits"),
        weights=weights,
        members=members,
        coded_model=params.get("coded_model", ""),
    )


_BUILDERS: dict[str, Builder] = {"parm": _parm, "approxifer": _approxifer, "collage": _collage, "coin": _coin}


def register(name: str, builder: Builder) -> None:
    """Add a scheme under ``name`` (a plug-in module calls this when imported)."""
    if name in _BUILDERS and _BUILDERS[name] is not builder:
        raise CodingError(f"coding scheme {name!r} is already registered")
    _BUILDERS[name] = builder
    _BUILT.clear()


def load_scheme_modules(modules: Iterable[str]) -> None:
    """Import each plug-in module so that it registers its schemes."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CodingError(f"scheme module {module!r} cannot be imported: {exc}") from exc


def known_schemes() -> list[str]:
    return sorted(_BUILDERS)


# Schemes are frozen values, so one built per code serves every request naming it: the encoder and the
# decoder look one up per coding group, where building it (parsing and validating params) cost more
# than the coding itself. Bounded, since the codes come from clients.
_BUILT: dict[tuple[str, int, tuple[tuple[str, str], ...]], Scheme] = {}
MAX_BUILT = 256


def get_scheme(name: str, k: int, params: Mapping[str, str] | None = None) -> Scheme:
    """The scheme of that name, k and params; raises :class:`CodingError` naming what is wrong."""
    key = (name, k, tuple(sorted(params.items())) if params else ())
    scheme = _BUILT.get(key)
    if scheme is None:
        if name not in _BUILDERS:
            raise CodingError(f"unknown coding scheme {name!r}; known: {known_schemes()}")
        scheme = _BUILDERS[name](k, dict(params or {}))
        if len(_BUILT) >= MAX_BUILT:
            _BUILT.clear()
        _BUILT[key] = scheme
    return scheme
