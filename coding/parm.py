"""ParM encoders and the subtraction decoder (Kosaian et al., SOSP 2019).

The same functions run on numpy arrays (serving) and torch tensors (training), so the
parity query a model was trained on is bit-for-bit the one it is served.

Shapes: a coding group is ``(k, C, H, W)``; a batch of groups is ``(B, k, C, H, W)``.
Outputs (logits) of a group are ``(k, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coding import spec
from coding.errors import CodingError
from coding.scheme import DEPLOYED, Arrivals, Outputs, Shape, Slot, check_outputs

Array = Any  # numpy.ndarray or torch.Tensor: only operations both share are used here


def _concat(parts: Sequence[Array], axis: int) -> Array:
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=axis)
    import torch  # training only; serving never reaches this line

    return torch.cat(list(parts), dim=axis)


def _halve_width(x: Array) -> Array:
    """Average each pair of neighbouring columns: an exact 'area' resize to half the width. Written as
    two strided views and one add (no reduction call): the same values as a mean over pairs, and the
    encoder runs on every coding group, where each array call counts."""
    if x.shape[-1] % 2:
        raise ValueError(f"image width {x.shape[-1]} is odd: it cannot be halved")
    return (x[..., 0::2] + x[..., 1::2]) / 2


def _halve_height(x: Array) -> Array:
    """Average each pair of neighbouring rows (see :func:`_halve_width`)."""
    if x.shape[-2] % 2:
        raise ValueError(f"image height {x.shape[-2]} is odd: it cannot be halved")
    return (x[..., 0::2, :] + x[..., 1::2, :]) / 2


def add_encode(group: Array) -> Array:
    """Addition encoder: P = sum_i X_i over the k axis (axis -4)."""
    return group.sum(-4)


def concat_encode(group: Array) -> Array:
    """Image-concatenation encoder: k=2 side by side (H x W/2 tiles), k=4 in quadrants (TL, TR, BL, BR).

    The parity query has the same shape as one query, so the parity model shares the deployed
    model's architecture.
    """
    k = group.shape[-4]
    if k == 2:
        tiles = _halve_width(group)
        return _concat([tiles[..., 0, :, :, :], tiles[..., 1, :, :, :]], axis=-1)
    if k == 4:
        tiles = _halve_height(_halve_width(group))
        top = _concat([tiles[..., 0, :, :, :], tiles[..., 1, :, :, :]], axis=-1)
        bottom = _concat([tiles[..., 2, :, :, :], tiles[..., 3, :, :, :]], axis=-1)
        return _concat([top, bottom], axis=-2)
    raise ValueError(f"the concatenation encoder supports k in (2, 4), got k={k}")


ENCODERS = {"add": add_encode, "concat": concat_encode}


def parity_target(outputs: Array) -> Array:
    """What the parity model learns to output: the sum of the deployed model's k outputs."""
    return outputs.sum(-2)


def subtraction_decode(parity_output: Array, slot_outputs: Array, present: Array) -> Array:
    """Rebuild the missing output of a coding group: F(X_j) ~= F_P(P) - sum_{i != j} F(X_i).

    ``slot_outputs`` is ``(..., k, classes)`` (absent rows may hold anything), ``present`` a bool
    mask ``(..., k)`` with at least one False. Every absent slot must hold the same query: a partial
    group padded by repeating a query puts it in c slots, so F(X_j) ~= (F_P - sum of present) / c.
    """
    mask = present[..., None] * 1.0
    rest = (slot_outputs * mask).sum(-2)
    n_absent = (1.0 - mask).sum(-2)
    return (parity_output - rest) / n_absent


PARITY = "parity"  # the role of the parity model


@dataclass(frozen=True)
class ParmScheme:
    """ParM: k queries on the deployed model, one parity query on a learned parity model (r = 1).

    ``parity_model`` names the parity model on Triton; empty: the export naming
    (:func:`coding.spec.parity_model_name`, e.g. ``mnist_parm_add_k2`` for ``mnist_cnn``).
    """

    encoder: str
    k: int
    parity_model: str = ""
    name: str = "parm"
    r: int = 1

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise CodingError(f"unknown ParM encoder {self.encoder!r}; known: {sorted(ENCODERS)}")
        if self.k < 2:
            raise CodingError(f"ParM needs k >= 2, got k={self.k}")
        if self.encoder == "concat" and self.k not in (2, 4):
            raise CodingError(f"the concatenation encoder supports k in (2, 4), got k={self.k}")

    # ---- the math ---------------------------------------------------------------------------

    def encode(self, group: np.ndarray) -> np.ndarray:
        """``(k, C, H, W)`` float32 queries -> ``(r, C, H, W)`` parity queries."""
        if group.ndim < 2 or group.shape[0] != self.k:
            raise CodingError(f"expected a coding group of k={self.k} queries, got shape {list(group.shape)}")
        if self.encoder == "concat" and (group.ndim != 4 or group.shape[-1] % 2 or group.shape[-2] % 2):
            raise CodingError(f"the concatenation encoder needs (k, C, H, W) with even H, W; got {list(group.shape)}")
        parity = ENCODERS[self.encoder](group.astype(np.float32, copy=False))
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
        decoded = subtraction_decode(parity_outputs[0].astype(np.float64), slot_outputs.astype(np.float64), present)
        return decoded.astype(np.float32)

    # ---- the Scheme protocol (coding.scheme) --------------------------------------------------

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(Slot(i, DEPLOYED) for i in range(self.k))

    @property
    def coded_slots(self) -> tuple[Slot, ...]:
        return (Slot(0, PARITY),)

    systematic = True
    encodes = True

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        return self.encode(inputs)

    def recoverable(self, arrivals: Arrivals) -> frozenset[int]:
        """With the parity output in, the subtraction decoder solves one unknown: the absent slots must
        all hold one call (a padded group's repeats of one query count once)."""
        if not all(arrivals.coded) or arrivals.unknowns() != 1:
            return frozenset()
        return frozenset(arrivals.absent())

    def decode_slots(self, data_outputs: Outputs, coded_outputs: Outputs) -> tuple[list[np.ndarray], list[int]]:
        check_outputs(self, data_outputs, coded_outputs)
        parity = coded_outputs[0]
        if parity is None:
            raise CodingError("ParM cannot decode without its parity output")
        present = np.array([o is not None for o in data_outputs])
        zeros = np.zeros_like(parity)
        stacked = np.stack([zeros if o is None else o for o in data_outputs]).astype(np.float32)
        stacked[~present] = self.decode(stacked, present, parity[None])
        return list(stacked), []

    def coded_output_shape(self, index: int, data_output_shape: Shape) -> Shape:
        return data_output_shape  # the parity model learns the sum of k outputs: the same shape

    def models(self, served: str) -> dict[str, str]:
        parity = self.parity_model or spec.parity_model_name(served.removesuffix("_cnn"), self.encoder, self.k)
        return {DEPLOYED: served, PARITY: parity}
