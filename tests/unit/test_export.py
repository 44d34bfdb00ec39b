"""ONNX export of a fresh model: onnxruntime == torch, the ONNX I/O == the parsed config.pbtxt, a dynamic batch,
and the manifest's sha256. No dataset needed."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from export import spec
from export.manifest import RunInfo, model_entry, update_manifest
from export.models import build_model, multiply_accumulates
from export.onnx_export import GPU_CONFIG_NAME, check_onnx, write_model

NAME = spec.deployed_model_name("mnist")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, dict]:
    torch.manual_seed(0)
    model = build_model("cnn", mean=0.13, std=0.31).eval()
    repo = tmp_path_factory.mktemp("model_repository")
    batch = np.random.default_rng(0).random((8, *spec.IMAGE_SHAPE), dtype=np.float32)
    return model, repo, write_model(model, NAME, repo, batch)


def _tensor_block(config: str, section: str) -> dict:
    """name, data_type and dims of the single tensor in an ``input [...]`` / ``output [...]`` section."""
    block = re.search(rf"^{section} \[\s*\{{(.*?)\}}\s*\]", config, re.S | re.M)
    assert block, f"no {section} section in config.pbtxt"
    body = block.group(1)
    return {
        "name": re.search(r'name: "([^"]+)"', body).group(1),
        "data_type": re.search(r"data_type: (\w+)", body).group(1),
        "dims": [int(d) for d in re.search(r"dims: \[([^\]]*)\]", body).group(1).split(",")],
    }


def _onnx_io(value_info: onnx.ValueInfoProto) -> tuple[str, int, list]:
    tensor = value_info.type.tensor_type
    return value_info.name, tensor.elem_type, [d.dim_param or d.dim_value for d in tensor.shape.dim]


def test_onnxruntime_matches_torch(exported: tuple) -> None:
    model, repo, facts = exported
    batch = np.random.default_rng(1).random((5, *spec.IMAGE_SHAPE), dtype=np.float32)
    assert check_onnx(model, repo / facts["path"], batch) < 1e-4
    assert facts["ort_max_abs_diff"] < 1e-4


def test_check_onnx_catches_a_different_model(exported: tuple) -> None:
    _, repo, facts = exported
    torch.manual_seed(1)
    other = build_model("cnn", mean=0.13, std=0.31).eval()
    with pytest.raises(AssertionError, match="onnxruntime disagrees"):
        check_onnx(other, repo / facts["path"], np.ones((2, *spec.IMAGE_SHAPE), np.float32))


def test_onnx_io_matches_config_pbtxt(exported: tuple) -> None:
    _, repo, facts = exported
    config = (repo / NAME / "config.pbtxt").read_text()
    graph = onnx.load(str(repo / facts["path"])).graph
    assert re.search(rf'^name: "{NAME}"$', config, re.M)
    assert re.search(r'^backend: "onnxruntime"$', config, re.M)
    assert int(re.search(r"^max_batch_size: (\d+)$", config, re.M).group(1)) == spec.MAX_BATCH_SIZE
    for section, value_infos in (("input", graph.input), ("output", graph.output)):
        (value_info,) = value_infos
        name, elem_type, shape = _onnx_io(value_info)
        block = _tensor_block(config, section)
        assert (block["name"], block["data_type"]) == (name, "TYPE_FP32")
        assert elem_type == onnx.TensorProto.FLOAT
        assert isinstance(shape[0], str), "the batch axis must be dynamic"
        assert shape[1:] == block["dims"]
    assert (graph.input[0].name, graph.output[0].name) == (spec.INPUT_NAME, spec.OUTPUT_NAME)
    assert _tensor_block(config, "output")["dims"] == [spec.NUM_CLASSES]


def test_config_is_cpu_safe_and_the_gpu_variant_differs_only_by_kind(exported: tuple) -> None:
    _, repo, _ = exported
    config = (repo / NAME / "config.pbtxt").read_text()
    gpu = (repo / NAME / "configs" / f"{GPU_CONFIG_NAME}.pbtxt").read_text()
    assert "kind:" not in config
    assert "dynamic_batching" in config and 'key: "intra_op_thread_count"' in config
    assert gpu.replace("\n    kind: KIND_GPU", "") == config


def test_a_dynamic_batch_of_3_runs(exported: tuple) -> None:
    model, repo, facts = exported
    session = ort.InferenceSession(str(repo / facts["path"]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).random((3, *spec.IMAGE_SHAPE), dtype=np.float32)
    (logits,) = session.run([spec.OUTPUT_NAME], {spec.INPUT_NAME: x})
    assert logits.shape == (3, spec.NUM_CLASSES)
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_manifest_entry_has_the_files_sha256_and_merges_by_name(exported: tuple) -> None:
    _, repo, facts = exported
    run = RunInfo.current("test", torch.device("cpu"), argv=["--profile", "tiny"])
    common = {"run": run, "onnx_facts": facts, "training": {"epochs": 0}, "metrics": {}}
    update_manifest(repo, [model_entry(name=NAME, dataset="mnist", role="deployed", encoder=None, k=None, **common)])
    other = spec.parity_model_name("mnist", "add", 2)
    update_manifest(repo, [model_entry(name=other, dataset="mnist", role="parity", encoder="add", k=2, **common)])
    manifest = json.loads((repo / "manifest.json").read_text())
    assert sorted(manifest["models"]) == [NAME, other]
    entry = manifest["models"][NAME]
    assert entry["onnx"]["sha256"] == hashlib.sha256((repo / NAME / "1" / "model.onnx").read_bytes()).hexdigest()
    assert entry["command"] == "python -m export.train_all --profile tiny"
    assert entry["versions"]["torch"] == torch.__version__


def test_the_gpu_path_is_taken_only_where_onnxruntime_offers_cuda(monkeypatch) -> None:
    from export import onnx_export

    monkeypatch.setattr(onnx_export.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_export.onnx_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(
        onnx_export.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert onnx_export.onnx_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_multiply_accumulates_count_convolutions_and_linear_layers():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    assert multiply_accumulates(model, torch.zeros(1, 1, 4, 4)) == 2 * 4 * 4 * 9 + 3 * 32
    assert model.training  # left as it was
