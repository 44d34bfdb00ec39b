"""What a user brings: a PyTorch model (an import path ``package.module:factory`` or ``path/to/file.py:factory``,
and a checkpoint), or an ONNX file; and the checks that it is an image classifier codedserve can serve.

A servable model takes a batch of images ``(B, C, H, W)`` float32 and answers a vector of scores per row
``(B, classes)``, classes >= 2; its batch axis is dynamic. Each check raises :class:`ModelError` naming what
does not fit.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.onnx_export import TensorSignature, onnx_io


class ModelError(ValueError):
    """A model codedserve cannot serve as given; the message says what does not fit."""


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``package.module:factory`` (importable from here) or ``path/to/model.py:factory``."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise ModelError(f"--model {spec!r}: expected package.module:factory or path/to/model.py:factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelError(f"--model {spec!r}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(path.stem, module)
        module_spec.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")  # the working directory, as `python -m` has it
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelError(f"--model {spec!r}: cannot import {target}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"--model {spec!r}: {target} has no callable {attr!r}")
    return factory


def _state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, nn.Module):  # pragma: no cover - weights_only refuses whole modules
        state = state.state_dict()
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{checkpoint}: not a state_dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel's prefix


def load_checkpoint(model: nn.Module, checkpoint: Path) -> nn.Module:
    """Load ``checkpoint`` into ``model``; a key or shape that does not match is named."""
    state, own = _state_dict(checkpoint), model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} (checkpoint {list(state[k].shape)}, model {list(own[k].shape)})"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else ""]
        parts.append(f"shapes differ: {_few(shapes)}" if shapes else "")
        raise ModelError(f"{checkpoint} does not fit the model: " + "; ".join(p for p in parts if p))
    model.load_state_dict(state)
    return model.eval()


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def load_torch(factory: str, checkpoint: Path | None) -> nn.Module:
    model = load_factory(factory)()
    if not isinstance(model, nn.Module):
        raise ModelError(f"--model {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    return load_checkpoint(model, checkpoint) if checkpoint else model.eval()


def check_torch(model: nn.Module, shape: tuple[int, ...]) -> int:
    """The number of classes of ``model`` on inputs of ``shape`` (C, H, W); raise if it is no classifier."""
    if len(shape) != 3:
        raise ModelError(f"input shape {list(shape)}: codedserve serves images, C x H x W (3 numbers)")
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *shape))
    except Exception as exc:
        raise ModelError(f"the model fails on a batch of 2 inputs of shape {list(shape)}: {exc}") from exc
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"the model returns {type(out).__name__}; it must return one tensor of scores (B, classes)")
    return check_output(tuple(out.shape), 2)


def check_output(shape: tuple, batch: int | None = None) -> int:
    """``(B, classes)`` -> classes; anything else is refused with its shape."""
    if len(shape) != 2 or (batch is not None and shape[0] != batch):
        raise ModelError(
            f"the model's output has shape {list(shape)}; it must be a vector of scores per row, (batch, classes)"
        )
    if isinstance(shape[1], int) and shape[1] < 2:
        raise ModelError(f"the model answers {shape[1]} class; a classifier needs at least 2")
    return int(shape[1]) if isinstance(shape[1], int) else -1


def check_onnx_classifier(proto: onnx.ModelProto) -> tuple[TensorSignature, TensorSignature]:
    """The input and output of a servable ONNX image classifier; :class:`ModelError` naming what does not fit."""
    inputs, outputs = onnx_io(proto)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"the ONNX model has {len(inputs)} inputs and {len(outputs)} outputs; codedserve serves "
            "one image input and one output of scores"
        )
    (inp,), (out,) = inputs, outputs
    if len(inp.dims) != 4 or not all(isinstance(d, int) and d > 0 for d in inp.dims[1:]):
        raise ModelError(
            f"the ONNX input {inp.name!r} has dims {list(inp.dims)}; it must be a 4-D image "
            "batch (batch, C, H, W) with fixed C, H, W"
        )
    if inp.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(
            f"the ONNX input {inp.name!r} is {onnx.TensorProto.DataType.Name(inp.elem_type)}; "
            "codedserve codes float32 inputs"
        )
    check_output(out.dims)
    if not isinstance(out.dims[1], int):
        raise ModelError(f"the ONNX output {out.name!r} has dims {list(out.dims)}: its classes must be fixed")
    return inp, out


def with_dynamic_batch(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its input's and output's first axis made symbolic ("batch"), other dims kept."""
    weights = {t.name for t in proto.graph.initializer}
    for value in (*(v for v in proto.graph.input if v.name not in weights), *proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    return proto


def check_batches(session_run: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]) -> None:
    """Run 1 and 3 rows; the first row's scores must agree (a batch axis that really is dynamic)."""
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    try:
        one, three = session_run(x[:1]), session_run(x)
    except Exception as exc:
        raise ModelError(
            f"the model cannot run batches of 3 ({exc}); re-export it from torch with "
            "dynamic_axes={input: {0: 'batch'}, output: {0: 'batch'}}"
        ) from exc
    if three.shape[0] != 3 or not np.allclose(one[0], three[0], rtol=1e-4, atol=1e-4):
        raise ModelError("the model's answer to a row depends on the batch it is in; codedserve batches queries")
