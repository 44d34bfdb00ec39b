"""Collage-CNN (Narra et al., 2019): s x s queries tiled into one collage; a collage model classifies every cell.

The encoder is shared by training (torch) and serving (numpy) and is :mod:`coding.tiling`'s grid: each query
of shape ``(..., H, W)`` is area-resized to a ``th x tw`` cell, ``th = H // s`` and ``tw = W // s`` (14 px for
s = 2, 9 px for s = 3, 7 px for s = 4 on 28 x 28 data; 16, 10, 8 px on 32 x 32) — each cell pixel is the mean
of the source pixels it covers, fractions weighted, the antialiased resize (for s = 2 on an even side, 2 x 2
average pooling). Cells go row-major (cell j at row j // s, column j % s) into one collage of the query's own
shape; the ``H - s th`` rows at the bottom and ``W - s tw`` columns at the right (1 px for s = 3 on 28 px) stay
0. So a collage is one request of a query's own size covering s² queries: the extra load is 1/s² requests
(25% for s = 2, 11% for s = 3, 6% for s = 4); its compute is the collage model's, whose output is s² score
vectors, row j for cell j.

A partial group (sealed by the fill timeout) fills its empty cells by repeating its own queries, as every
group does (frontend.core.groups), so the collage is always full and cell j always holds data slot j: the
decoder reads a missing query's answer off its own cell's row, and never needs the partners.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coding import tiling
from coding.errors import CodingError
from coding.scheme import DEPLOYED, Arrivals, Outputs, Shape, Slot, check_outputs, name_prefix
from coding.tiling import area_matrix as area_matrix  # re-exported: export/ and the tests resize with it

Array = Any  # numpy.ndarray or torch.Tensor
COLLAGE = "collage"  # the role of the collage model
SIDES = (2, 3, 4)


def tile_side(size: int, s: int) -> int:
    """A cell's side along an axis of ``size`` pixels."""
    return size // s


def problem(s: int, shape: Shape) -> str | None:
    """Why queries of ``shape`` cannot make an s x s collage, or None."""
    if s not in SIDES:
        return f"collage supports s in {SIDES}, got s={s}"
    grid = tiling.grid_problem(shape, s, s)
    return f"collage s={s} {grid}" if grid else None


def tile(group: Array, s: int) -> Array:
    """``(..., s², C, H, W)`` queries -> ``(..., C, H, W)`` collages (numpy or torch alike)."""
    cells = group.shape[-4]
    if cells != s * s:
        raise CodingError(f"a {s}x{s} collage takes {s * s} queries, got {cells}")
    return tiling.tile(group, s, s)


def cell(collage: Array, s: int, j: int) -> Array:
    """The tile of cell ``j`` in a ``(..., C, H, W)`` collage: ``(..., C, th, tw)``."""
    return tiling.cell(collage, s, s, j)


def resized(image: Array, s: int) -> Array:
    """What cell j of a collage holds for ``image`` (``(..., C, H, W)``): its area resize to a cell."""
    return tiling.resized(image, s, s)


def collage_model_name(prefix: str, s: int) -> str:
    """The collage model for side s of the models named ``prefix``, e.g. ``mnist_collage_s2``."""
    return f"{prefix}_collage_s{s}"


@dataclass(frozen=True)
class CollageScheme:
    """s² queries on the deployed model plus one collage of them on the collage model (output ``(s², classes)``)."""

    s: int
    collage_model: str = ""
    name: str = "collage"

    def __post_init__(self) -> None:
        if self.s not in SIDES:
            raise CodingError(f"collage supports s in {SIDES}, got s={self.s}")

    def rejects(self, shape: Shape) -> str | None:
        """Why queries of ``shape`` (one query, no batch axis) cannot be coded, or None: an s x s collage needs
        (C, H, W) with H, W >= s."""
        if len(shape) != 3:
            return f"collage s={self.s} needs queries of shape (C, H, W), got {list(shape)}"
        return problem(self.s, shape)

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(Slot(i, DEPLOYED) for i in range(self.s * self.s))

    @property
    def coded_slots(self) -> tuple[Slot, ...]:
        return (Slot(0, COLLAGE),)

    systematic = True
    encodes = True

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        if inputs.ndim < 1 or len(inputs) != self.s * self.s:
            raise CodingError(f"expected {self.s * self.s} queries (N, C, H, W), got {list(inputs.shape)}")
        why = self.rejects(inputs.shape[1:])
        if why:
            raise CodingError(why)
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
        collage = self.collage_model or collage_model_name(name_prefix(served), self.s)
        return {DEPLOYED: served, COLLAGE: collage}
