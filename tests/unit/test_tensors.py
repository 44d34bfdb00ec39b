"""service_common.tensors, the Tensor decoding every service shares: each client mistake is an
InvalidArgument naming the tensor and the problem, never a numpy error (which would be INTERNAL)."""

from __future__ import annotations

import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb

from service_common.errors import InvalidArgument
from service_common.tensors import MAX_ABS_INPUT, check_input_values, from_numpy, to_numpy

# 16 * (2**60 + 49) = 2**64 + 784: int64's product wraps to exactly 784 elements, so 784 float32s "match".
WRAPS_TO_784 = [16, 2**60 + 49]


@pytest.mark.parametrize(
    "shape, data, message",
    [
        (WRAPS_TO_784, b"\0" * (784 * 4), f"shape {WRAPS_TO_784} of float32 declares"),
        ([2**32, 2**32], b"", "shape [4294967296, 4294967296] of float32 declares"),  # wraps to 0: "empty"
        ([2**62, 4, 3], b"\0" * 12, "declares"),  # wraps to a negative count
        ([1] * 40, b"\0" * 4, "rank 40"),  # beyond numpy's 32 dimensions
    ],
)
def test_shapes_whose_size_overflows_are_invalid_and_named(shape, data, message):
    with pytest.raises(InvalidArgument) as err:
        to_numpy(pb.Tensor(dtype="float32", shape=shape, data=data), "input")
    assert message in str(err.value)
    assert str(err.value).startswith("input: ")


def test_a_missing_tensor_is_called_missing_not_a_bad_dtype():
    with pytest.raises(InvalidArgument, match="^missing input") as err:
        to_numpy(pb.ClassifyRequest().input, "input")
    assert "unsupported dtype" not in str(err.value)


def test_a_good_tensor_round_trips():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(to_numpy(from_numpy(x)), x)


@pytest.mark.parametrize(
    "value, message",
    [
        (np.nan, "contains NaN or infinity"),
        (-np.inf, "contains NaN or infinity"),
        (3e38, f"|x| <= {MAX_ABS_INPUT:g}"),
        (-2e6, f"|x| <= {MAX_ABS_INPUT:g}"),
    ],
)
def test_float_inputs_must_be_finite_and_within_the_bound(value, message):
    x = np.zeros((1, 4, 4), np.float32)
    x[0, 1, 2] = value
    with pytest.raises(InvalidArgument, match=r"^input for m: ") as err:
        check_input_values(x, "input for m")
    assert message in str(err.value)


def test_values_at_the_bound_and_integer_inputs_pass():
    check_input_values(np.full(4, MAX_ABS_INPUT, np.float32), "x")
    check_input_values(np.full(4, -MAX_ABS_INPUT, np.float64), "x")
    check_input_values(np.full(4, 2**40, np.int64), "x")  # integers cannot be NaN; no bound on them


@pytest.mark.parametrize("shape", [[-1, 4], [2, -3], [-2, -3], [0, -1]])  # two negatives multiply to a positive
def test_a_negative_dimension_is_named_even_where_the_product_is_positive(shape):
    with pytest.raises(InvalidArgument, match=r"^input: negative dimension in shape"):
        to_numpy(pb.Tensor(dtype="float32", shape=shape, data=b"\0" * 24), "input")


def test_an_unsupported_dtype_is_named():
    with pytest.raises(InvalidArgument, match=r"^input: unsupported dtype 'complex64'"):
        to_numpy(pb.Tensor(dtype="complex64", shape=[1], data=b"\0" * 8), "input")
