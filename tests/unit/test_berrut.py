"""Berrut coding (ApproxIFER): exact at the nodes, collision-free nodes, linear decoding, the error locator."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coding import berrut
from coding.approxifer import ApproxiferScheme, min_workers
from coding.errors import CodingError
from coding.schemes import get_scheme

# nodes on a 0.01 grid in [-10, 10]: any spacing float64 can resolve; x anywhere, including on a node
distinct_nodes = st.lists(st.integers(-1000, 1000), min_size=1, max_size=12, unique=True).map(
    lambda ints: [i / 100 for i in ints]
)


def _linear_outputs(k: int, n: int, rng: np.random.Generator, systematic: bool = False):
    """A linear model's true outputs F (k, 10) and its outputs on the n coded queries, G @ F."""
    weights = rng.normal(size=(10, 16))
    queries = rng.random((k, 16))
    coded = berrut.encode(queries, n, systematic).astype(np.float64)
    return queries @ weights.T, coded @ weights.T


@settings(max_examples=60, deadline=None)
@given(nodes=distinct_nodes, seed=st.integers(0, 2**16))
def test_interpolation_reproduces_its_nodes_exactly(nodes, seed):
    nodes = np.array(nodes)
    values = np.random.default_rng(seed).normal(size=(len(nodes), 3))
    np.testing.assert_array_equal(berrut.berrut_weights(nodes, nodes), np.eye(len(nodes)))
    np.testing.assert_array_equal(berrut.interpolate(nodes, values, nodes), values)


@settings(max_examples=60, deadline=None)
@given(
    nodes=distinct_nodes,
    x=st.lists(st.floats(-20, 20) | st.integers(-1000, 1000).map(lambda i: i / 100), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
)
def test_weights_sum_to_one_and_ignore_the_order_of_the_nodes(nodes, x, seed):
    """Signs alternate by position in the *sorted* node list, so listing the nodes in any order is the same."""
    nodes, x = np.array(nodes), np.array(x)
    perm = np.random.default_rng(seed).permutation(len(nodes))
    w = berrut.berrut_weights(nodes, x)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(berrut.berrut_weights(nodes[perm], x), w[:, perm], rtol=1e-12)


def test_nodes_never_collide_for_any_k_and_n_up_to_64():
    for k in range(1, 65):
        alpha = berrut.data_nodes(k)
        for n in range(1, 65):
            beta = berrut.worker_nodes(n)
            assert np.all(np.diff(beta) > 0), (k, n)
            assert np.abs(alpha[:, None] - beta[None, :]).min() > 1e-6, (k, n)
            if n >= k:
                assert len(np.unique(berrut.coded_nodes(k, n, systematic=True))) == n, (k, n)


def test_the_published_odd_k_collision_is_gone():
    """cos(i pi / N) with N = K+1 hits alpha = 0 for every odd K; these nodes decode there."""
    k, n = 11, 12
    _, outputs = _linear_outputs(k, n, np.random.default_rng(0))
    assert np.isfinite(berrut.decode(outputs, np.arange(n), k, n)).all()


@settings(max_examples=25, deadline=None)
@given(k=st.integers(3, 16), seed=st.integers(0, 2**16))
def test_decoding_a_linear_model_converges_as_n_grows(k, seed):
    rng = np.random.default_rng(seed)
    weights, queries = rng.normal(size=(10, 16)), rng.random((k, 16))
    true = queries @ weights.T
    errors = []
    for n in (k + 1, 2 * k, 4 * k, 16 * k):
        outputs = berrut.encode(queries, n).astype(np.float64) @ weights.T
        decoded = berrut.decode(outputs, np.arange(n), k, n)
        errors.append(np.linalg.norm(decoded - true) / np.linalg.norm(true))
    # From N = K + 1 to 2K the error may rise a little (3 draws in 4,200 over K = 3..16, e.g. K = 14, seed 1267:
    # .033 -> .036); from 2K on it falls at every step, and from 4K on it is below N = K + 1's.
    assert errors[3] < errors[2] < errors[1] and errors[2] < errors[0], errors
    assert errors[-1] < 0.02, errors


def test_decode_takes_any_subset_in_any_order():
    k, n = 6, 9
    _, outputs = _linear_outputs(k, n, np.random.default_rng(1))
    arrived = np.array([7, 2, 5, 0])
    a = berrut.decode(outputs[arrived], arrived, k, n)
    b = berrut.decode(outputs[np.sort(arrived)], np.sort(arrived), k, n)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    one = berrut.decode(outputs[[3]], [3], k, n)  # a single output: every answer is that output
    np.testing.assert_allclose(one, np.repeat(outputs[[3]], k, 0), rtol=1e-6)


def test_encode_shapes_and_dtypes():
    scheme = ApproxiferScheme(k=4, s=1)
    coded = scheme.encode(np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32))
    assert coded.shape == (5, 1, 28, 28) and coded.dtype == np.float32
    decoded = scheme.decode(np.ones((4, 10), np.float32), [0, 1, 3, 4])
    assert decoded.shape == (4, 10) and decoded.dtype == np.float32


