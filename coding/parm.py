"""ParM encoders and the subtraction decoder (Kosaian et al., SOSP 2019).

The same functions run on numpy arrays (serving) and torch tensors (training), so the
parity query a model was trained on is bit-for-bit the one it is served.

Shapes: a coding group is ``(k, C, H, W)``; a batch of groups is ``(B, k, C, H, W)``.
Outputs (logits) of a group are ``(k, num_classes)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or torch.Tensor: only operations both share are used here


def _concat(parts: Sequence[Array], axis: int) -> Array:
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=axis)
    import torch  # training only; serving never reaches this line

    return torch.cat(list(parts), dim=axis)


def _area_downsample(x: Array, fh: int, fw: int) -> Array:
    """Average-pool the last two axes by (fh, fw): an exact 'area' resize for even factors."""
    *lead, h, w = x.shape
    if h % fh or w % fw:
        raise ValueError(f"image {h}x{w} is not divisible by the {fh}x{fw} downsample")
    pooled = x.reshape(*lead, h // fh, fh, w // fw, fw)
    return pooled.mean(-1).mean(-2)


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
        tiles = _area_downsample(group, 1, 2)
        return _concat([tiles[..., 0, :, :, :], tiles[..., 1, :, :, :]], axis=-1)
    if k == 4:
        tiles = _area_downsample(group, 2, 2)
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
