"""Collage-CNN (Narra et al., 2019): s x s queries tiled into one collage; a collage model classifies every cell.

The encoder is shared by training (torch) and serving (numpy): each query is resized to a ``t x t`` tile,
``t = H // s`` (14 px for s = 2, 9 px for s = 3 on 28 x 28 data), with an exact *area* resize — each tile
pixel is the mean of the source pixels it covers, fractions weighted, which is the antialiased resize
(for s = 2 it is 2 x 2 average pooling). Tiles go row-major (cell j at row j // s, column j % s) into one
collage of the query's own size; the ``H - s t`` pixels left over at the bottom and right (1 px for s = 3)
stay 0. So a collage is one request of a query's own size covering s² queries: the extra load is
1/s² requests (25% for s = 2, 11% for s = 3); its compute is the collage model's (docs/collage.md).

A partial group (sealed by the fill timeout) fills its empty cells by repeating its own queries, as every
group does (frontend.groups), so the collage is always full and cell j always holds data slot j: the
decoder reads a missing query's answer off its own cell's row, and never needs the partners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from coding.errors import CodingError
from coding.scheme import DEPLOYED, Arrivals, Outputs, Shape, Slot, check_outputs

Array = Any  # numpy.ndarray or torch.Tensor
COLLAGE = "collage"  # the role of the collage model
SIDES = (2, 3)


@lru_cache(maxsize=16)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32 weights of an area resize along one axis: row i averages the input
    interval [i n_in / n_out, (i + 1) n_in / n_out), counting partly covered pixels by their overlap."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for p in range(math.floor(lo), math.ceil(hi)):
            weights[i, p] = min(hi, p + 1) - max(lo, p)
    return (weights / scale).astype(np.float32)


def tile_side(size: int, s: int) -> int:
    return size // s


def _matrix_like(x: Array, m: np.ndarray) -> Array:
    if isinstance(x, np.ndarray):
        return m
    import torch  # training only; serving never reaches this line

    return torch.from_numpy(m).to(device=x.device, dtype=x.dtype)


def tile(group: Array, s: int) -> Array:
    """``(..., s², C, H, W)`` queries -> ``(..., C, H, W)`` collages (numpy or torch alike)."""
    *lead, cells, c, h, w = group.shape
    if cells != s * s:
        raise CodingError(f"a {s}x{s} collage takes {s * s} queries, got {cells}")
    th, tw = tile_side(h, s), tile_side(w, s)
    rows, cols = _matrix_like(group, area_matrix(h, th)), _matrix_like(group, area_matrix(w, tw))
    tiles = rows @ group @ cols.T  # (..., s², C, th, tw)
    n = len(lead)
    order = (*range(n), n + 2, n, n + 3, n + 1, n + 4)  # (..., row, col, C, th, tw) -> (..., C, row, th, col, tw)
    grid = tiles.reshape(*lead, s, s, c, th, tw)
    grid = grid.transpose(order) if isinstance(grid, np.ndarray) else grid.permute(*order)
    body = grid.reshape(*lead, c, s * th, s * tw)
    if (s * th, s * tw) == (h, w):
        return body
    if isinstance(body, np.ndarray):
        pad = [(0, 0)] * (body.ndim - 2) + [(0, h - s * th), (0, w - s * tw)]
        return np.pad(body, pad)
    import torch.nn.functional as F

    return F.pad(body, (0, w - s * tw, 0, h - s * th))


def cell(collage: Array, s: int, j: int) -> Array:
    """The tile of cell ``j`` in a ``(..., C, H, W)`` collage: ``(..., C, t, t)``."""
    h, w = collage.shape[-2:]
    th, tw = tile_side(h, s), tile_side(w, s)
    r, c = divmod(j, s)
    return collage[..., r * th : (r + 1) * th, c * tw : (c + 1) * tw]


def resized(image: Array, s: int) -> Array:
    """What cell j of a collage holds for ``image`` (``(..., C, H, W)``): its area resize to a tile."""
    h, w = image.shape[-2:]
    rows = _matrix_like(image, area_matrix(h, tile_side(h, s)))
    cols = _matrix_like(image, area_matrix(w, tile_side(w, s)))
    return rows @ image @ cols.T


def collage_model_name(dataset: str, s: int) -> str:
    """The collage model of one (dataset, s), e.g. ``mnist_collage_s2``."""
    return f"{dataset}_collage_s{s}"


@dataclass(frozen=True)
class CollageScheme:
    """s² queries on the deployed model plus one collage of them on the collage model (output ``(s², classes)``)."""

    s: int
    collage_model: str = ""
    name: str = "collage"

    def __post_init__(self) -> None:
        if self.s not in SIDES:
            raise CodingError(f"collage supports s in {SIDES}, got s={self.s}")

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(Slot(i, DEPLOYED) for i in range(self.s * self.s))

    @property
    def coded_slots(self) -> tuple[Slot, ...]:
        return (Slot(0, COLLAGE),)

    systematic = True
    encodes = True

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        if inputs.ndim != 4 or len(inputs) != self.s * self.s:
            raise CodingError(f"expected {self.s * self.s} queries (N, C, H, W), got {list(inputs.shape)}")
        return tile(inputs.astype(np.float32, copy=False), self.s)[None].astype(np.float32, copy=False)

    def recoverable(self, arrivals: Arrivals) -> frozenset[int]:
        """The collage output alone rebuilds every cell: the partners are not needed."""
        return frozenset(arrivals.absent()) if all(arrivals.coded) else frozenset()

    def decode_slots(self, data_outputs: Outputs, coded_outputs: Outputs) -> tuple[list[np.ndarray], list[int]]:
        check_outputs(self, data_outputs, coded_outputs)
        cells = coded_outputs[0]
        if cells is None:
            raise CodingError("collage cannot decode without the collage output")
        if len(cells) != self.s * self.s:
            raise CodingError(f"expected a collage output of {self.s * self.s} cells, got shape {list(cells.shape)}")
        return [o if o is not None else np.asarray(cells[j], dtype=np.float32) for j, o in enumerate(data_outputs)], []

    def coded_output_shape(self, index: int, data_output_shape: Shape) -> Shape:
        return (self.s * self.s, *data_output_shape)

    def models(self, served: str) -> dict[str, str]:
        collage = self.collage_model or collage_model_name(served.removesuffix("_cnn"), self.s)
        return {DEPLOYED: served, COLLAGE: collage}