QUERY_SHAPES = st.lists(st.integers(1, 6), max_size=4).map(tuple)  # scalars, vectors, C x H x W, ...


@settings(max_examples=60, deadline=None)
@given(shape=QUERY_SHAPES, k=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_interpolation_reproduces_its_nodes_for_any_shape(shape, k, seed):
    """The interpolant through (alpha_j, X_j) is X_j at alpha_j exactly, whatever X_j's shape; systematic
    encoding hands the originals to workers 0..k-1 unchanged."""
    queries = np.random.default_rng(seed).random((k, *shape), dtype=np.float32)
    alpha = berrut.data_nodes(k)
    back = berrut.interpolate(alpha, queries, alpha)
    assert back.shape == (k, *shape)
    np.testing.assert_array_equal(back, queries)
    scheme = ApproxiferScheme(k=k, s=1, systematic=True)
    assert scheme.rejects(shape) is None
    np.testing.assert_array_equal(scheme.encode(queries)[:k], queries)


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 5, 7), (1, 9, 4), (17,)])
def test_every_element_of_any_shape_is_coded_with_the_same_weights(shape):
    """Coded query i is Σ_j G_ij X_j element by element (G = Berrut's basis from alpha to the worker nodes), so a
    linear model's outputs on the coded queries are G times its outputs on the originals, and decoding them from
    every worker equals decoding G F(X) — for 3 x 32 x 32, non-square and flat queries alike."""
    k, n = 5, 7
    rng = np.random.default_rng(0)
    queries = rng.random((k, *shape), dtype=np.float32)
    scheme = ApproxiferScheme(k=k, n=n, s=1)
    coded = scheme.encode(queries)
    assert coded.shape == (n, *shape) and coded.dtype == np.float32
    gram = berrut.berrut_weights(berrut.data_nodes(k), berrut.worker_nodes(n))
    np.testing.assert_allclose(coded, np.tensordot(gram, queries, axes=1), rtol=1e-5, atol=1e-6)
    weights = rng.normal(size=(10, int(np.prod(shape))))
    model = lambda x: x.reshape(len(x), -1).astype(np.float64) @ weights.T  # noqa: E731
    np.testing.assert_allclose(model(coded), gram @ model(queries), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        scheme.decode(model(coded).astype(np.float32), np.arange(n)),
        berrut.decode(gram @ model(queries), np.arange(n), k, n),
        rtol=1e-4,
        atol=1e-4,
    )


