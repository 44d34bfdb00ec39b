"""``model_repository/manifest.json``: what made each model, on what, how long, and how good it is."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

MANIFEST_NAME = "manifest.json"


def cpu_name() -> str:
    """e.g. "AMD EPYC, 2 cores" (from /proc/cpuinfo where there is one)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return f"{model or platform.processor() or 'cpu'}, {os.cpu_count()} cores"


@dataclass(frozen=True)
class RunInfo:
    """Facts shared by every model one training run (``train_all``, ``collage``) makes."""

    command: str
    profile: str
    device: str  # "cpu" or "cuda"
    device_name: str
    date: str  # UTC, ISO 8601
    versions: dict[str, str]

    @classmethod
    def current(
        cls, profile: str, device: torch.device, argv: list[str] | None = None, module: str = "export.train_all"
    ) -> RunInfo:
        args = sys.argv[1:] if argv is None else argv
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
        return cls(
            command=shlex.join(["python", "-m", module, *args]),
            profile=profile,
            device=device.type,
            device_name=name,
            date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            versions={
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__,
            },
        )


def model_entry(
    *,
    name: str,
    dataset: str,
    role: str,
    encoder: str | None,
    k: int | None,
    run: RunInfo,
    onnx_facts: dict,
    training: dict,
    metrics: dict,
    deployed_model: str | None = None,
) -> dict:
    """One manifest row; ``training`` holds config, epochs, best_epoch and seconds; ``metrics`` the test results;
    ``deployed_model`` names a parity model's deployed model where it is not spec's (absent: spec's CNN)."""
    return {
        "name": name,
        "dataset": dataset,
        "role": role,
        "encoder": encoder,
        "k": k,
        **({"deployed_model": deployed_model} if deployed_model else {}),
        **asdict(run),
        "onnx": onnx_facts,
        "training": training,
        "metrics": metrics,
    }


def update_manifest(repository: Path, entries: list[dict]) -> dict:
    """Merge ``entries`` (by name) into ``<repository>/manifest.json``, keeping models this run did not touch."""
    path = repository / MANIFEST_NAME
    manifest = json.loads(path.read_text()) if path.is_file() else {"models": {}}
    manifest["models"].update({entry["name"]: entry for entry in entries})
    manifest["models"] = dict(sorted(manifest["models"].items()))
    repository.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(repository: Path) -> dict:
    """``<repository>/manifest.json``'s models by name (empty when there is none)."""
    path = repository / MANIFEST_NAME
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def entry_of(repository: Path, name: str) -> dict:
    """The manifest entry of model ``name``; a clear error naming the repository when it has none."""
    models = read_manifest(repository)
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ValueError(f"{repository / MANIFEST_NAME} has no model {name!r} (known: {known}); import it first")
    return models[name]
