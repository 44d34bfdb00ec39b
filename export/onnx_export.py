"""ONNX export and Triton model-repository entries (``<repo>/<name>/1/model.onnx`` + ``config.pbtxt``).

Follows Triton's ``python_backend/examples/preprocessing/onnx_exporter.py``: explicit tensor names from
``export.spec``, a dynamic batch axis, a pinned opset, and an onnxruntime-vs-torch check of every file written.
``config.pbtxt`` is CPU-safe (an instance group with no kind: CPU locally, GPU on a GPU node);
``configs/gpu.pbtxt`` pins KIND_GPU and is picked with ``tritonserver --model-config-name=gpu``.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export.spec import IMAGE_SHAPE, INPUT_NAME, MAX_BATCH_SIZE, NUM_CLASSES, OUTPUT_NAME

OPSET = 17
ATOL = 1e-4
GPU_CONFIG_NAME = "gpu"


def _cpu_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy on the CPU in the default memory format (training may use channels_last or a GPU)."""
    return copy.deepcopy(model).to(device="cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...] = IMAGE_SHAPE) -> None:
    """Write ``model`` (a CPU copy in eval mode) as ONNX with a dynamic batch axis on input and output;
    ``input_shape`` is one input's, batch axis excluded."""
    cpu_model = _cpu_copy(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # dynamo=False: the TorchScript exporter. It is deprecated in favour of dynamo, which needs onnxscript (not
        # in our env); both torch 2.11 (GPU node) and 2.13 (here) still ship it, and check_onnx guards its output.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            cpu_model,
            (torch.zeros(2, *input_shape),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def onnx_providers() -> list[str]:
    """CUDA first where onnxruntime-gpu is installed (``pip install .[gpu]`` in place of onnxruntime), else the
    CPU alone: the same choice the local Triton backend makes (triton_local/backend/onnxruntime/model.py)."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def check_onnx(model: nn.Module, path: Path, batch: np.ndarray) -> float:
    """Run ``batch`` through onnxruntime and torch; assert they agree within ``ATOL``; return the max difference."""
    session = ort.InferenceSession(str(path), providers=onnx_providers())
    (ort_out,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch.astype(np.float32)})
    cpu_model = _cpu_copy(model)
    with torch.no_grad():
        torch_out = cpu_model(torch.from_numpy(batch.astype(np.float32))).numpy()
    np.testing.assert_allclose(ort_out, torch_out, atol=ATOL, rtol=1e-4, err_msg=f"onnxruntime disagrees on {path}")
    return float(np.abs(ort_out - torch_out).max())


def config_text(
    name: str,
    kind: str | None = None,
    input_dims: tuple[int, ...] = IMAGE_SHAPE,
    output_dims: tuple[int, ...] = (NUM_CLASSES,),
) -> str:
    """Triton ``config.pbtxt`` text for one model; ``kind=None`` lets Triton place it (CPU-safe).
    Dims exclude the batch axis (a collage model, say, answers ``(cells, classes)``)."""
    kind_line = f"\n    kind: {kind}" if kind else ""
    dims = ", ".join(str(d) for d in input_dims)
    out_dims = ", ".join(str(d) for d in output_dims)
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {out_dims} ]
  }}
]
dynamic_batching {{ }}
instance_group [
  {{
    count: 1{kind_line}
  }}
]
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
"""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(
    model: nn.Module,
    name: str,
    repository: Path,
    check_batch: np.ndarray,
    output_dims: tuple[int, ...] = (NUM_CLASSES,),
) -> dict:
    """Export ``model`` as ``<repository>/<name>/1/model.onnx`` with its configs; return the file's facts.
    The input's shape is ``check_batch``'s (batch axis excluded)."""
    model_dir = repository / name
    onnx_path = model_dir / "1" / "model.onnx"
    input_dims = tuple(check_batch.shape[1:])
    export_onnx(model, onnx_path, input_dims)
    max_diff = check_onnx(model, onnx_path, check_batch)
    (model_dir / "config.pbtxt").write_text(config_text(name, input_dims=input_dims, output_dims=output_dims))
    (model_dir / "configs").mkdir(exist_ok=True)
    gpu_config = config_text(name, kind="KIND_GPU", input_dims=input_dims, output_dims=output_dims)
    (model_dir / "configs" / f"{GPU_CONFIG_NAME}.pbtxt").write_text(gpu_config)
    return {
        "path": str(onnx_path.relative_to(repository)),
        "sha256": sha256_file(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "opset": OPSET,
        "ort_max_abs_diff": max_diff,
    }
