"""A model that does not fit is refused with the problem named: not a 4-D image input, not a vector of scores
per row, one class, a checkpoint whose keys or shapes differ, and a fixed batch axis is made dynamic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from export import cli
from export.own_import import copy_onnx
from export.user_model import ModelError, check_onnx_classifier, check_torch, load_checkpoint, load_factory
from tests.integration import own_models


def _onnx(path: Path, in_dims: list, out_dims: list, elem=TensorProto.FLOAT) -> Path:
    node = (
        helper.make_node("Identity", ["x"], ["y"])
        if in_dims == out_dims
        else helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", elem, in_dims)],
        [helper.make_tensor_value_info("y", elem, out_dims)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_an_input_that_is_not_a_4d_image_batch_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"input 'x' has dims \['batch', 8\]; it must be a 4-D image"):
        check_onnx_classifier(onnx.load(str(_onnx(tmp_path / "m.onnx", ["batch", 8], ["batch", 8]))))
    with pytest.raises(ModelError, match="input shape \\[8\\]: codedserve serves images"):
        check_torch(nn.Linear(8, 3), (8,))


def test_an_output_that_is_not_one_score_vector_per_row_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"output has shape \[2, 1, 4, 4\]; it must be a vector of scores per row"):
        check_torch(nn.Conv2d(1, 1, 1), (1, 4, 4))
    path = _onnx(tmp_path / "m.onnx", ["batch", 3, 4, 4], ["batch", 3, 4, 4])
    with pytest.raises(ModelError, match="vector of scores per row"):
        check_onnx_classifier(onnx.load(str(path)))


def test_one_class_is_refused(tmp_path):
    with pytest.raises(ModelError, match="answers 1 class; a classifier needs at least 2"):
        check_torch(nn.Sequential(nn.Flatten(), nn.Linear(16, 1)), (1, 4, 4))
    with pytest.raises(ModelError, match="answers 1 class"):
        check_onnx_classifier(onnx.load(str(_onnx(tmp_path / "m.onnx", ["batch", 1, 4, 4], ["batch", 1]))))


def test_a_checkpoint_that_does_not_fit_names_the_keys_and_shapes(tmp_path):
    torch.save({"state_dict": own_models.tiny_mlp().state_dict()}, tmp_path / "mlp.pt")
    load_checkpoint(own_models.tiny_mlp(), tmp_path / "mlp.pt")  # a wrapped state_dict fits
    with pytest.raises(
        ModelError, match=r"does not fit the model: missing block\.body\.0\.weight.*and 22 more; unexpected 1\.bias"
    ):
        load_checkpoint(own_models.tiny_resnet(), tmp_path / "mlp.pt")
    wide = nn.Sequential(nn.Flatten(), nn.Linear(20 * 24, 64), nn.ReLU(), nn.Linear(64, 3))
    with pytest.raises(
        ModelError,
        match=r"shapes differ: 1\.bias \(checkpoint \[32\], model \[64\]\), 1\.weight \(checkpoint \[32, 480\]",
    ):
        load_checkpoint(wide, tmp_path / "mlp.pt")


def test_a_factory_that_cannot_be_found_is_named():
    with pytest.raises(ModelError, match="expected package.module:factory"):
        load_factory("tests.integration.own_models")
    with pytest.raises(ModelError, match="has no callable 'nope'"):
        load_factory("tests.integration.own_models:nope")


def test_a_fixed_batch_axis_is_made_dynamic(tmp_path):
    path = _onnx(tmp_path / "fixed.onnx", [1, 3, 4, 4], [1, 3])
    facts = copy_onnx(path, "fixed", tmp_path / "repo")
    assert facts["source_sha256"] != facts["sha256"]
    assert "dims: [ 3, 4, 4 ]" in (tmp_path / "repo" / "fixed" / "config.pbtxt").read_text()


def test_the_cli_reports_a_model_error_in_one_line(tmp_path, capsys):
    path = _onnx(tmp_path / "m.onnx", ["batch", 8], ["batch", 8])
    assert cli.main(["import", "--onnx", str(path), "--name", "m", "--out", str(tmp_path / "repo")]) == 2
    assert "python -m export import: the ONNX input 'x' has dims" in capsys.readouterr().err


def test_a_factory_is_found_by_file_path_as_well_as_by_import_path(tmp_path):
    (tmp_path / "net.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 2)\n")
    assert isinstance(load_factory(f"{tmp_path / 'net.py'}:build")(), nn.Linear)
    with pytest.raises(ModelError, match="no file"):
        load_factory(f"{tmp_path / 'absent.py'}:build")


def test_data_that_does_not_fit_the_model_is_refused(tmp_path, capsys):
    torch.save(own_models.tiny_mlp().state_dict(), tmp_path / "mlp.pt")
    argv = ["import", "--model", "tests.integration.own_models:tiny_mlp", "--checkpoint", str(tmp_path / "mlp.pt")]
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.integers(0, 255, (20, 20, 25, 1)), y=np.arange(20) % 3)
    np.savez(tmp_path / "four.npz", x=rng.integers(0, 255, (20, 20, 24, 1)), y=np.arange(20) % 4)
    for data, problem in (
        ("wide.npz", "the model fails on a batch of 2 inputs of shape [1, 20, 25]"),
        ("four.npz", "the data has 4 classes; the model answers 3 scores"),
    ):
        assert cli.main([*argv, "--data", str(tmp_path / data), "--name", "m", "--out", str(tmp_path / "repo")]) == 2
        assert problem in capsys.readouterr().err
    shape = ["--input-shape", "1,20,24", "--data", str(tmp_path / "wide.npz")]
    assert cli.main([*argv, *shape, "--name", "m", "--out", str(tmp_path / "repo")]) == 2
    assert "the data's images are [1, 20, 25] (C, H, W); the model takes [1, 20, 24]" in capsys.readouterr().err
