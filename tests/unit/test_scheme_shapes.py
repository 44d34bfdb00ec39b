"""Which query shapes each scheme accepts, said in one place (``Scheme.rejects``) and enforced by its encoder with
the same reason: no scheme assumes 1 x 28 x 28 or 10 classes."""

from __future__ import annotations

import numpy as np
import pytest

from coding.errors import CodingError
from coding.scheme import Uncoded, check_shape
from coding.schemes import get_scheme

SCHEMES = [
    ("parm", 2, {"encoder": "add"}),
    ("parm", 3, {"encoder": "add"}),
    ("parm", 2, {"encoder": "concat"}),
    ("parm", 3, {"encoder": "concat"}),
    ("parm", 4, {"encoder": "concat"}),
    ("collage", 4, {}),
    ("collage", 9, {}),
    ("collage", 16, {}),
    ("approxifer", 3, {}),
    ("approxifer", 3, {"systematic": "true"}),
    ("coin", 2, {}),
]
SHAPES = [(1, 28, 28), (3, 32, 32), (3, 17, 40), (2, 1, 1), (1, 3, 3), (5, 2), (784,), ()]
TOO_SMALL = {
    ("parm", 2, "concat", (2, 1, 1)): "concat k=2 needs H >= 1 and W >= 2, got 1x1",
    ("parm", 3, "concat", (2, 1, 1)): "concat k=3 needs H >= 2 and W >= 2, got 1x1",
    ("parm", 4, "concat", (2, 1, 1)): "concat k=4 needs H >= 2 and W >= 2, got 1x1",
    ("collage", 16, "", (1, 3, 3)): "collage s=4 needs H >= 4 and W >= 4, got 3x3",
}


@pytest.mark.parametrize("name,k,params", SCHEMES)
def test_every_scheme_takes_three_channel_and_non_square_images(name, k, params):
    scheme = get_scheme(name, k, params)
    for shape in [(3, 32, 32), (3, 17, 40), (1, 28, 28), (4, 64, 48)]:
        assert scheme.rejects(shape) is None, (name, params, shape)


@pytest.mark.parametrize("name,k,params", SCHEMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_encoder_refuses_exactly_what_rejects_names_with_the_same_reason(name, k, params, shape):
    """One place: ``coded_inputs`` succeeds, with coded inputs of the query's own shape, iff ``rejects`` is None;
    otherwise it raises a CodingError carrying ``rejects``' reason, as ``check_shape`` does."""
    scheme = get_scheme(name, k, params)
    group = np.random.default_rng(0).random((k, *shape), dtype=np.float32)
    problem = scheme.rejects(shape)
    if problem is None:
        check_shape(scheme, shape)
        coded = scheme.coded_inputs(group)
        assert coded.shape[1:] == shape and coded.dtype == np.float32
        return
    with pytest.raises(CodingError) as raised:
        scheme.coded_inputs(group)
    assert problem in str(raised.value)
    with pytest.raises(CodingError, match=f"^{name}: "):
        check_shape(scheme, shape)


@pytest.mark.parametrize("key,message", TOO_SMALL.items())
def test_a_too_small_image_is_named_with_its_size(key, message):
    name, k, encoder, shape = key
    scheme = get_scheme(name, k, {"encoder": encoder} if encoder else {})
    assert scheme.rejects(shape) == message


def test_only_the_grid_schemes_need_image_axes():
    """Addition, Berrut and COIN code any tensor; concatenation and collage need (..., H, W) / (C, H, W)."""
    for shape in [(784,), (5, 2, 3, 4), ()]:
        for name, k, params in [("parm", 2, {"encoder": "add"}), ("approxifer", 3, {}), ("coin", 2, {})]:
            assert get_scheme(name, k, params).rejects(shape) is None
    assert "H and W axes" in get_scheme("parm", 2, {"encoder": "concat"}).rejects((784,))
    assert "(C, H, W)" in get_scheme("collage", 4, {}).rejects((28, 28))
    assert Uncoded().rejects((7,)) is None
