"""ParM coding math: shapes, layout, and exactness of subtraction decoding for a linear model."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coding import parm
from coding.errors import CodingError
from coding.schemes import get_scheme

RNG = np.random.default_rng(0)


def _group(k: int, c: int = 1, h: int = 28, w: int = 28) -> np.ndarray:
    return RNG.random((k, c, h, w), dtype=np.float32)


def test_add_encoder_is_the_sum():
    g = _group(3)
    np.testing.assert_allclose(parm.add_encode(g), g.sum(0), rtol=1e-6)


def test_concat_k2_places_half_width_tiles_side_by_side():
    """Exactly (bit for bit) the mean over each pair of columns: the parity the committed models learned."""
    g = _group(2)
    p = parm.concat_encode(g)
    assert p.shape == (1, 28, 28)
    np.testing.assert_array_equal(p[..., :14], g[0].reshape(1, 28, 14, 2).mean(-1))
    np.testing.assert_array_equal(p[..., 14:], g[1].reshape(1, 28, 14, 2).mean(-1))


def test_concat_k4_places_quadrants_tl_tr_bl_br():
    g = _group(4)
    p = parm.concat_encode(g)
    quarter = [x.reshape(1, 14, 2, 14, 2).mean(-1).mean(-2) for x in g]
    np.testing.assert_array_equal(p[:, :14, :14], quarter[0])
    np.testing.assert_array_equal(p[:, :14, 14:], quarter[1])
    np.testing.assert_array_equal(p[:, 14:, :14], quarter[2])
    np.testing.assert_array_equal(p[:, 14:, 14:], quarter[3])


@pytest.mark.parametrize("encoder,k", [("add", 2), ("add", 3), ("add", 4), ("concat", 2), ("concat", 4)])
def test_numpy_and_torch_encoders_agree(encoder, k):
    """Training (torch) and serving (numpy) run the same function: they must give the same parity."""
    batch = RNG.random((5, k, 1, 28, 28), dtype=np.float32)
    served = parm.ENCODERS[encoder](batch)
    trained = parm.ENCODERS[encoder](torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(served, trained, rtol=1e-6, atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(2, 6), missing=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_subtraction_decoding_is_exact_for_a_linear_model(k, missing, seed):
    """With F linear and F_P = F, F_P(sum X_i) - sum_{i != j} F(X_i) = F(X_j) exactly."""
    missing %= k
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(10, 784))
    model = lambda x: x.reshape(*x.shape[:-3], 784) @ weights.T  # noqa: E731
    group = rng.random((k, 1, 28, 28))
    outputs = model(group)
    parity_output = model(parm.add_encode(group))
    present = np.arange(k) != missing
    decoded = parm.subtraction_decode(parity_output, outputs, present)
    np.testing.assert_allclose(decoded, outputs[missing], rtol=1e-9, atol=1e-9)


def test_decoding_a_query_padded_into_several_slots_divides_by_its_count():
    outputs = np.array([[1.0, 2.0], [5.0, 7.0], [5.0, 7.0]])  # slots: q0, q1, q1 (q1 repeated)
    parity_output = outputs.sum(0)
    present = np.array([True, False, False])
    np.testing.assert_allclose(parm.subtraction_decode(parity_output, outputs, present), [5.0, 7.0])


def test_scheme_encode_decode_shapes():
    scheme = get_scheme("parm", 2, {"encoder": "concat"})
    parity = scheme.encode(_group(2))
    assert parity.shape == (1, 1, 28, 28) and parity.dtype == np.float32
    outputs = RNG.random((2, 10), dtype=np.float32)
    rebuilt = scheme.decode(outputs, np.array([True, False]), RNG.random((1, 10), dtype=np.float32))
    assert rebuilt.shape == (10,) and rebuilt.dtype == np.float32


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: get_scheme("nope", 2), "unknown coding scheme"),
        (lambda: get_scheme("parm", 1), "k >= 2"),
        (lambda: get_scheme("parm", 3, {"encoder": "concat"}), "k in (2, 4)"),
        (lambda: get_scheme("parm", 2, {"encoder": "xor"}), "unknown ParM encoder"),
        (lambda: get_scheme("parm", 2).encode(_group(3)), "k=2 queries"),
        (lambda: get_scheme("parm", 2, {"encoder": "concat"}).encode(_group(2, h=27)), "even H, W"),
        (
            lambda: get_scheme("parm", 2).decode(np.zeros((2, 10)), np.array([True, True]), np.zeros((1, 10))),
            "nothing to decode",
        ),
        (
            lambda: get_scheme("parm", 2).decode(np.zeros((2, 10)), np.array([True, False]), np.zeros((1, 9))),
            "parity outputs of shape",
        ),
    ],
)
def test_bad_requests_raise_coding_errors_that_name_the_problem(call, message):
    with pytest.raises(CodingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
