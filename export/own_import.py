"""``python -m export import``: a user's model into the Triton repository, with what it takes recorded.

A PyTorch model is exported to ONNX (export.onnx_export: a dynamic batch axis, checked against torch); an ONNX
file is copied, its batch axis made dynamic where it is fixed (and checked by running 1 and 3 rows). Either
way ``config.pbtxt`` and ``configs/gpu.pbtxt`` are written from the ONNX file's signature, and the manifest
records the file's sha256, the input shape, the classes, the preprocessing and where the data is, so the
commands that follow (``parity``, ``collage``, ``coin``, ``evaluate``, ``route``) need only the model's name.

A PyTorch model can also be trained here first (``ImportArgs.train``: export.train's deployed-model recipe, e.g. a
profile's; how ``make models`` makes the built-in ``export.models:cnn``); its trained weights are saved beside
the model (``<name>/weights.pt``) and recorded as its checkpoint, for a parity model's warm start.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export import train, user_data, user_model
from export.manifest import RunInfo, entry_of, model_entry, update_manifest
from export.onnx_export import OPSET, onnx_providers, sha256_file, write_configs, write_model
from export.train import TrainConfig
from export.user_data import DataSpec, Preprocessing, UserData

log = logging.getLogger(__name__)
_BATCH = 256


class OnnxModel:
    """A model file in onnxruntime: ``(N, *input)`` float32 -> ``(N, *output)`` float32, run in chunks."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=onnx_providers())
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = [self.session.run(None, {self.input_name: x[i : i + _BATCH]})[0] for i in range(0, len(x), _BATCH)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0,), np.float32)


def model_path(repository: Path, name: str) -> Path:
    return repository / name / "1" / "model.onnx"


@dataclass(frozen=True)
class Served:
    """An imported model as the manifest has it: what later commands build on."""

    name: str
    repository: Path
    shape: tuple[int, ...]
    classes: int
    preprocessing: Preprocessing
    data: DataSpec | None
    factory: str | None
    checkpoint: Path | None = None  # the one imported with the factory

    @classmethod
    def of(cls, repository: Path, name: str) -> Served:
        entry = entry_of(repository, name)
        user = entry.get("user")
        if user is None:
            raise ValueError(f"{name} was not imported with `python -m export import` (no input shape recorded)")
        data = DataSpec(**user["data"]) if user.get("data") else None
        prep = Preprocessing.from_dict(user["preprocessing"])
        shape = tuple(user["input_shape"])
        checkpoint = entry["onnx"].get("checkpoint")
        return cls(
            name,
            repository,
            shape,
            user["classes"],
            prep,
            data,
            user.get("factory"),
            Path(checkpoint) if checkpoint else None,
        )

    def load_data(self, path: str | None = None) -> UserData:
        """The data recorded at import (or at ``path``, split the same way), preprocessed as recorded."""
        if path is None and self.data is None:
            raise ValueError(f"{self.name} was imported without --data: pass --data")
        spec = self.data or DataSpec(str(path))
        if path is not None:
            spec = spec.at(str(path))
        data = user_data.load(spec, self.preprocessing)
        check_data(data, self.shape, self.classes)
        return data

    def model(self) -> OnnxModel:
        return OnnxModel(model_path(self.repository, self.name))


def torch_data(data: UserData, device: torch.device) -> train.Data:
    """The splits as export.train's tensors (float inputs on ``device``: train.pixels passes them through)."""

    def split(s: user_data.Split) -> train.Split:
        return train.Split(torch.from_numpy(s.x).to(device), torch.from_numpy(s.y).to(device))

    return train.Data(split(data.train), split(data.val if len(data.val) else data.train), split(data.test))


def check_data(data: UserData, shape: tuple[int, ...], classes: int) -> None:
    if data.shape != tuple(shape):
        raise user_model.ModelError(
            f"the data's images are {list(data.shape)} (C, H, W); the model takes {list(shape)}"
        )
    if len(data.classes) > classes:
        raise user_model.ModelError(f"the data has {len(data.classes)} classes; the model answers {classes} scores")


def _check_batch(shape: tuple[int, ...], data: UserData | None) -> np.ndarray:
    if data is not None and len(data.test) >= 2:
        return data.test.x[:8]
    return np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)


