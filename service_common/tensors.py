"""codedserve.v1.Tensor <-> numpy, validating everything a client can get wrong."""

from __future__ import annotations

import numpy as np
from codedserve.v1 import codedserve_pb2 as pb

from service_common.errors import InvalidArgument

ALLOWED_DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8")


def to_numpy(tensor: pb.Tensor, what: str = "tensor") -> np.ndarray:
    """Decode a Tensor message; raise InvalidArgument naming ``what`` and the problem."""
    if tensor.dtype not in ALLOWED_DTYPES:
        raise InvalidArgument(f"{what}: unsupported dtype {tensor.dtype!r}; expected one of {list(ALLOWED_DTYPES)}")
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{what}: negative dimension in shape {list(shape)}")
    count = int(np.prod(shape)) if shape else 1
    if count == 0:
        raise InvalidArgument(f"{what}: empty tensor (shape {list(shape)})")
    itemsize = np.dtype(tensor.dtype).itemsize
    if len(tensor.data) != count * itemsize:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} of {tensor.dtype} needs {count * itemsize} bytes, got {len(tensor.data)}"
        )
    return np.frombuffer(tensor.data, dtype=np.dtype(tensor.dtype).newbyteorder("<")).reshape(shape)


def from_numpy(array: np.ndarray) -> pb.Tensor:
    """Encode an array as a little-endian Tensor message."""
    array = np.ascontiguousarray(array)
    return pb.Tensor(
        dtype=array.dtype.name, shape=list(array.shape), data=array.astype(array.dtype.newbyteorder("<")).tobytes()
    )
