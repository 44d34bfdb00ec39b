"""A light client of the frontend: build a query, send it, read the answer. It needs only what a plain
``pip install codedserve`` brings (numpy, grpcio, protobuf), on any supported Python and numpy 1 or 2::

    import grpc
    import numpy as np
    from codedserve import client

    with grpc.insecure_channel("127.0.0.1:8100") as channel:
        answer = client.classify(channel, "mnist_cnn", np.zeros((1, 28, 28), np.float32), timeout=1.0)
    print(answer.label, client.logits(answer), answer.reconstructed)

The messages and stubs themselves are ``codedserve.v1.codedserve_pb2`` and ``codedserve_pb2_grpc``.
"""

from __future__ import annotations

import grpc
import numpy as np
from numpy.typing import ArrayLike

from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc


def tensor(array: ArrayLike) -> pb.Tensor:
    """The wire form of an array: numpy's dtype name, the shape, row-major little-endian bytes."""
    array = np.asarray(array)
    wire = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))  # no copy when it already is
    return pb.Tensor(dtype=wire.dtype.name, shape=wire.shape, data=wire.tobytes())


def request(model: str, x: ArrayLike, query_id: str = "") -> pb.ClassifyRequest:
    """One query for ``model`` (its input shape, e.g. float32 [1, 28, 28]); ``query_id`` is echoed back."""
    return pb.ClassifyRequest(model=model, input=tensor(x), id=query_id)


def classify(channel: grpc.Channel, model: str, x: ArrayLike, timeout: float) -> pb.ClassifyResponse:
    """Classify one query over ``channel`` within ``timeout`` seconds (a gRPC deadline)."""
    return pb_grpc.FrontendStub(channel).Classify(request(model, x), timeout=timeout)


def logits(answer: pb.ClassifyResponse) -> np.ndarray:
    """The first model's output as float32, in that model's output shape (flat when the answer has none)."""
    values = np.asarray(answer.logits, dtype=np.float32)
    return values.reshape(tuple(answer.outputs[0].shape)) if answer.outputs else values