def copy_onnx(source: Path, name: str, out: Path) -> dict:
    """Copy a user's ONNX file into the repository, its batch axis dynamic, and write its configs."""
    proto = onnx.load(str(source))
    inp, _ = user_model.check_onnx_classifier(proto)
    target = model_path(out, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(inp.dims[0], int):
        log.info("%s: batch axis fixed at %d; making it dynamic", source, inp.dims[0])
        onnx.save(user_model.with_dynamic_batch(proto), str(target))
    else:
        shutil.copyfile(source, target)
    runner = OnnxModel(target)
    user_model.check_batches(runner, tuple(int(d) for d in inp.dims[1:]))
    write_configs(target.parent.parent, name)
    return {
        "path": str(target.relative_to(out)),
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=OPSET),
        "source": str(source),
        "source_sha256": sha256_file(source),
    }


def accuracy(model: OnnxModel, split: user_data.Split) -> float:
    return float((model(split.x).argmax(-1) == split.y).mean()) if len(split) else float("nan")


def user_fields(
    shape: tuple[int, ...], classes: int, prep: Preprocessing, data: UserData | None, factory: str | None = None
) -> dict:
    """What the manifest keeps of a user's model for the commands that follow."""
    return {
        "input_shape": list(shape),
        "classes": classes,
        "class_names": list(data.classes) if data else None,
        "preprocessing": prep.as_dict(),
        "data": data.spec.as_dict() if data else None,
        "splits": {name: len(getattr(data, name)) for name in ("train", "val", "test")} if data else None,
        "given_splits": data.given_splits if data else None,
        "factory": factory,
    }


@dataclass(frozen=True)
class ImportArgs:
    name: str
    out: Path
    prep: Preprocessing
    factory: str | None = None
    checkpoint: Path | None = None
    onnx_file: Path | None = None
    input_shape: tuple[int, ...] | None = None
    data: DataSpec | None = None
    train: TrainConfig | None = None  # train the factory's model (from --checkpoint, if given) on the data first
    device: torch.device = torch.device("cpu")


def _import_onnx(args: ImportArgs, data: UserData | None) -> tuple[dict, tuple[int, ...], int]:
    assert args.onnx_file is not None
    inp, out = user_model.check_onnx_classifier(onnx.load(str(args.onnx_file)))
    shape, classes = tuple(int(d) for d in inp.dims[1:]), int(out.dims[1])
    if data is not None:
        check_data(data, shape, classes)  # before anything is written
    return {**copy_onnx(args.onnx_file, args.name, args.out), "onnx": str(args.onnx_file)}, shape, classes


def _import_torch(args: ImportArgs, data: UserData | None) -> tuple[dict, tuple[int, ...], int]:
    assert args.factory is not None
    shape = args.input_shape or (data.shape if data else ())
    if not shape:
        raise user_model.ModelError("a PyTorch model needs --input-shape C,H,W or --data to read it from")
    torch.manual_seed(args.train.seed if args.train else 0)
    model = user_model.load_torch(args.factory, args.checkpoint)
    classes = user_model.check_torch(model, shape)
    if data is not None:
        check_data(data, shape, classes)  # before anything is written
    checkpoint, trained = args.checkpoint, None
    if args.train is not None:
        if data is None:
            raise user_model.ModelError("training the model needs --data")
        trained = train.train_deployed(torch_data(data, args.device), args.train, args.name, model)
        model, checkpoint = trained.model, args.out / args.name / "weights.pt"
    facts = write_model(model, args.name, args.out, _check_batch(shape, data), output_dims=(classes,))
    facts["factory"] = args.factory
    if trained is not None and checkpoint is not None:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, checkpoint)
        facts["training"] = {
            "config": args.train.as_dict() if args.train else {},
            "epochs": trained.epochs,
            "best_epoch": trained.best_epoch,
            "val_metric": trained.val_metric,
            "seconds": round(trained.seconds, 1),
        }
    if checkpoint:
        facts |= {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint)}
    return facts, shape, classes


def import_model(args: ImportArgs, run: RunInfo) -> dict:
    """Import one model; return its manifest entry (also merged into the manifest)."""
    data = user_data.load(args.data, args.prep) if args.data else None
    if args.onnx_file is not None and args.train is not None:
        raise user_model.ModelError("an ONNX file is imported as it is: training needs --model")
    facts, shape, classes = (_import_onnx if args.onnx_file is not None else _import_torch)(args, data)
    training = facts.pop("training", {})
    metrics = {"test_accuracy": accuracy(OnnxModel(model_path(args.out, args.name)), data.test)} if data else {}
    entry = model_entry(
        name=args.name,
        dataset=Path(args.data.path).name if args.data else "",
        role="deployed",
        encoder=None,
        k=None,
        run=run,
        onnx_facts=facts,
        training=training,
        metrics=metrics,
    )
    entry["user"] = user_fields(shape, classes, args.prep, data, args.factory)
    update_manifest(args.out, [entry])
    return entry
