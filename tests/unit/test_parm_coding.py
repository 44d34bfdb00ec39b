"""ParM coding math: shapes, layout (for every k and any C x H x W), and exactness of subtraction decoding for a
linear model."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coding import parm, tiling
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


@pytest.mark.parametrize("encoder,k", [("add", 2), ("add", 3), ("add", 4), ("concat", 2), ("concat", 3), ("concat", 4)])
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


# any C x H x W the concatenation encoder takes: odd, even, non-square, as small as the grid allows
SHAPES = st.tuples(st.integers(1, 3), st.integers(2, 31), st.integers(2, 31))


def _cells(k: int, h: int, w: int) -> list[tuple[slice, slice]]:
    """Where query j's tile sits in the parity: k=2 left and right halves, k=3 and 4 quadrants TL, TR, BL(, BR)."""
    if k == 2:
        return [(slice(0, h), slice(0, w // 2)), (slice(0, h), slice(w // 2, 2 * (w // 2)))]
    th, tw = h // 2, w // 2
    quads = [(slice(0, th), slice(0, tw)), (slice(0, th), slice(tw, 2 * tw))]
    quads += [(slice(th, 2 * th), slice(0, tw)), (slice(th, 2 * th), slice(tw, 2 * tw))]
    return quads[:k]


@settings(max_examples=60, deadline=None)
@given(k=st.sampled_from([2, 3, 4]), shape=SHAPES, seed=st.integers(0, 2**16))
def test_concat_tiles_every_query_resized_into_its_cell_and_zeros_elsewhere(k, shape, seed):
    """The parity has a query's shape; query j, area-resized to its cell, sits in its own cell (k = 2: halves,
    k = 3, 4: quadrants TL, TR, BL, BR); everything else — the odd row or column, k = 3's fourth quadrant — is 0."""
    c, h, w = shape
    group = np.random.default_rng(seed).random((k, c, h, w), dtype=np.float32) + 0.5  # never 0
    parity = get_scheme("parm", k, {"encoder": "concat"}).encode(group)[0]
    assert parity.shape == (c, h, w) and parity.dtype == np.float32
    covered = np.zeros((h, w), bool)
    for j, (rows, cols) in enumerate(_cells(k, h, w)):
        th, tw = rows.stop - rows.start, cols.stop - cols.start
        np.testing.assert_allclose(parity[:, rows, cols], tiling.resize(group[j], th, tw), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(parity[:, rows, cols].mean(), group[j].mean(), rtol=1e-4)  # area: mean kept
        covered[rows, cols] = True
    assert not parity[:, ~covered].any()


@settings(max_examples=40, deadline=None)
@given(k=st.sampled_from([2, 3, 4]), shape=SHAPES, batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_training_batches_and_serving_groups_encode_alike_for_any_shape(k, shape, batch, seed):
    """Training encodes a batch (B, k, C, H, W) with torch; serving one group (k, C, H, W) with numpy."""
    groups = np.random.default_rng(seed).random((batch, k, *shape), dtype=np.float32)
    trained = parm.concat_encode(torch.from_numpy(groups)).numpy()
    served = np.stack([get_scheme("parm", k, {"encoder": "concat"}).encode(g)[0] for g in groups])
    np.testing.assert_allclose(trained, served, rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    encoder=st.sampled_from(["add", "concat"]),
    k=st.sampled_from([2, 3, 4]),
    shape=SHAPES,
    missing=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_decoding_is_exact_for_a_linear_model_for_every_k_and_shape(encoder, k, shape, missing, seed):
    """Through the scheme's own encode and decode. Addition: F linear and F_P = F. Concatenation: F linear in
    the query's tile-sized resize (F(X) = W · resize(X)) and F_P(P) = the sum of W over every cell of P's grid
    (k = 3's empty fourth quadrant included) — the parity model a perfect trainer would find; both make
    F_P(P) = Σ F(X_i), so the decoder returns F(X_j) exactly."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    scheme = get_scheme("parm", k, {"encoder": encoder})
    group = rng.random((k, c, h, w))
    if encoder == "add":
        weights = rng.normal(size=(5, c * h * w))
        model = lambda x: x.reshape(len(x), -1) @ weights.T  # noqa: E731
        parity_model = model
    else:
        cells = _cells(max(k, 4) if k > 2 else 2, h, w)  # the whole grid
        th, tw = cells[0][0].stop - cells[0][0].start, cells[0][1].stop - cells[0][1].start
        weights = rng.normal(size=(5, c * th * tw))
        model = lambda x: tiling.resize(x, th, tw).reshape(len(x), -1) @ weights.T  # noqa: E731

        def parity_model(p: np.ndarray) -> np.ndarray:
            return sum(p[:, :, rows, cols].reshape(len(p), -1) @ weights.T for rows, cols in cells)

    outputs = model(group)
    parity_output = parity_model(scheme.encode(group.astype(np.float32)).astype(np.float64))
    present = np.arange(k) != missing % k
    decoded = scheme.decode(outputs.astype(np.float32), present, parity_output.astype(np.float32))
    np.testing.assert_allclose(decoded, outputs[missing % k], rtol=1e-3, atol=1e-3 * np.abs(outputs).max())


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 5), max_size=4).map(tuple), k=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_the_addition_encoder_takes_any_query_shape(shape, k, seed):
    group = np.random.default_rng(seed).random((k, *shape), dtype=np.float32)
    scheme = get_scheme("parm", k, {"encoder": "add"})
    assert scheme.rejects(shape) is None
    np.testing.assert_allclose(scheme.encode(group)[0], group.sum(0), rtol=1e-6)


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
        (lambda: get_scheme("parm", 5, {"encoder": "concat"}), "k in (2, 3, 4)"),
        (lambda: get_scheme("parm", 2, {"encoder": "xor"}), "unknown ParM encoder"),
        (lambda: get_scheme("parm", 2).encode(_group(3)), "k=2 queries"),
        (
            lambda: get_scheme("parm", 4, {"encoder": "concat"}).encode(_group(4, h=1, w=1)),
            "concat k=4 needs H >= 2 and W >= 2, got 1x1",
        ),
        (
            lambda: get_scheme("parm", 3, {"encoder": "concat"}).encode(_group(3, h=5, w=1)),
            "concat k=3 needs H >= 2 and W >= 2, got 5x1",
        ),
        (
            lambda: get_scheme("parm", 2, {"encoder": "concat"}).encode(_group(2, h=1, w=1)),
            "concat k=2 needs H >= 1 and W >= 2, got 1x1",
        ),
        (
            lambda: get_scheme("parm", 2, {"encoder": "concat"}).encode(np.zeros((2, 7), np.float32)),
            "with H and W axes",
        ),
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
