"""Grids of downsampled queries: the layout shared by ParM's concatenation encoder and Collage-CNN's collages.

A ``rows x cols`` grid of n <= rows·cols queries, each of shape ``(..., H, W)`` (any leading axes, e.g. C),
becomes ONE array of the query's own shape. Every cell is ``th x tw`` with ``th = H // rows`` and
``tw = W // cols``; cell j (row-major: row j // cols, column j % cols) holds query j *area-resized* to
``th x tw`` — each cell pixel is the mean of the source pixels it covers, partly covered ones weighted by
their overlap (the antialiased resize; for an integer factor it is plain average pooling). Where a side does
not divide, the ``H - rows·th`` bottom rows and ``W - cols·tw`` right columns stay 0, and so do the cells
past the n-th (ParM's k = 3 leaves the bottom-right quadrant 0).

The same functions run on numpy arrays (serving) and torch tensors (training): only operations both share,
so the input a model was trained on is the one it is served.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or torch.Tensor


def grid_problem(shape: tuple[int, ...], rows: int, cols: int) -> str | None:
    """Why queries of ``shape`` cannot be tiled ``rows x cols``, or None: the grid needs the last two axes
    (H, W) and at least one pixel per cell along each."""
    if len(shape) < 2:
        return f"needs queries with H and W axes (..., H, W), got shape {list(shape)}"
    h, w = shape[-2:]
    if h < rows or w < cols:
        return f"needs H >= {rows} and W >= {cols}, got {h}x{w}"
    return None


@lru_cache(maxsize=64)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float32 weights of an area resize along one axis: row i averages the input
    interval [i n_in / n_out, (i + 1) n_in / n_out), counting partly covered pixels by their overlap."""
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):  # in integer units of 1/n_out pixel, so no interval ends past the last pixel
        lo, hi = i * n_in, (i + 1) * n_in
        for p in range(lo // n_out, (hi - 1) // n_out + 1):
            weights[i, p] = (min(hi, (p + 1) * n_out) - max(lo, p * n_out)) / n_in
    return weights.astype(np.float32)


def _matrix_like(x: Array, m: np.ndarray) -> Array:
    if isinstance(x, np.ndarray):
        return m
    import torch  # training only; serving never reaches this line

    return torch.from_numpy(m).to(device=x.device, dtype=x.dtype)


def _resize_axis(x: Array, axis: int, n_out: int) -> Array:
    """Area resize of axis -1 or -2 to ``n_out``. An integer factor f is the mean of f strided views (one add
    per view, no matrix: for f = 2, ``(x[0::2] + x[1::2]) / 2``, the committed parity models' encoding bit for
    bit); any other ratio multiplies by :func:`area_matrix`."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    if n_in % n_out == 0:
        f = n_in // n_out
        views = [x[..., i::f] if axis == -1 else x[..., i::f, :] for i in range(f)]
        total = views[0]
        for view in views[1:]:
            total = total + view
        return total / f
    m = _matrix_like(x, area_matrix(n_in, n_out))
    return x @ m.T if axis == -1 else m @ x


def resize(x: Array, th: int, tw: int) -> Array:
    """``(..., H, W)`` -> ``(..., th, tw)`` by an area resize, the width first."""
    return _resize_axis(_resize_axis(x, -1, tw), -2, th)


def cell_size(h: int, w: int, rows: int, cols: int) -> tuple[int, int]:
    return h // rows, w // cols


def _zeros(x: Array, shape: tuple[int, ...]) -> Array:
    return np.zeros(shape, dtype=x.dtype) if isinstance(x, np.ndarray) else x.new_zeros(shape)


def _cat(parts: list[Array], axis: int) -> Array:
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts, axis=axis)
    import torch

    return torch.cat(parts, dim=axis)


def _pad_bottom_right(x: Array, bottom: int, right: int) -> Array:
    if not bottom and not right:
        return x
    if isinstance(x, np.ndarray):
        return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, bottom), (0, right)])
    import torch.nn.functional as F

    return F.pad(x, (0, right, 0, bottom))


def tile(group: Array, rows: int, cols: int, query_ndim: int = 3) -> Array:
    """``(..., n, *query)`` queries -> ``(..., *query)``: the ``rows x cols`` grid of the module docstring.

    ``query_ndim`` is the number of axes of one query (3 for C, H, W), so the n axis is ``-(query_ndim + 1)``
    and any axes before it are batch axes (training tiles a batch of groups at once).
    """
    axis = group.ndim - query_ndim - 1
    lead, n, inner = group.shape[:axis], group.shape[axis], group.shape[axis + 1 : -2]
    h, w = group.shape[-2:]
    if n > rows * cols:
        raise ValueError(f"a {rows}x{cols} grid holds at most {rows * cols} queries, got {n}")
    th, tw = cell_size(h, w, rows, cols)
    cells = resize(group, th, tw)  # (..., n, *inner, th, tw)
    if n < rows * cols:
        cells = _cat([cells, _zeros(cells, (*lead, rows * cols - n, *inner, th, tw))], axis)
    grid = cells.reshape(*lead, rows, cols, *inner, th, tw)
    b, i = len(lead), len(inner)
    order = (*range(b), *range(b + 2, b + 2 + i), b, b + 2 + i, b + 1, b + 3 + i)  # -> (..., *inner, r, th, c, tw)
    grid = grid.transpose(order) if isinstance(grid, np.ndarray) else grid.permute(*order)
    body = grid.reshape(*lead, *inner, rows * th, cols * tw)
    return _pad_bottom_right(body, h - rows * th, w - cols * tw)


def cell(tiled: Array, rows: int, cols: int, j: int) -> Array:
    """Cell ``j`` of a ``(..., H, W)`` grid: ``(..., th, tw)``."""
    h, w = tiled.shape[-2:]
    th, tw = cell_size(h, w, rows, cols)
    r, c = divmod(j, cols)
    return tiled[..., r * th : (r + 1) * th, c * tw : (c + 1) * tw]


def resized(image: Array, rows: int, cols: int) -> Array:
    """What a cell of a ``rows x cols`` grid holds for ``image`` ``(..., H, W)``."""
    h, w = image.shape[-2:]
    return resize(image, *cell_size(h, w, rows, cols))
