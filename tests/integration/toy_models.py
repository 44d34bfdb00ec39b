"""Exact linear models for the toy schemes of :mod:`tests.toy_schemes`, as ONNX files in a Triton repository.

The tile model runs the deployed linear model on every channel of its input; the ensemble's members
are two other linear models and its coded model their sum, so every reconstruction is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from export import spec
from export.onnx_export import config_text
from tests.toy_schemes import ENSEMBLE, MEMBERS, tile_model_name


def member_weights(member: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(10 + member)
    return (
        rng.standard_normal((784, spec.NUM_CLASSES)).astype(np.float32) / 10,
        rng.standard_normal(spec.NUM_CLASSES).astype(np.float32),
    )


def member_reference(member: int, x: np.ndarray) -> np.ndarray:
    w, b = member_weights(member)
    return x.reshape(-1, 784) @ w + b


def _onnx(path: Path, tiles: int, w: np.ndarray, b: np.ndarray) -> None:
    """``x @ W + b`` per 28x28 image; with ``tiles`` > 0 the input is [B, tiles, 28, 28] and the output
    [B, tiles, classes] (one answer per channel), else [B, 1, 28, 28] -> [B, classes]."""
    rows = [-1, tiles, 784] if tiles else [-1, 784]
    nodes = [
        helper.make_node("Reshape", [spec.INPUT_NAME, "rows"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["wx"]),
        helper.make_node("Add", ["wx", "b"], [spec.OUTPUT_NAME]),
    ]
    in_shape = ["batch", tiles, 28, 28] if tiles else ["batch", *spec.IMAGE_SHAPE]
    out_shape = ["batch", tiles, spec.NUM_CLASSES] if tiles else ["batch", spec.NUM_CLASSES]
    graph = helper.make_graph(
        nodes,
        path.parent.parent.name,
        [helper.make_tensor_value_info(spec.INPUT_NAME, TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(spec.OUTPUT_NAME, TensorProto.FLOAT, out_shape)],
        initializer=[
            numpy_helper.from_array(np.array(rows, dtype=np.int64), "rows"),
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def write_repository(root: Path, deployed_weights: tuple[np.ndarray, np.ndarray], k: int = 2) -> list[str]:
    """The tile model for ``deployed_weights`` (the linear deployed model's) and the ensemble's
    two members and coded model; returns their names."""
    w, b = deployed_weights
    tiles = tile_model_name(k)
    _onnx(root / tiles / "1" / "model.onnx", k, w, b)
    (root / tiles / "config.pbtxt").write_text(
        config_text(tiles, input_dims=(k, 28, 28), output_dims=(k, spec.NUM_CLASSES))
    )
    members = [member_weights(i) for i in range(len(MEMBERS))]
    coded = (members[0][0] + members[1][0], members[0][1] + members[1][1])
    names = [f"{ENSEMBLE}_m0", f"{ENSEMBLE}_m1", f"{ENSEMBLE}_coded"]
    for name, (wi, bi) in zip(names, [*members, coded], strict=True):
        _onnx(root / name / "1" / "model.onnx", 0, wi, bi)
        (root / name / "config.pbtxt").write_text(config_text(name))
    return [tiles, *names]
