"""A service's settings in a TOML file (stdlib ``tomllib``): below its variables and flags, above the defaults.

Each top-level key is a flag's name without its ``--`` (``triton-url``, ``straggler-timeout-ms``), its value
a TOML value of the flag's type: a string, an integer, a number (an integer is a number too), a boolean for
a switch, a list for a repeatable flag. :class:`service_common.cli.Flags` reads a flag's value from the file
when its variable is unset; a key no flag has, or a value of the wrong type, stops the start naming the
file, the key and the problem (:class:`ConfigFileError`).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TOML_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
_TOML_TYPES[dict] = "a table"


class ConfigFileError(ValueError):
    """What is wrong with a configuration file: ``FILE: KEY: PROBLEM``."""

    def __init__(self, path: str | Path, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}" if key else f"{path}: {problem}")


@dataclass(frozen=True)
class ConfigFile:
    path: str
    values: Mapping[str, Any]  # the file's top-level keys, as TOML parsed them


def load_config_file(path: str | Path) -> ConfigFile:
    try:
        with open(path, "rb") as file:
            values = tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(path, "", f"cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(path, "", f"not valid TOML: {exc}") from None
    return ConfigFile(str(path), values)


def type_name(value: Any) -> str:
    return next((name for t, name in _TOML_TYPES.items() if type(value) is t), type(value).__name__)


def unknown_key(path: str, key: str, known: Iterable[str], what: str = "setting") -> ConfigFileError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigFileError(path, key, f"unknown {what}{hint}")


def file_value(
    value: Any,
    convert: Callable[[str], Any],
    *,
    switch: bool = False,
    repeat: bool = False,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A flag's value from its TOML value (raises ValueError saying what was expected and what was found)."""
    if switch:
        if type(value) is not bool:
            raise ValueError(f"expected a boolean (true or false), got {type_name(value)} {value!r}")
        return value
    if repeat:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, e.g. [{value!r}], got {type_name(value)} {value!r}")
        return [file_value(v, convert, choices=choices) for v in value]
    if convert is float and type(value) in (int, float):
        converted: Any = float(value)
    elif convert is int and type(value) is int:
        converted = value
    elif type(value) is str and convert not in (int, float):
        converted = convert(value)
    else:
        wanted = {int: "an integer", float: "a number"}.get(convert, "a string")  # type: ignore[call-overload]
        raise ValueError(f"expected {wanted}, got {type_name(value)} {value!r}")
    if choices is not None and converted not in choices:
        raise ValueError(f"expected one of {list(choices)}, got {converted!r}")
    return converted
