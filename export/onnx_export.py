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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
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
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
    types: tuple[str, str] = ("TYPE_FP32", "TYPE_FP32"),
) -> str:
    """Triton ``config.pbtxt`` text for one model; ``kind=None`` lets Triton place it (CPU-safe).
    Dims exclude the batch axis (a collage model, say, answers ``(cells, classes)``); ``types`` are the
    input's and the output's Triton data types. :func:`config_from_onnx` fills every field from a file."""
    kind_line = f"\n    kind: {kind}" if kind else ""
    dims = ", ".join(str(d) for d in input_dims)
    out_dims = ", ".join(str(d) for d in output_dims)
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {MAX_BATCH_SIZE}
input [
  {{
    name: "{input_name}"
    data_type: {types[0]}
    dims: [ {dims} ]
  }}
]
output [
  {{
    name: "{output_name}"
    data_type: {types[1]}
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
    inp, out = (sigs[0] for sigs in onnx_io(onnx_path))
    dims = out.dims[1:] if all(isinstance(d, int) for d in out.dims[1:]) else _run_output_dims(onnx_path, inp)
    if dims != tuple(output_dims):
        raise ValueError(f"{name}: the ONNX output has dims {list(dims)} past the batch axis, expected {output_dims}")
    write_configs(model_dir, name)
    return {
        "path": str(onnx_path.relative_to(repository)),
        "sha256": sha256_file(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "opset": OPSET,
        "ort_max_abs_diff": max_diff,
    }


# ONNX element types -> Triton data types (the ones a classifier's tensors may have)
TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
}


@dataclass(frozen=True)
class TensorSignature:
    """One graph input or output: its name, dims (batch axis first; a str where symbolic), ONNX element type."""

    name: str
    dims: tuple[int | str, ...]
    elem_type: int

    @property
    def triton_type(self) -> str:
        if self.elem_type not in TRITON_TYPES:
            raise ValueError(f"{self.name}: ONNX type {onnx.TensorProto.DataType.Name(self.elem_type)} has no entry")
        return TRITON_TYPES[self.elem_type]


def _signature(value: onnx.ValueInfoProto) -> TensorSignature:
    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
    return TensorSignature(value.name, dims, tensor.elem_type)


def onnx_io(model: onnx.ModelProto | Path) -> tuple[list[TensorSignature], list[TensorSignature]]:
    """The graph's inputs (initializers left out) and outputs, as the file declares them."""
    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, Path) else model
    weights = {t.name for t in proto.graph.initializer}
    inputs = [_signature(v) for v in proto.graph.input if v.name not in weights]
    return inputs, [_signature(v) for v in proto.graph.output]


def _run_output_dims(path: Path, inp: TensorSignature) -> tuple[int, ...]:
    """The output's dims past the batch axis, from running one zero input through onnxruntime."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.zeros((1, *(int(d) for d in inp.dims[1:])), dtype=onnx.helper.tensor_dtype_to_np_dtype(inp.elem_type))
    return tuple(session.run(None, {inp.name: x})[0].shape[1:])


def config_from_onnx(path: Path, name: str, kind: str | None = None) -> str:
    """``config.pbtxt`` text read off the ONNX file: its one input's and one output's names, types and dims
    (the first, batch axis, must be symbolic: Triton batches on it)."""
    inputs, outputs = onnx_io(path)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{path}: {len(inputs)} inputs and {len(outputs)} outputs; a config needs one of each")
    (inp,), (out,) = inputs, outputs
    if not inp.dims or isinstance(inp.dims[0], int) or not all(isinstance(d, int) for d in inp.dims[1:]):
        raise ValueError(f"{path}: {inp.name} has dims {list(inp.dims)}; need a symbolic batch axis, then fixed dims")
    if not out.dims or isinstance(out.dims[0], int):
        raise ValueError(f"{path}: {out.name} has dims {list(out.dims)}; need a symbolic batch axis")
    if not all(isinstance(d, int) for d in out.dims[1:]):  # left symbolic by the exporter (after a Reshape)
        out = TensorSignature(out.name, ("batch", *_run_output_dims(path, inp)), out.elem_type)
    return config_text(
        name,
        kind,
        tuple(int(d) for d in inp.dims[1:]),
        tuple(int(d) for d in out.dims[1:]),
        inp.name,
        out.name,
        (inp.triton_type, out.triton_type),
    )


def write_configs(model_dir: Path, name: str) -> None:
    """``config.pbtxt`` (CPU-safe) and ``configs/gpu.pbtxt`` (KIND_GPU) for ``<model_dir>/1/model.onnx``."""
    onnx_path = model_dir / "1" / "model.onnx"
    (model_dir / "config.pbtxt").write_text(config_from_onnx(onnx_path, name))
    (model_dir / "configs").mkdir(exist_ok=True)
    gpu_config = config_from_onnx(onnx_path, name, kind="KIND_GPU")
    (model_dir / "configs" / f"{GPU_CONFIG_NAME}.pbtxt").write_text(gpu_config)
