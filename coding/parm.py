"""ParM encoders and the subtraction decoder (Kosaian et al., SOSP 2019).

The same functions run on numpy arrays (serving) and torch tensors (training), so the parity query a model was
trained on is bit-for-bit the one it is served.

Shapes: a coding group is ``(k, *query)``; a batch of groups is ``(B, k, *query)``. The encoders take the
number of query axes (``query_ndim``, 3 for C x H x W, the default); the addition encoder takes any query
shape, the concatenation encoder any with H and W as its last two axes. Outputs (logits) of a group are
``(k, num_classes)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coding import tiling
from coding.errors import CodingError
from coding.scheme import DEPLOYED, Arrivals, Outputs, Shape, Slot, check_outputs, name_prefix

Array = Any  # numpy.ndarray or torch.Tensor: only operations both share are used here

# The concatenation encoder's grid (rows, cols) per k: side by side for k = 2, quadrants for k = 3 and 4.
CONCAT_GRIDS = {2: (1, 2), 3: (2, 2), 4: (2, 2)}


def add_encode(group: Array, query_ndim: int = 3) -> Array:
    """Addition encoder: P = sum_i X_i over the k axis (``-(query_ndim + 1)``)."""
    return group.sum(-(query_ndim + 1))


def concat_encode(group: Array, query_ndim: int = 3) -> Array:
    """Image-concatenation encoder: each query is downsampled and the k of them tiled into one input of a
    query's own size, so the parity model shares the deployed model's architecture (ParM's construction).

    k = 2: side by side, each query area-resized to H x ⌊W/2⌋ (left: X_1, right: X_2). k = 4: quadrants TL,
    TR, BL, BR, each ⌊H/2⌋ x ⌊W/2⌋. k = 3 (not in the paper, which stops at 2 and 4): the quadrants TL, TR,
    BL hold X_1..X_3 and BR holds zeros. For even H and W a tile pixel is the mean of a 2-pixel (k = 2) or
    2 x 2 (k = 3, 4) block; an odd side leaves its last row or column of the parity 0 (the layout is
    :mod:`coding.tiling`'s). Leading query axes (channels) are carried along: channel c of a tile is channel
    c of its query.
    """
    k = group.shape[-(query_ndim + 1)]
    if k not in CONCAT_GRIDS:
        raise ValueError(f"the concatenation encoder supports k in {tuple(CONCAT_GRIDS)}, got k={k}")
    return tiling.tile(group, *CONCAT_GRIDS[k], query_ndim=query_ndim)


ENCODERS = {"add": add_encode, "concat": concat_encode}


def concat_problem(k: int, shape: Shape) -> str | None:
    """Why the concatenation encoder cannot code k queries of ``shape``, or None."""
    if k not in CONCAT_GRIDS:
        return f"concat supports k in {tuple(CONCAT_GRIDS)}, got k={k}"
    problem = tiling.grid_problem(shape, *CONCAT_GRIDS[k])
    return f"concat k={k} {problem}" if problem else None


def parity_model_name(prefix: str, encoder: str, k: int) -> str:
    """The ParM parity model for one (encoder, k) of the models named ``prefix``, e.g. ``mnist_parm_add_k2``."""
    return f"{prefix}_parm_{encoder}_k{k}"


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
    (:func:`parity_model_name` of :func:`coding.scheme.name_prefix`, e.g. ``mnist_parm_add_k2`` for ``mnist_cnn``).
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
        if self.encoder == "concat" and self.k not in CONCAT_GRIDS:
            raise CodingError(f"the concatenation encoder supports k in {tuple(CONCAT_GRIDS)}, got k={self.k}")

    def rejects(self, shape: Shape) -> str | None:
        """Why queries of ``shape`` (one query, no batch axis) cannot be coded, or None: the addition encoder
        takes any shape; the concatenation encoder needs (..., H, W) with H, W at least the grid's sides."""
        return concat_problem(self.k, shape) if self.encoder == "concat" else None

    # ---- the math ---------------------------------------------------------------------------

    def encode(self, group: np.ndarray) -> np.ndarray:
        """``(k, *query)`` float32 queries -> ``(r, *query)`` parity queries."""
        if group.ndim < 1 or group.shape[0] != self.k:
            raise CodingError(f"expected a coding group of k={self.k} queries, got shape {list(group.shape)}")
        problem = self.rejects(group.shape[1:])
        if problem:
            raise CodingError(f"parm: {problem}")
        parity = ENCODERS[self.encoder](group.astype(np.float32, copy=False), group.ndim - 1)
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
        parity = self.parity_model or parity_model_name(name_prefix(served), self.encoder, self.k)
        return {DEPLOYED: served, PARITY: parity}
