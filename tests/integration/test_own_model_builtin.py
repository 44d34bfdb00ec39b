"""`make models` makes the built-in models with `python -m export`, the commands a user runs on their own model.

Runs the Makefile's own target at the tiny profile (1,000 images a split, an epoch or two) on MNIST into a scratch
repository, then checks that every model the target names is there, in the manifest under its role, with a
``config.pbtxt`` that is the one its ONNX file's signature gives (a collage model's output dims read by running it).
About 1 minute on one niced core.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from export.onnx_export import config_from_onnx, config_text, onnx_io
from export.user_data import builtin

ROOT = Path(__file__).resolve().parents[2]
CODES = {("add", 2), ("concat", 2)}
COIN = ("mnist_coin_m0", "mnist_coin_m1", "mnist_coin_k2_fisher", "mnist_coin_k2_average", "mnist_coin_k2_distill")
# (name, role, output dims past the batch axis); every input is one 1 x 28 x 28 image (a parity query too)
EXPECTED = [
    ("mnist_cnn", "deployed", (10,)),
    *((f"mnist_parm_{e}_k{k}", "parity", (10,)) for e, k in sorted(CODES)),
    *((f"mnist_collage_s{s}", "collage", (s * s, 10)) for s in (2, 3)),
    *((n, "coin_member" if "_m" in n else "coin_coded", (10,)) for n in COIN),
]


def _make_models(out: Path) -> subprocess.CompletedProcess:
    variables = {
        "MODELS_PROFILE": "tiny",
        "MODELS_OUT": str(out),
        "MODELS_DATASETS": "mnist",
        "MODELS_CODES": " ".join(f"{e}:{k}" for e, k in sorted(CODES)),
        "MODELS_COIN": "--relabel-k 2 --settings shared --fisher-samples 100",
    }
    # the target's prerequisites (.venv, data/) are taken as made: this test must not reinstall or fetch
    command = ["make", "--no-print-directory", "-o", ".venv/.setup-done", "-o", "data/.fetched", "models"]
    command += [f"{k}={v}" for k, v in variables.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    if builtin("mnist") is None:
        pytest.skip("no data/mnist: run `make data`")
    out = tmp_path_factory.mktemp("builtin") / "model_repository"
    done = _make_models(out)
    assert done.returncode == 0, f"make models failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return out


def test_the_target_runs_only_python_m_export():
    dry = subprocess.run(
        ["make", "-n", "-o", ".venv/.setup-done", "-o", "data/.fetched", "models", "MODELS_OUT=/tmp/x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    modules = {
        w[i + 1]
        for w in map(shlex.split, dry.stdout.replace("\\\n", " ").splitlines())
        for i in range(len(w) - 1)
        if w[i] == "-m"
    }
    assert modules == {"export"}


@pytest.mark.parametrize(("name", "role", "output_dims"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_each_model_is_made_with_a_config_matching_its_onnx(repository, name, role, output_dims):
    onnx_path = repository / name / "1" / "model.onnx"
    (inp,), _ = onnx_io(onnx_path)
    assert inp.dims[1:] == (1, 28, 28)
    config = (repository / name / "config.pbtxt").read_text()
    assert config == config_from_onnx(onnx_path, name) == config_text(name, output_dims=output_dims)
    entry = json.loads((repository / "manifest.json").read_text())["models"][name]
    assert (entry["role"], entry["onnx"]["path"]) == (role, f"{name}/1/model.onnx")


def test_the_deployed_model_is_trained_on_the_built_in_data_and_recorded_for_what_follows(repository):
    entry = json.loads((repository / "manifest.json").read_text())["models"]["mnist_cnn"]
    assert entry["user"]["factory"] == "export.models:cnn"
    assert entry["user"]["data"]["path"] == "mnist" and entry["user"]["data"]["limit"] == 1000
    assert entry["user"]["splits"] == {"train": 1000, "val": 1000, "test": 1000}
    assert entry["training"]["config"]["epochs"] == 2  # the tiny profile's deployed recipe
    assert entry["metrics"]["test_accuracy"] > 0.5  # trained: an untrained CNN scores about 0.1
    assert (repository / "mnist_cnn" / "weights.pt").is_file()  # the parity models' warm start
