"""The registry of coding schemes: one object per scheme that encodes a group and decodes a loss.

The encoder and decoder services are thin shells over :func:`get_scheme`; the frontend only
knows a scheme's :class:`GroupLayout` (k, how many coded queries, which model runs them, how many
outputs a decode needs), never its math. Every scheme offers the same three calls:
``layout``, ``parity_queries(group)`` and ``decode_group(outputs, present, parity_outputs, parity_present)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from coding import parm
from coding.approxifer import ApproxiferScheme
from coding.errors import CodingError
from coding.layout import GroupLayout


@dataclass(frozen=True)
class ParmScheme:
    """ParM: one learned parity model; r = 1 parity query per k queries."""

    encoder: str
    k: int
    name: str = "parm"
    r: int = 1

    def __post_init__(self) -> None:
        if self.encoder not in parm.ENCODERS:
            raise CodingError(f"unknown ParM encoder {self.encoder!r}; known: {sorted(parm.ENCODERS)}")
        if self.k < 2:
            raise CodingError(f"ParM needs k >= 2, got k={self.k}")
        if self.encoder == "concat" and self.k not in (2, 4):
            raise CodingError(f"the concatenation encoder supports k in (2, 4), got k={self.k}")

    def encode(self, group: np.ndarray) -> np.ndarray:
        """``(k, C, H, W)`` float32 queries -> ``(r, C, H, W)`` parity queries."""
        if group.ndim < 2 or group.shape[0] != self.k:
            raise CodingError(f"expected a coding group of k={self.k} queries, got shape {list(group.shape)}")
        if self.encoder == "concat" and (group.ndim != 4 or group.shape[-1] % 2 or group.shape[-2] % 2):
            raise CodingError(f"the concatenation encoder needs (k, C, H, W) with even H, W; got {list(group.shape)}")
        parity = parm.ENCODERS[self.encoder](group.astype(np.float32, copy=False))
        return parity[None].astype(np.float32, copy=False)

    def decode(self, slot_outputs: np.ndarray, present: np.ndarray, parity_outputs: np.ndarray) -> np.ndarray:
        """Rebuild the output of the query in the absent slots.

        ``slot_outputs`` ``(k, classes)``, ``present`` ``(k,)`` bool, ``parity_outputs`` ``(r, classes)``.
        """
        if slot_outputs.ndim != 2 or slot_outputs.shape[0] != self.k:
            raise CodingError(f"expected outputs of shape (k={self.k}, classes), got {list(slot_outputs.shape)}")
        if present.shape != (self.k,):
            raise CodingError(f"expected a presence mask of length k={self.k}, got {list(present.shape)}")
        if present.all():
            raise CodingError("nothing to decode: every output of the coding group is present")
        if parity_outputs.shape != (self.r, slot_outputs.shape[1]):
            raise CodingError(
                f"expected parity outputs of shape ({self.r}, {slot_outputs.shape[1]}), "
                f"got {list(parity_outputs.shape)}"
            )
        decoded = parm.subtraction_decode(
            parity_outputs[0].astype(np.float64), slot_outputs.astype(np.float64), present
        )
        return decoded.astype(np.float32)

    @property
    def layout(self) -> GroupLayout:
        return GroupLayout(k=self.k, parities=self.r, systematic=True, parity_model=True, needed=self.k)

    def parity_queries(self, group: np.ndarray) -> np.ndarray:
        return self.encode(group)

    def decode_group(
        self, outputs: np.ndarray, present: np.ndarray, parity_outputs: np.ndarray, parity_present: np.ndarray
    ) -> tuple[np.ndarray, list[int]]:
        """``(k, classes)``: present rows as given, absent rows (all one query) rebuilt; no worker is judged."""
        if not np.asarray(parity_present, dtype=bool).all():
            raise CodingError("ParM cannot decode without its parity output")
        rebuilt = outputs.astype(np.float32, copy=True)
        rebuilt[~present] = self.decode(outputs, present, parity_outputs)
        return rebuilt, []


Scheme = ParmScheme | ApproxiferScheme


def _int_param(params: Mapping[str, str], key: str) -> int:
    try:
        return int(params[key])
    except ValueError:
        raise CodingError(f"parameter {key}={params[key]!r} is not an integer") from None


def _bool_param(params: Mapping[str, str], key: str) -> bool:
    value = params.get(key, "false").strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise CodingError(f"parameter {key}={params[key]!r} is not a boolean (true/false)")
    return value in ("true", "1", "yes")


def _parm(k: int, params: Mapping[str, str]) -> ParmScheme:
    return ParmScheme(encoder=params.get("encoder", "add"), k=k)


def _approxifer(k: int, params: Mapping[str, str]) -> ApproxiferScheme:
    unknown = set(params) - {"n", "s", "a", "systematic"}
    if unknown:
        raise CodingError(f"approxifer takes n, s, a, systematic; got unknown {sorted(unknown)}")
    counts = {key: _int_param(params, key) for key in ("n", "s", "a") if key in params}
    return ApproxiferScheme(k=k, systematic=_bool_param(params, "systematic"), **counts)


_BUILDERS: dict[str, Callable[[int, Mapping[str, str]], Scheme]] = {"parm": _parm, "approxifer": _approxifer}


def get_scheme(name: str, k: int, params: Mapping[str, str] | None = None) -> Scheme:
    """Build a scheme by name; raises :class:`CodingError` naming what is wrong."""
    if name not in _BUILDERS:
        raise CodingError(f"unknown coding scheme {name!r}; known: {sorted(_BUILDERS)}")
    return _BUILDERS[name](k, dict(params or {}))
