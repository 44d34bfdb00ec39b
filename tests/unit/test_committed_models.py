"""The committed model repository is what its manifest says, and serving-time coding reproduces the
accuracy measured at training time: numpy encoders + onnxruntime on the real test split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from coding.schemes import get_scheme
from export.datasets import load
from export.onnx_export import config_text
from export.spec import INPUT_NAME

REPO = Path(__file__).resolve().parents[2] / "model_repository"
MANIFEST = json.loads((REPO / "manifest.json").read_text())["models"]


def _run(name: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(REPO / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: x[i : i + 1000]})[0] for i in range(0, len(x), 1000)])


@pytest.fixture(scope="module")
def test_splits():
    return {ds: load(ds, "test") for ds in ("mnist", "fashion")}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_file_hash_and_config_match_the_manifest(name):
    entry = MANIFEST[name]
    assert hashlib.sha256((REPO / entry["onnx"]["path"]).read_bytes()).hexdigest() == entry["onnx"]["sha256"]
    output_dims = (entry["k"], 10) if entry["role"] == "collage" else (10,)
    assert (REPO / name / "config.pbtxt").read_text() == config_text(name, output_dims=output_dims)


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e["role"] == "deployed"))
def test_deployed_accuracy_is_reproduced(name, test_splits):
    images, labels = test_splits[MANIFEST[name]["dataset"]]
    logits = _run(name, images[:, None].astype(np.float32) / 255.0)
    assert abs((logits.argmax(1) == labels).mean() - MANIFEST[name]["metrics"]["test_accuracy"]) < 5e-4


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e["role"] == "parity"))
def test_degraded_accuracy_is_reproduced_by_the_serving_encoder_and_decoder(name, test_splits):
    """One random partition of the test split, every slot erased in turn, coded by coding.schemes (numpy)."""
    entry = MANIFEST[name]
    k, dataset = entry["k"], entry["dataset"]
    images, labels = test_splits[dataset]
    x = images[:, None].astype(np.float32) / 255.0
    deployed = _run(f"{dataset}_cnn", x)
    groups = np.random.default_rng(0).permutation(len(x))[: len(x) // k * k].reshape(-1, k)
    scheme = get_scheme("parm", k, {"encoder": entry["encoder"]})
    parity_out = _run(name, np.concatenate([scheme.encode(x[g]) for g in groups]))
    hits = 0
    for g, p in zip(groups, parity_out, strict=True):
        for j in range(k):
            present = np.arange(k) != j
            hits += scheme.decode(deployed[g], present, p[None]).argmax() == labels[g[j]]
    accuracy = hits / groups.size
    assert accuracy == pytest.approx(entry["metrics"]["degraded_accuracy"], abs=0.01)


@pytest.mark.parametrize("name", sorted(n for n, e in MANIFEST.items() if e["role"] == "collage"))
def test_collage_cell_accuracy_is_reproduced_by_the_serving_encoder(name, test_splits):
    """One random partition of the test split into collages, tiled by coding.collage (numpy)."""
    entry = MANIFEST[name]
    k, dataset = entry["k"], entry["dataset"]
    images, labels = test_splits[dataset]
    x = images[:, None].astype(np.float32) / 255.0
    groups = np.random.default_rng(0).permutation(len(x))[: len(x) // k * k].reshape(-1, k)
    scheme = get_scheme("collage", k)
    cells = _run(name, np.concatenate([scheme.coded_inputs(x[g]) for g in groups]))  # (G, k, classes)
    accuracy = (cells.argmax(-1) == labels[groups]).mean()
    assert accuracy == pytest.approx(entry["metrics"]["cell_accuracy"], abs=0.01)
