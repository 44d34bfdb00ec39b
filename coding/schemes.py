"""The registry of coding schemes: one object per scheme that encodes a group and decodes a loss.

The encoder and decoder services are thin shells over :func:`get_scheme`; the frontend only
knows a scheme's shape (k, r, whether it needs a parity model), never its math.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coding import parm
from coding.errors import CodingError


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
                f"expected parity outputs of shape ({self.r}, {slot_outputs.shape[1]}), got {list(parity_outputs.shape)}"
            )
        decoded = parm.subtraction_decode(parity_outputs[0].astype(np.float64), slot_outputs.astype(np.float64), present)
        return decoded.astype(np.float32)


def get_scheme(name: str, k: int, params: Mapping[str, str] | None = None) -> ParmScheme:
    """Build a scheme by name; raises :class:`CodingError` naming what is wrong."""
    params = dict(params or {})
    if name == "parm":
        return ParmScheme(encoder=params.get("encoder", "add"), k=k)
    raise CodingError(f"unknown coding scheme {name!r}; known: ['parm']")
