"""The real tritonserver on CPU serves a ``backend: "onnxruntime"`` repository through triton_local.

Each test builds a tiny ONNX model (relu(x @ W + b)) with the onnx package alone into a tmp repository,
starts tritonserver with only the models it needs, and checks results against onnxruntime in-process.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from onnx import ModelProto, TensorProto, helper, numpy_helper, save
from tritonclient.utils import InferenceServerException

from triton_local import TritonConfig, TritonServer, TritonStartError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

FULL_CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 3 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
parameters {{ key: "intra_op_thread_count" value {{ string_value: "1" }} }}
"""
RAGGED_CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "logits" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 20000 }}
"""
BARE_CONFIG = """
name: "{name}"
backend: "onnxruntime"
max_batch_size: 8
"""


def _tiny_onnx(path: Path) -> None:
    """relu(input @ W + b): input [-1, 4] FP32 -> logits [-1, 3], opset 17."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[weights, bias],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _ragged_onnx(path: Path) -> None:
    """relu(reshape(input, [batch, 4])): Triton accepts any row length, onnxruntime only 4."""
    shape = numpy_helper.from_array(np.array([0, 4], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["input", "shape"], ["rows"]), helper.make_node("Relu", ["rows"], ["logits"])]
    graph = helper.make_graph(
        nodes,
        "ragged",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "length"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[shape],
    )
    _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _save(model: ModelProto, path: Path) -> None:
    model.ir_version = 8  # the IR that goes with opset 17, readable by any recent onnxruntime
    path.parent.mkdir(parents=True)
    save(model, str(path))


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """``tiny`` with a complete production-style config, ``bare`` with no input/output sections, ``ragged``
    whose requests can pass Triton's checks and still fail in onnxruntime."""
    repo = tmp_path / "model_repository"
    for name, config, build in (
        ("tiny", FULL_CONFIG, _tiny_onnx),
        ("bare", BARE_CONFIG, _tiny_onnx),
        ("ragged", RAGGED_CONFIG, _ragged_onnx),
    ):
        build(repo / name / "1" / "model.onnx")
        (repo / name / "config.pbtxt").write_text(config.format(name=name))
    return repo


def _config(repo: Path, tmp_path: Path, models: tuple[str, ...]) -> TritonConfig:
    return TritonConfig(repo, models=models, build_dir=tmp_path / "build", ready_timeout_s=90)


def _infer(client: grpcclient.InferenceServerClient, model: str, batch: np.ndarray) -> np.ndarray:
    request = grpcclient.InferInput("input", list(batch.shape), "FP32")
    request.set_data_from_numpy(batch)
    outputs = [grpcclient.InferRequestedOutput("logits")]
    return client.infer(model, [request], outputs=outputs, client_timeout=30).as_numpy("logits")


def _live_group_members(pgid: int) -> list[int]:
    """PIDs in process group ``pgid`` that are not zombies (orphans wait for init to reap them)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _assert_gone(pid: int) -> None:
    """Neither tritonserver nor any stub of its process group is left (SIGKILL lands asynchronously)."""
    deadline = time.monotonic() + 10
    while _live_group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_group_members(pid) == []


def test_serves_onnx_config_over_grpc(repository: Path, tmp_path: Path) -> None:
    session = ort.InferenceSession(str(repository / "tiny" / "1" / "model.onnx"))
    rng = np.random.default_rng(1)
    with TritonServer(_config(repository, tmp_path, ("tiny",))) as server:
        pid = server.pid
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            assert client.is_server_ready()
            assert client.is_model_ready("tiny")
            assert not client.is_model_ready("bare")  # explicit model control loaded only what was asked
            for rows in (1, 3):
                batch = rng.standard_normal((rows, 4)).astype(np.float32)
                got = _infer(client, "tiny", batch)
                assert got.shape == (rows, 3)
                assert np.allclose(got, session.run(["logits"], {"input": batch})[0], atol=1e-6)
    assert not server.is_running()
    _assert_gone(pid)


def test_a_model_py_in_the_callers_directory_does_not_shadow_the_backend(
    repository: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton's Python stub imports a module named ``model``: started from a folder holding a user's
    model.py, it used to import that one and fail to load every model."""
    here = tmp_path / "project"
    here.mkdir()
    (here / "model.py").write_text("raise ImportError('the user model.py, not the backend')\n")
    monkeypatch.chdir(here)
    with TritonServer(_config(repository, tmp_path, ("tiny",))) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            assert client.is_model_ready("tiny")
            assert _infer(client, "tiny", np.zeros((1, 4), np.float32)).shape == (1, 3)


def test_dynamic_batches_split_back_per_request(repository: Path, tmp_path: Path) -> None:
    """Concurrent requests of different sizes get merged into batches and each gets its own rows back."""
    session = ort.InferenceSession(str(repository / "tiny" / "1" / "model.onnx"))
    batches = [np.random.default_rng(i).standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(48)]
    with TritonServer(_config(repository, tmp_path, ("tiny",))) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(lambda b: _infer(client, "tiny", b), batches))
            stats = client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    for batch, got in zip(batches, results, strict=True):
        assert np.allclose(got, session.run(["logits"], {"input": batch})[0], atol=1e-6)
    assert int(stats["inference_count"]) == sum(len(b) for b in batches)
    assert int(stats["execution_count"]) <= len(batches)


def test_auto_completes_inputs_and_outputs(repository: Path, tmp_path: Path) -> None:
    with TritonServer(_config(repository, tmp_path, ("bare",))) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            assert client.is_model_ready("bare")
            config = client.get_model_config("bare", as_json=True)["config"]
            got = _infer(client, "bare", np.ones((2, 4), np.float32))
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("input", "TYPE_FP32", ["4"])]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [("logits", "TYPE_FP32", ["3"])]
    assert got.shape == (2, 3)


def test_bad_request_fails_alone_in_a_batch(repository: Path, tmp_path: Path) -> None:
    """A request onnxruntime rejects gets its own error; the requests batched with it still succeed."""
    batches = [np.arange(5 if i % 4 == 0 else 4, dtype=np.float32)[None] - 2 for i in range(16)]
    with TritonServer(_config(repository, tmp_path, ("ragged",))) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(_infer, client, "ragged", b) for b in batches]
            for batch, future in zip(batches, futures, strict=True):
                if batch.shape[1] == 4:
                    assert np.array_equal(future.result(), np.maximum(batch, 0))
                else:
                    with pytest.raises(InferenceServerException, match="onnxruntime"):
                        future.result()
            assert client.is_model_ready("ragged")
            stats = client.get_inference_statistics("ragged", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) < len(batches)  # some requests really did share a batch


def test_failed_start_raises_with_log_and_leaves_nothing(repository: Path, tmp_path: Path) -> None:
    server = TritonServer(_config(repository, tmp_path, ("no_such_model",)))
    with pytest.raises(TritonStartError, match="no_such_model"):
        with server:
            pass
    assert server.pid is None and not server.is_running()


def test_stop_reaps_stubs_after_sigkill(repository: Path, tmp_path: Path) -> None:
    """Even if tritonserver dies hard, stop() leaves no stub process of its group behind."""
    server = TritonServer(_config(repository, tmp_path, ("tiny",)))
    with server:
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    _assert_gone(pid)
