"""Triton Python-based backend that serves ``backend: "onnxruntime"`` models with the onnxruntime package.

Why: the tritonserver in the nvidia-pytriton wheel has no C++ onnxruntime backend. Triton 2.51 resolves a
backend name it has no library for to ``<backend-dir>/<name>/model.py`` and runs it through the Python backend,
so this file lets the local server load the same repository (configs say ``backend: "onnxruntime"``) that the
NGC image serves on a GPU cluster, unchanged. It mirrors what the C++ backend does: auto-completes inputs and
outputs from the ONNX file, honours its thread-count parameters, and runs a dynamic batch as ONE session call.

This file runs inside ``triton_python_backend_stub`` (an isolated interpreter that sees the venv's
site-packages because the venv's ``bin`` is first on PATH), so it imports only numpy and onnxruntime, and
``service_time`` (``triton_local/service_time.py``, stdlib only), which the launcher copies beside it.

Emulated accelerator time, for local benchmarks only: when the launcher names a law for this model (in
tritonserver's environment, which the stub inherits), each execution holds the instance until a time drawn
from that law has passed since it began, and the executions of every model on the server take turns (one
emulated accelerator per server); see ``service_time``.
"""

import contextlib
import json
import os
import time

import numpy as np
import onnxruntime as ort
import service_time
import triton_python_backend_utils as pb_utils

# ORT element type -> (Triton config type, numpy dtype that ORT expects as input).
_ORT_TYPES = {
    "tensor(bool)": ("TYPE_BOOL", np.bool_),
    "tensor(uint8)": ("TYPE_UINT8", np.uint8),
    "tensor(uint16)": ("TYPE_UINT16", np.uint16),
    "tensor(uint32)": ("TYPE_UINT32", np.uint32),
    "tensor(uint64)": ("TYPE_UINT64", np.uint64),
    "tensor(int8)": ("TYPE_INT8", np.int8),
    "tensor(int16)": ("TYPE_INT16", np.int16),
    "tensor(int32)": ("TYPE_INT32", np.int32),
    "tensor(int64)": ("TYPE_INT64", np.int64),
    "tensor(float16)": ("TYPE_FP16", np.float16),
    "tensor(float)": ("TYPE_FP32", np.float32),
    "tensor(double)": ("TYPE_FP64", np.float64),
    "tensor(string)": ("TYPE_STRING", np.object_),
}
_DEFAULT_MODEL_FILENAME = "model.onnx"
_DEFAULT_INTRA_OP_THREADS = 1  # the dev machines have 2 cores; ORT's default (all cores) fights Triton's threads


def _stub_model_path():
    """The stub's argv[1]: ``<model_dir>/<version>/<default_model_filename>``.

    ``auto_complete_config`` gets only the config (no repository path), and the embedded interpreter's
    ``sys.argv`` is empty, so the path is read from the stub process's own command line.
    """
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().split(b"\0")[1].decode()


def _model_file(model_dir, version, config):
    """Where the C++ backend would look: ``<model_dir>/<version>/<default_model_filename or model.onnx>``."""
    filename = config.get("default_model_filename") or _DEFAULT_MODEL_FILENAME
    return os.path.join(model_dir, str(version), filename)


def _parameter(config, key):
    """A ``parameters { key: ... value { string_value: ... } }`` entry, or None."""
    return config.get("parameters", {}).get(key, {}).get("string_value") or None


