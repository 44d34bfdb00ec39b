"""A linear 'classifier' and its exact ParM parity model, as real ONNX files in a Triton repository.

F(x) = W·flatten(x) + b. With the addition encoder, F_P(P) = W·flatten(P) + k·b equals
sum_i F(X_i) exactly, so a reconstruction through the real stack must equal the true output —
an end-to-end check of the wiring that does not depend on how well a parity model was trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from export import spec
from export.onnx_export import config_text

DEPLOYED = "linear"


def parity_name(k: int) -> str:
    return f"linear_parm_add_k{k}"


def weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((784, spec.NUM_CLASSES)).astype(np.float32) / 10,
        rng.standard_normal(spec.NUM_CLASSES).astype(np.float32),
    )


def reference(x: np.ndarray) -> np.ndarray:
    w, b = weights()
    return x.reshape(-1, 784) @ w + b


def _linear_onnx(path: Path, w: np.ndarray, b: np.ndarray) -> None:
    nodes = [
        helper.make_node("Flatten", [spec.INPUT_NAME], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "b"], [spec.OUTPUT_NAME]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(spec.INPUT_NAME, TensorProto.FLOAT, ["batch", *spec.IMAGE_SHAPE])],
        [helper.make_tensor_value_info(spec.OUTPUT_NAME, TensorProto.FLOAT, ["batch", spec.NUM_CLASSES])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def write_repository(root: Path, ks: tuple[int, ...] = (2,)) -> list[str]:
    """Write the deployed model and one parity model per k; returns the model names."""
    w, b = weights()
    names = [DEPLOYED, *(parity_name(k) for k in ks)]
    biases = [b, *(k * b for k in ks)]
    for name, bias in zip(names, biases, strict=True):
        _linear_onnx(root / name / "1" / "model.onnx", w, bias)
        (root / name / "config.pbtxt").write_text(config_text(name))
    return names