def test_systematic_serves_the_originals_and_interpolates_only_the_missing():
    k, n = 5, 7
    scheme = ApproxiferScheme(k=k, n=n, s=2, systematic=True)
    queries = np.random.default_rng(2).random((k, 1, 4, 4), dtype=np.float32)
    coded = scheme.encode(queries)
    np.testing.assert_array_equal(coded[:k], queries)
    true, outputs = _linear_outputs(k, n, np.random.default_rng(3), systematic=True)
    arrived = np.array([0, 2, 3, 5, 6])  # originals 1 and 4 straggle
    decoded = scheme.decode(outputs[arrived].astype(np.float32), arrived)
    np.testing.assert_allclose(decoded[[0, 2, 3]], true[[0, 2, 3]], rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(2, 12),
    a=st.integers(1, 3),
    attack=st.sampled_from(["flip", "noise"]),
    systematic=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_locator_finds_planted_workers_on_a_linear_model(k, a, attack, systematic, seed):
    rng = np.random.default_rng(seed)
    scheme = ApproxiferScheme(k=k, s=1, a=a, systematic=systematic)
    n = scheme.workers
    true, outputs = _linear_outputs(k, n, rng, systematic)
    arrived = rng.permutation(n)[: n - 1]  # one straggler, arrival order shuffled
    y = outputs[arrived].copy()
    bad = rng.choice(len(arrived), a, replace=False)
    y[bad] = -y[bad] if attack == "flip" else y[bad] + rng.normal(0, 10, y[bad].shape)
    assert scheme.locate(y, arrived) == sorted(arrived[bad].tolist())
    clean = ~np.isin(np.arange(len(arrived)), bad)
    expected = berrut.decode(outputs[arrived[clean]], arrived[clean], k, n, systematic)
    np.testing.assert_allclose(scheme.decode(y, arrived), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attack", ["flip", "noise"])
def test_locator_finds_planted_workers_on_a_smooth_nonlinear_model(attack):
    """f = 3 tanh(W x): honest outputs are near, not in, the code; a flipped or noisy one stands out.

    Each attack moves one output by the size of an output or more (a flip by twice it; noise of scale 10 against
    outputs bounded by 3), far beyond an honest output's distance from the code: every planted worker is found."""
    rng = np.random.default_rng(0)
    k, a = 8, 1
    n = min_workers(k, 1, a)
    weights = rng.normal(size=(10, 20)) / np.sqrt(20)
    missed = []
    for trial in range(50):
        outputs = 3 * np.tanh(berrut.encode(rng.random((k, 20)), n).astype(np.float64) @ weights.T)
        arrived = np.sort(rng.choice(n, n - 1, replace=False))
        y, bad = outputs[arrived], int(rng.integers(len(arrived)))
        y[bad] = -y[bad] if attack == "flip" else y[bad] + rng.normal(0, 10, y.shape[1])
        if (located := berrut.locate(y, arrived, k, n, a)) != [int(arrived[bad])]:
            missed.append((trial, int(arrived[bad]), located))
    assert missed == []


def test_no_byzantine_workers_locates_nothing():
    assert ApproxiferScheme(k=3, s=1).locate(np.zeros((3, 10)), [0, 1, 2]) == []


def test_locator_drops_only_workers_with_evidence_against_them():
    """Clean outputs: nothing dropped. One attacker with a = 3: only it. min_evidence=0: always a workers."""
    k, a = 5, 3
    n = min_workers(k, 1, a)
    _, outputs = _linear_outputs(k, n, np.random.default_rng(7))
    arrived = np.arange(n - 1)
    assert berrut.locate(outputs[arrived], arrived, k, n, a) == []
    y = outputs[arrived].copy()
    y[4] = -y[4]
    assert berrut.locate(y, arrived, k, n, a) == [4]
    assert len(berrut.locate(y, arrived, k, n, a, min_evidence=0)) == a


OUT = np.zeros((4, 10), np.float32)


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: ApproxiferScheme(k=0), "k >= 1"),
        (lambda: ApproxiferScheme(k=4, s=-1), "must be >= 0"),
        (lambda: ApproxiferScheme(k=4, a=-2), "must be >= 0"),
        (lambda: ApproxiferScheme(k=4, n=4, s=1), "need n >= k+s = 5"),
        (lambda: ApproxiferScheme(k=12, n=25, s=1, a=1), "need n >= 2k+2a+s-1 = 26"),
        (lambda: ApproxiferScheme(k=4).encode(np.zeros((3, 1, 28, 28))), "shape (k=4, ...), got [3, 1, 28, 28]"),
        (lambda: ApproxiferScheme(k=4).encode(np.zeros(())), "shape (k=4, ...), got []"),
        (lambda: ApproxiferScheme(k=4).decode(OUT, [0, 1, 1, 2]), "duplicate worker indices"),
        (lambda: ApproxiferScheme(k=4).decode(OUT, [0, 1, 2, 5]), "must lie in [0, n=5)"),
        (lambda: ApproxiferScheme(k=4).decode(OUT, [-1, 1, 2, 3]), "must lie in [0, n=5)"),
        (lambda: ApproxiferScheme(k=4).decode(OUT[:3], [0, 1, 2]), "fewer than needed: n - s = 5 - 1 = 4"),
        (lambda: ApproxiferScheme(k=4).decode(OUT, [0, 1, 2]), "for 3 worker indices"),
        (lambda: ApproxiferScheme(k=4).decode(OUT[:, :, None], [0, 1, 2, 3]), "(m=4, classes)"),
        (lambda: ApproxiferScheme(k=4).decode(OUT, [0.0, 1.0, 2.0, 3.0]), "list of integers"),
        (lambda: berrut.berrut_weights(np.array([0.1, 0.1]), np.array([0.0])), "distinct nodes"),
        (lambda: berrut.locate(OUT, np.arange(4), 3, 5, 1), "needs at least k + 2a = 5 outputs"),
        (lambda: get_scheme("approxifer", 4, {"s": "one"}), "s='one' is not an integer"),
        (lambda: get_scheme("approxifer", 4, {"systematic": "maybe"}), "not a boolean"),
        (lambda: get_scheme("approxifer", 4, {"encoder": "add"}), "unknown ['encoder']"),
        (lambda: get_scheme("approxifer", 4, {"n": "4"}), "need n >= k+s = 5"),
    ],
)
def test_bad_inputs_raise_coding_errors_that_name_the_problem(build, message):
    with pytest.raises(CodingError) as info:
        build()
    assert message in str(info.value)


def test_registry_builds_the_scheme_from_string_params():
    scheme = get_scheme("approxifer", 12, {"s": "1", "a": "2"})
    assert isinstance(scheme, ApproxiferScheme) and scheme.name == "approxifer"
    assert (scheme.k, scheme.n, scheme.s, scheme.a, scheme.systematic) == (12, 28, 1, 2, False)
    assert get_scheme("approxifer", 8).n == 9
    assert get_scheme("approxifer", 8, {"n": "12", "s": "3", "systematic": "true"}).systematic
    assert get_scheme("parm", 2).name == "parm"


def test_locator_falls_back_to_greedy_search_when_subsets_are_many(monkeypatch):
    monkeypatch.setattr(berrut, "_MAX_SUBSETS", 0)
    rng = np.random.default_rng(5)
    k, a = 6, 3
    n = min_workers(k, 1, a)
    _, outputs = _linear_outputs(k, n, rng)
    arrived = np.arange(1, n)
    y = outputs[arrived].copy()
    y[[0, 4, 9]] = -y[[0, 4, 9]]
    assert berrut.locate(y, arrived, k, n, a) == [1, 5, 10]