def _providers():
    """CUDA first where onnxruntime-gpu is installed (the opt-in ``gpu`` extra), else the CPU alone.
    (export.onnx_export.onnx_providers says the same; this file cannot import the project.)"""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path, config):
    """An InferenceSession with the C++ backend's thread parameters (intra defaults to 1, see above)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(_parameter(config, "intra_op_thread_count") or _DEFAULT_INTRA_OP_THREADS)
    inter = _parameter(config, "inter_op_thread_count")
    if inter is not None:
        options.inter_op_num_threads = int(inter)
    return ort.InferenceSession(path, sess_options=options, providers=_providers())


def _tensor_spec(node, batched):
    """Config entry for one ORT input/output; symbolic dims become -1, the batch dim is dropped if batched."""
    dims = [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape]
    if batched:
        dims = dims[1:]
    if node.type not in _ORT_TYPES:
        raise ValueError(f"ONNX tensor {node.name!r} has unsupported type {node.type}")
    return {"name": node.name, "data_type": _ORT_TYPES[node.type][0], "dims": dims}


class TritonPythonModel:
    """One model instance: an ORT session plus the config's input/output names and dtypes."""

    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        """Fill inputs/outputs from the ONNX file when the config lists none, as the C++ backend does."""
        config = auto_complete_model_config.as_dict()
        if config.get("input") and config.get("output"):
            return auto_complete_model_config
        session = ort.InferenceSession(_stub_model_path(), providers=_providers())
        batched = config.get("max_batch_size", 0) > 0
        if not config.get("input"):
            for node in session.get_inputs():
                auto_complete_model_config.add_input(_tensor_spec(node, batched))
        if not config.get("output"):
            for node in session.get_outputs():
                auto_complete_model_config.add_output(_tensor_spec(node, batched))
        return auto_complete_model_config

    def initialize(self, args):
        """Open the session; for a Python-based backend ``model_repository`` is the model's own directory."""
        config = json.loads(args["model_config"])
        path = _model_file(args["model_repository"], args["model_version"], config)
        self._session = _session(path, config)
        self._batched = config.get("max_batch_size", 0) > 0
        ort_inputs = {node.name: node.type for node in self._session.get_inputs()}
        self._inputs = {i["name"]: _ORT_TYPES[ort_inputs[i["name"]]][1] for i in config["input"]}
        self._outputs = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        self._clock = _clock(args)
        self._accelerator = _accelerator() if self._clock else None
        emulated = f", emulated service time {self._clock.law}" if self._clock else ""
        pb_utils.Logger.log_info(
            f"onnxruntime {ort.__version__} serving {path} (intra_op_threads="
            f"{self._session.get_session_options().intra_op_num_threads}{emulated})"
        )

    def execute(self, requests):
        """Answer the requests; with an emulated service time, take the server's accelerator and hold it
        until that time has passed since the execution began on it."""
        if self._clock is None:
            return self._answer(requests)[0]
        with self._accelerator:
            started = time.monotonic()
            responses, rows = self._answer(requests)
            self._clock.hold(started, rows)
        return responses

    def _answer(self, requests):
        """Run a dynamic batch as one session call; a bad request gets its own error response. Returns the
        responses and the rows run (the batch size an accelerator would have seen).

        Requests whose inputs cannot be read are answered with an error and left out. If the batched run
        fails, each request is re-run alone so the failure lands on the request that caused it.
        """
        responses = [None] * len(requests)
        feeds = {}
        for index, request in enumerate(requests):
            try:
                feeds[index] = self._read_inputs(request)
            except Exception as exc:  # any bad input is that request's error, not the batch's
                responses[index] = _error(exc)
        rows = sum(len(next(iter(feed.values()), ())) for feed in feeds.values()) if self._batched else len(feeds)
        if self._batched and len(feeds) > 1:
            try:
                for index, outputs in zip(feeds, self._run_batch(list(feeds.values())), strict=True):
                    responses[index] = _response(outputs)
                return responses, rows
            except Exception:  # fall through to per-request runs, which attribute the error
                pass
        for index, feed in feeds.items():
            try:
                responses[index] = _response(self._run(feed))
            except Exception as exc:  # that request's error response
                responses[index] = _error(exc)
        return responses, rows

    def finalize(self):
        """Drop the session so ORT frees its memory before the stub exits."""
        self._session = None

    def _read_inputs(self, request):
        """This request's inputs as the numpy dtypes ORT expects (Triton has already checked names/shapes)."""
        feed = {}
        for name, dtype in self._inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            feed[name] = tensor.as_numpy().astype(dtype, copy=False)
        return feed

    def _run(self, feed):
        """One session call; outputs cast to the config's dtypes (ORT may return wider types)."""
        values = self._session.run(list(self._outputs), feed)
        return {
            name: value.astype(self._outputs[name], copy=False)
            for name, value in zip(self._outputs, values, strict=True)
        }

    def _run_batch(self, feeds):
        """Concatenate the requests along the batch axis, run once, split the outputs back per request."""
        sizes = [len(next(iter(feed.values()))) for feed in feeds]
        batch = {name: np.concatenate([feed[name] for feed in feeds]) for name in self._inputs}
        outputs = self._run(batch)
        cuts = np.cumsum(sizes)[:-1]
        split = {name: np.split(value, cuts) for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(feeds))]


def _clock(args):
    """This instance's emulated service time, or None where the launcher named no law for its model."""
    laws = service_time.parse(os.environ.get(service_time.ENV_LAWS, ""))
    law = service_time.law_for(laws, args["model_name"])
    if law is None:
        return None
    seed = int(os.environ.get(service_time.ENV_SEED) or 0)
    return service_time.InstanceClock(law, seed, args["model_name"], args["model_instance_name"])


def _accelerator():
    """The server's emulated accelerator (its lock file, named by the launcher); where the launcher named
    none, this instance is its own (the Python backend runs one execution at a time per instance)."""
    path = os.environ.get(service_time.ENV_ACCELERATOR)
    return service_time.Accelerator(path) if path else contextlib.nullcontext()


def _response(outputs):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, v) for n, v in outputs.items()])


def _error(exc):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"onnxruntime: {exc}"))
