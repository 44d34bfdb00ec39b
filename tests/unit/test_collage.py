"""Collage-CNN: the tiling (numpy and torch alike, cells round-trip to their source images at the documented
resolution for any s and C x H x W, partial groups), the decoder's cell selection, the route, and the collage
model's ONNX output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from coding import collage
from coding.errors import CodingError
from coding.scheme import Arrivals
from frontend.core.actions import Encode
from frontend.core.groups import CodingGroup
from frontend.core.placement import Placer
from frontend.core.routes import parse_route

RNG = np.random.default_rng(0)


def _images(n: int, shape: tuple[int, int, int] = (1, 28, 28)) -> np.ndarray:
    return RNG.random((n, *shape), dtype=np.float32)


def test_the_area_resize_averages_what_each_pixel_covers():
    np.testing.assert_allclose(collage.area_matrix(28, 9).sum(1), 1.0, rtol=1e-6)
    x = _images(1)[0, 0]
    two = collage.area_matrix(28, 14) @ x @ collage.area_matrix(28, 14).T
    np.testing.assert_allclose(two, x.reshape(14, 2, 14, 2).mean((1, 3)), rtol=1e-5, atol=1e-6)  # 2x2 pooling


@pytest.mark.parametrize("s", collage.SIDES)
def test_each_cell_holds_its_query_resized_to_a_tile_row_major(s):
    group = _images(s * s)
    tiled = collage.tile(group, s)
    t = 28 // s
    assert tiled.shape == (1, 28, 28)
    for j in range(s * s):
        np.testing.assert_allclose(collage.cell(tiled, s, j), collage.resized(group[j], s), rtol=1e-5, atol=1e-6)
        r, c = divmod(j, s)
        np.testing.assert_array_equal(tiled[:, r * t : (r + 1) * t, c * t : (c + 1) * t], collage.cell(tiled, s, j))
    assert not tiled[:, s * t :, :].any() and not tiled[:, :, s * t :].any()  # 28 - 3 * 9 = 1 px left at 0


@pytest.mark.parametrize("s", collage.SIDES)
def test_training_and_serving_tile_alike(s):
    groups = _images(2 * s * s).reshape(2, s * s, 1, 28, 28)
    np.testing.assert_allclose(
        collage.tile(torch.from_numpy(groups), s).numpy(), collage.tile(groups, s), rtol=1e-5, atol=1e-6
    )


def _cell_reader(s: int):
    """A "collage model" that is the identity on cells: row j of its output is cell j of the collage, flattened."""
    return lambda collage_: np.stack([collage.cell(collage_, s, j).ravel() for j in range(s * s)])


@settings(max_examples=50, deadline=None)
@given(
    s=st.sampled_from(collage.SIDES),
    shape=st.tuples(st.integers(1, 3), st.integers(4, 40), st.integers(4, 40)),
    missing=st.sets(st.integers(0, 15), min_size=1),
    seed=st.integers(0, 2**16),
)
def test_cells_round_trip_through_the_scheme_for_any_s_and_shape(s, shape, missing, seed):
    """Encode with the scheme, run a model that is the identity on cells, decode the missing slots: each comes
    back as its own query area-resized to an (H // s) x (W // s) cell; the rows and columns left over are 0."""
    c, h, w = shape
    scheme = collage.CollageScheme(s)
    group = np.random.default_rng(seed).random((s * s, c, h, w), dtype=np.float32) + 0.5  # never 0
    (coded,) = scheme.coded_inputs(group)
    assert coded.shape == shape and coded.dtype == np.float32
    th, tw = h // s, w // s
    assert not coded[:, s * th :, :].any() and not coded[:, :, s * tw :].any()
    assert coded[:, : s * th, : s * tw].all()
    missing = {j % (s * s) for j in missing}
    outputs = [None if j in missing else np.zeros(c * th * tw, np.float32) for j in range(s * s)]
    rebuilt, faulty = scheme.decode_slots(outputs, [_cell_reader(s)(coded)])
    assert faulty == []
    for j in missing:
        expected = collage.area_matrix(h, th) @ group[j] @ collage.area_matrix(w, tw).T
        np.testing.assert_allclose(rebuilt[j].reshape(c, th, tw), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rebuilt[j].mean(), group[j].mean(), rtol=1e-4)  # an area resize keeps the mean


@pytest.mark.parametrize(
    "s,shape,message",
    [
        (4, (1, 3, 28), "collage s=4 needs H >= 4 and W >= 4, got 3x28"),
        (2, (28, 28), "collage s=2 needs queries of shape (C, H, W), got [28, 28]"),
        (3, (3, 2, 2), "collage s=3 needs H >= 3 and W >= 3, got 2x2"),
    ],
)
def test_a_shape_too_small_for_the_grid_is_named(s, shape, message):
    scheme = collage.CollageScheme(s)
    assert scheme.rejects(shape) == message
    with pytest.raises(CodingError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        scheme.coded_inputs(np.zeros((s * s, *shape), np.float32))
    assert scheme.rejects((3, 32, 32)) is None


def test_a_partial_group_fills_its_empty_cells_with_its_own_queries():
    scheme = collage.CollageScheme(2)
    group = CodingGroup(0, scheme, scheme.models("mnist_cnn"), Placer({"mnist_cnn": (0, 1), "mnist_collage_s2": (2,)}))
    for x in _images(3):
        group.add(x, 1.0, None)
    (encode,) = [a for a in group.seal() if isinstance(a, Encode)]
    coded = scheme.coded_inputs(encode.inputs)
    np.testing.assert_array_equal(collage.cell(coded[0], 2, 3), collage.cell(coded[0], 2, 0))  # cell 3 = query 0


def test_the_decoder_reads_a_missing_query_off_its_own_cell():
    scheme = collage.CollageScheme(2)
    cells = np.arange(40, dtype=np.float32).reshape(4, 10)
    own = np.full(10, -1.0, np.float32)
    rebuilt, faulty = scheme.decode_slots([own, None, None, own], [cells])
    np.testing.assert_array_equal(rebuilt[1], cells[1])
    np.testing.assert_array_equal(rebuilt[2], cells[2])
    np.testing.assert_array_equal(rebuilt[0], own)
    assert faulty == []
    assert scheme.recoverable(Arrivals((True, False, False, True), (True,), (0, 1, 2, 3))) == {1, 2}
    assert scheme.recoverable(Arrivals((True, False, True, True), (False,), (0, 1, 2, 3))) == frozenset()
    with pytest.raises(CodingError, match="4 cells"):
        scheme.decode_slots([None, own, own, own], [cells[:3]])


def test_a_collage_route_names_its_model_and_counts_s_squared_queries():
    route = parse_route("mnist_cnn=collage:s=3")
    assert route.k == 9 and route.models == {"deployed": "mnist_cnn", "collage": "mnist_collage_s3"}
    assert route.code.coded_output_shape(0, (10,)) == (9, 10)
    assert parse_route("m=collage:k=4").code.s == 2
    assert parse_route("m=collage:k=16").code.s == 4
    for bad in ("m=collage:s=5", "m=collage:k=5"):
        with pytest.raises(ValueError, match="collage"):
            parse_route(bad)


@pytest.mark.parametrize("s,shape,classes", [(2, (1, 28, 28), 10), (3, (1, 28, 28), 10), (4, (3, 18, 29), 7)])
def test_the_collage_models_onnx_output_matches_torch(tmp_path, s, shape, classes):
    from export.collage import CollageNet
    from export.onnx_export import check_onnx, export_onnx

    model = CollageNet(s, mean=0.1, std=0.3, shape=shape, classes=classes).eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, path, shape)
    batch = np.stack([collage.tile(_images(s * s, shape), s) for _ in range(3)])
    assert check_onnx(model, path, batch) < 1e-4
    with torch.no_grad():
        assert model(torch.from_numpy(batch)).shape == (3, s * s, classes)


def test_the_collage_model_classifies_each_cell_alone():
    """Changing one cell's pixels changes only that cell's row of the output (3 x 17 x 25, s = 3)."""
    from export.collage import CollageNet

    model = CollageNet(3, shape=(3, 17, 25), classes=4).eval()
    group = _images(9, (3, 17, 25))
    x = torch.from_numpy(collage.tile(group, 3)[None])
    other = group.copy()
    other[4] = _images(1, (3, 17, 25))[0]
    y = torch.from_numpy(collage.tile(other, 3)[None])
    with torch.no_grad():
        changed = (model(x) - model(y)).abs().amax(-1)[0]
    assert changed[4] > 0 and not changed[np.arange(9) != 4].any()
