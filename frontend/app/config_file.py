"""The frontend's configuration file: its routes, each with its own deadlines if it sets them.

The file's other keys are the frontend's flags (:mod:`service_common.config_file`, read by
:class:`service_common.cli.Flags`); here is its ``route`` key, an array of tables::

    [[route]]
    model = "mnist_cnn"          # the name clients ask for
    scheme = "parm"              # a coding scheme, or none | replicate | hedge
    k = 2                        # queries per coding group (coded schemes)
    options = { encoder = "concat" }   # what --route takes after k: encoder, parity_model, decode, copies, ...
    straggler-timeout-ms = 30    # the route's own deadlines: any of DEADLINE_FLAGS' flags

An item may also be a ``--route`` string (``route = ["mnist_cnn=none"]``). A deadline a route does not set is
the frontend's (its flag, variable or top-level key). Every problem names the file and the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coding.schemes import known_schemes
from frontend.core.deadlines import DeadlinePolicy
from frontend.core.routes import BASELINES, Route, build_route, parse_route
from service_common.cli import Setting
from service_common.config_file import ConfigFile, ConfigFileError, type_name, unknown_key

ROUTE_KEY = "route"
# The deadline flags (their dests) -> the DeadlinePolicy field each sets; a route in the file may set any.
DEADLINE_FLAGS = {
    "straggler_timeout_ms": "straggler_ms",
    "straggler_quantile": "straggler_quantile",
    "straggler_floor_ms": "straggler_floor_ms",
    "fill_timeout_ms": "fill_ms",
    "adaptive_fill": "adaptive_fill",
    "fill_floor_ms": "fill_floor_ms",
    "resend_after_ms": "resend_ms",
}
_ROUTE_KEYS = ("model", "scheme", "k", "options")


@dataclass(frozen=True)
class FileRoute:
    """A route of the file and the deadlines it sets itself (DeadlinePolicy field -> value)."""

    route: Route
    deadlines: Mapping[str, Any]
    where: str  # how errors name it: FILE: route[i]

    def resolve(self, policy: DeadlinePolicy) -> Route:
        """The route, with its own deadlines over the frontend's ``policy`` (unchanged when it sets none)."""
        if not self.deadlines:
            return self.route
        try:
            return dataclasses.replace(self.route, deadlines=dataclasses.replace(policy, **self.deadlines))
        except ValueError as exc:
            raise ValueError(f"{self.where} ({self.route.model}): bad deadlines: {exc}") from None


def deadline_policy(values: Mapping[str, Any]) -> DeadlinePolicy:
    """The frontend's deadlines from its settings (flag dest -> value)."""
    return DeadlinePolicy(**{field: values[dest] for dest, field in DEADLINE_FLAGS.items()})


def file_routes(file: ConfigFile | None, settings: Mapping[str, Setting]) -> tuple[FileRoute, ...]:
    """The file's routes, each checked (raises ConfigFileError naming the file and the key)."""
    if file is None or ROUTE_KEY not in file.values:
        return ()
    items = file.values[ROUTE_KEY]
    if not isinstance(items, list) or not items:
        raise ConfigFileError(file.path, ROUTE_KEY, f"expected [[route]] tables, got {type_name(items)} {items!r}")
    return tuple(_file_route(file.path, f"{ROUTE_KEY}[{i}]", item, settings) for i, item in enumerate(items))


def _file_route(path: str, where: str, item: Any, settings: Mapping[str, Setting]) -> FileRoute:
    if isinstance(item, str):
        try:
            return FileRoute(parse_route(item), {}, f"{path}: {where}")
        except ValueError as exc:
            raise ConfigFileError(path, where, str(exc)) from None
    if not isinstance(item, dict):
        raise ConfigFileError(path, where, f"expected a table or a --route string, got {type_name(item)} {item!r}")
    deadline_keys = {settings[dest].flag.lstrip("-"): dest for dest in DEADLINE_FLAGS}
    for key in item:
        if key not in _ROUTE_KEYS and key not in deadline_keys:
            raise unknown_key(path, f"{where}.{key}", [*_ROUTE_KEYS, *deadline_keys], "route key")
    for key in ("model", "scheme"):
        if key not in item:
            raise ConfigFileError(path, where, f"missing key {key!r}")
        if not isinstance(item[key], str) or not item[key]:
            found = f"{type_name(item[key])} {item[key]!r}"
            raise ConfigFileError(path, f"{where}.{key}", f"expected a non-empty string, got {found}")
    schemes = [*BASELINES, *known_schemes()]  # after the scheme modules are imported: they may add one
    if item["scheme"] not in schemes:
        raise ConfigFileError(path, f"{where}.scheme", f"unknown scheme {item['scheme']!r}; known: {schemes}")
    params = _options(path, where, item)
    try:
        route = build_route(item["model"], item["scheme"], params)
    except ValueError as exc:
        raise ConfigFileError(path, f"{where} ({item['model']})", str(exc)) from None
    deadlines = {}
    for key, dest in deadline_keys.items():
        if key in item:
            try:
                deadlines[DEADLINE_FLAGS[dest]] = settings[dest].from_file(item[key])
            except ValueError as exc:
                raise ConfigFileError(path, f"{where}.{key}", str(exc)) from None
    return FileRoute(route, deadlines, f"{path}: {where}")


def _options(path: str, where: str, item: Mapping[str, Any]) -> dict[str, str]:
    """``k`` and ``options`` as the strings :func:`build_route` takes (``members`` may be a list)."""
    options = item.get("options", {})
    if not isinstance(options, dict):
        raise ConfigFileError(path, f"{where}.options", f"expected a table, got {type_name(options)} {options!r}")
    params = {}
    for key, value in options.items():
        if key == "k":
            raise ConfigFileError(path, f"{where}.options.k", "k is a key of the route itself")
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            params[key] = "+".join(value)
        elif type(value) in (str, int, float, bool):
            params[key] = str(value).lower() if type(value) is bool else str(value)
        else:
            raise ConfigFileError(path, f"{where}.options.{key}", f"expected a string or a number, got {value!r}")
    if "k" in item:
        if type(item["k"]) is not int:
            raise ConfigFileError(path, f"{where}.k", f"expected an integer, got {type_name(item['k'])} {item['k']!r}")
        params["k"] = str(item["k"])
    return params
