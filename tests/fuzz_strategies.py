"""Hypothesis strategies for the public APIs' messages (codedserve.v1 and the KServe port), for one
served model: random but well-typed messages, a share of them close to a good query so the checks
past the dtype and shape run too. Shared by tests/grpc/test_fuzz.py and the real-stack fuzz test."""

from __future__ import annotations

import math
from dataclasses import dataclass

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from hypothesis import event
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as kpb

SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FAULT_NUMBERS = {code.value[0] for code in SERVER_FAULTS}  # as a stream message's status_code carries them


@dataclass(frozen=True)
class Target:
    """The served model the near-valid messages aim at (one FP32 input of ``shape``, batch axis stripped)."""

    model: str
    input_name: str
    output_name: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def status(call, *args, timeout: float = 10.0) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    """The status a call ends with (OK when it answers, a stream read to its end); fails on a server fault."""
    try:
        result = call(*args, timeout=timeout)
        if hasattr(result, "__iter__") and not isinstance(result, bytes):
            list(result)
    except grpc.RpcError as exc:
        event(exc.code().name)
        assert exc.code() not in SERVER_FAULTS, (exc.code(), exc.details())
        return exc.code()
    event("OK")
    return grpc.StatusCode.OK


VALUES = st.one_of(
    st.floats(0, 1, width=32), st.floats(width=32), st.sampled_from([3e38, -1e7, 1e6, float("nan"), float("inf")])
)
DIMS = st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(-2, 10), st.sampled_from([2**31, 2**62 + 4, 2**63 - 1]))
DTYPES = st.one_of(
    st.sampled_from(["float32", "float64", "float16", "int32", "int64", "uint8", "bool", "complex64", "object", ""]),
    st.text(max_size=12),
)
TRITON_TYPES = st.one_of(
    st.sampled_from(["FP32", "FP64", "FP16", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "BF16", ""]),
    st.text(max_size=8),
)
PARAMETERS = st.dictionaries(
    st.one_of(st.sampled_from(["shared_memory_region", "classification", "priority", "timeout"]), st.text(max_size=8)),
    st.one_of(
        st.builds(kpb.InferParameter, bool_param=st.booleans()),
        st.builds(kpb.InferParameter, int64_param=st.integers(-(2**63), 2**63 - 1)),
        st.builds(kpb.InferParameter, string_param=st.text(max_size=8)),
    ),
    max_size=3,
)
CONTENTS = st.builds(
    kpb.InferTensorContents,
    fp32_contents=st.lists(st.floats(width=32), max_size=12),
    int_contents=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=12),
    int64_contents=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    bytes_contents=st.lists(st.binary(max_size=8), max_size=3),
)
VERSIONS = st.one_of(st.just(""), st.just("1"), st.text(max_size=4))


def names(t: Target) -> st.SearchStrategy[str]:
    return st.one_of(st.just(t.model), st.text(max_size=20))


def values(size: int) -> st.SearchStrategy[np.ndarray]:
    """``size`` float32 values: one value everywhere, with up to 3 others at random places."""
    spots = st.lists(st.tuples(st.integers(0, max(size - 1, 0)), VALUES), max_size=3 if size else 0)

    def fill(base: float, others: list[tuple[int, float]]) -> np.ndarray:
        array = np.full(size, base, np.float32)
        for i, v in others:
            array[i] = v
        return array

    return st.builds(fill, st.one_of(st.floats(0, 1, width=32), VALUES), spots)  # in range half the time


def _shapes(t: Target) -> st.SearchStrategy[list[int]]:
    return st.one_of(st.just(list(t.shape)), st.just([1, *t.shape]), st.lists(DIMS, max_size=40))


def classify_requests(t: Target) -> st.SearchStrategy[pb.ClassifyRequest]:
    data = st.one_of(st.binary(max_size=64), values(t.size).map(np.ndarray.tobytes))
    near = st.builds(
        pb.Tensor, dtype=st.just("float32"), shape=st.just(list(t.shape)), data=values(t.size).map(np.ndarray.tobytes)
    )
    tensors = st.one_of(near, st.builds(pb.Tensor, dtype=DTYPES, shape=_shapes(t), data=data))
    return st.builds(pb.ClassifyRequest, model=names(t), id=st.text(max_size=8), input=st.one_of(st.none(), tensors))


def _near_infer(t: Target, rows: int, batch: np.ndarray, noise: bytes, exact: bool, typed: bool):  # type: ignore[no-untyped-def]
    """A ModelInfer of the target with the right input name and datatype: ``rows`` rows of any values,
    sent raw or typed, with the exact byte count or random bytes."""
    tensor = kpb.ModelInferRequest.InferInputTensor(name=t.input_name, datatype="FP32", shape=[rows, *t.shape])
    if typed:
        tensor.contents.fp32_contents.extend(batch.tolist())
        return kpb.ModelInferRequest(model_name=t.model, inputs=[tensor])
    data = batch.tobytes() if exact else noise
    return kpb.ModelInferRequest(model_name=t.model, inputs=[tensor], raw_input_contents=[data])


def infer_requests(t: Target) -> st.SearchStrategy[kpb.ModelInferRequest]:
    near = st.integers(-2, 10).flatmap(
        lambda b: st.builds(
            _near_infer,
            st.just(t),
            st.just(b),
            values(max(b, 0) * t.size),
            st.binary(max_size=40),
            st.booleans(),
            st.booleans(),
        )
    )
    inputs = st.builds(
        kpb.ModelInferRequest.InferInputTensor,
        name=st.one_of(st.just(t.input_name), st.text(max_size=8)),
        datatype=TRITON_TYPES,
        shape=_shapes(t),
        parameters=PARAMETERS,
        contents=st.one_of(st.none(), CONTENTS),
    )
    outputs = st.builds(
        kpb.ModelInferRequest.InferRequestedOutputTensor,
        name=st.one_of(st.just(t.output_name), st.text(max_size=8)),
        parameters=PARAMETERS,
    )
    return near | st.builds(
        kpb.ModelInferRequest,
        model_name=names(t),
        model_version=VERSIONS,
        id=st.text(max_size=8),
        parameters=PARAMETERS,
        inputs=st.lists(inputs, max_size=2),
        outputs=st.lists(outputs, max_size=2),
        raw_input_contents=st.lists(st.binary(max_size=64), max_size=2),
    )
