"""codedserve.v1.Tensor <-> numpy, validating everything a client can get wrong.

:func:`to_numpy` (every service, every tensor it receives) raises :class:`InvalidArgument` naming the
tensor and the problem, never a numpy error (which would become INTERNAL):

- a Tensor with no dtype, shape or data is *missing* (an unset message field reads as one);
- the dtype must be one of ``ALLOWED_DTYPES``; the rank at most ``MAX_RANK`` (numpy's limit);
  no dimension negative, none zero;
- the size is counted with Python ints, so a shape whose product overflows int64 is not mistaken
  for an empty or a small tensor, and a tensor of more than ``MAX_TENSOR_BYTES`` (protobuf's 2 GiB
  cap on a message: no request can carry it) is refused naming its shape;
- the data must hold exactly size × itemsize bytes.

:func:`check_input_values` is the frontend's rule for the values of a query, before it reaches a
coding group (where one poisoned input would spoil its partners' reconstructions): a float input must
be finite and within ``|x| <= MAX_ABS_INPUT`` (1e6). Queries are pixels or normalised features, far
below the bound; above it a float32 model's activations head for overflow (NaN logits) — 3e38 pixels
did. Integer inputs cannot be NaN and get no bound. The frontend also never answers OK with a
non-finite logit (:func:`frontend.api.classify.finite_answer`), whatever the input.
"""

from __future__ import annotations

import math

import numpy as np
from codedserve.client import tensor
from codedserve.v1 import codedserve_pb2 as pb

from service_common.errors import InvalidArgument

ALLOWED_DTYPES = ("float32", "float64", "float16", "int64", "int32", "uint8")
MAX_RANK = 32  # numpy's own limit on dimensions
MAX_TENSOR_BYTES = 2**31 - 1  # protobuf's cap on one message: no request carries a larger tensor
MAX_ABS_INPUT = 1e6  # the largest |value| of a float query (see the module doc)


# Each allowed dtype as read off the wire (little-endian), built once: a tensor is decoded per query.
_WIRE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in ALLOWED_DTYPES}


def to_numpy(tensor: pb.Tensor, what: str = "tensor") -> np.ndarray:
    """Decode a Tensor message; raise InvalidArgument naming ``what`` and the problem."""
    dtype = _WIRE_DTYPES.get(tensor.dtype)
    if dtype is None:
        if not (tensor.dtype or tensor.shape or tensor.data):
            raise InvalidArgument(f"missing {what}: no dtype, shape or data")
        raise InvalidArgument(f"{what}: unsupported dtype {tensor.dtype!r}; expected one of {list(ALLOWED_DTYPES)}")
    shape = tuple(tensor.shape)
    data = tensor.data
    nbytes = _checked_size(shape, tensor.dtype, what) * dtype.itemsize
    if len(data) != nbytes:
        raise InvalidArgument(f"{what}: shape {list(shape)} of {tensor.dtype} needs {nbytes} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _checked_size(shape: tuple[int, ...], dtype: str, what: str) -> int:
    """The element count of ``shape``, in Python ints (never wraps), once the shape is one we can hold."""
    if len(shape) > MAX_RANK:
        raise InvalidArgument(f"{what}: rank {len(shape)} exceeds the maximum of {MAX_RANK} dimensions")
    count = math.prod(shape)
    negative = bool(shape) and min(shape) < 0  # not count < 0: two negative dimensions multiply to a positive
    if negative or count == 0:
        if negative:
            raise InvalidArgument(f"{what}: negative dimension in shape {list(shape)}")
        raise InvalidArgument(f"{what}: empty tensor (shape {list(shape)})")
    nbytes = count * _WIRE_DTYPES[dtype].itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise InvalidArgument(
            f"{what}: shape {list(shape)} of {dtype} declares {nbytes} bytes, more than any message "
            f"carries ({MAX_TENSOR_BYTES})"
        )
    return count


def check_input_values(x: np.ndarray, what: str) -> None:
    """A float query must be finite and within ``|x| <= MAX_ABS_INPUT``; integer queries pass."""
    if x.size == 0 or x.dtype.kind != "f":
        return
    peak = float(np.maximum.reduce(np.abs(x), axis=None))  # NaN if any value is NaN (the ufunc: no Python wrapper)
    if not math.isfinite(peak):
        raise InvalidArgument(f"{what}: contains NaN or infinity")
    if peak > MAX_ABS_INPUT:
        raise InvalidArgument(
            f"{what}: a value of magnitude {peak:g} exceeds the bound |x| <= {MAX_ABS_INPUT:g} on float inputs"
        )


def from_numpy(array: np.ndarray) -> pb.Tensor:
    """Encode an array as a little-endian Tensor message: the light client's encoding, the one wire form."""
    return tensor(array)
