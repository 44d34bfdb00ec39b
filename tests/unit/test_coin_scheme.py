"""COIN's serving side: a set route's slots and names, which member is recoverable, and the decode in
both output spaces."""

from __future__ import annotations

import numpy as np
import pytest

from coding.coin import CODED, CoinScheme, member_role, softmax
from coding.errors import CodingError
from coding.scheme import Arrivals, group_size
from coding.schemes import get_scheme
from frontend.core.routes import parse_route


def _arrivals(present, coded=True):
    return Arrivals(tuple(present), (coded,), tuple(range(len(present))))


def test_a_set_is_one_query_on_each_member_and_on_the_coded_model():
    scheme = CoinScheme(3)
    assert group_size(scheme) == 1 and not scheme.encodes
    assert [s.role for s in scheme.data_slots] == ["member0", "member1", "member2"]
    assert scheme.models("mnist_coin") == {
        "member0": "mnist_coin_m0",
        "member1": "mnist_coin_m1",
        "member2": "mnist_coin_m2",
        CODED: "mnist_coin_k3_fisher",
    }


def test_the_route_names_the_set_its_members_and_its_coded_model():
    route = parse_route("ens=coin:k=2,members=a+b,coded_model=c,space=probabilities,lambdas=0.25+0.75")
    assert route.k == 1 and route.models == {"member0": "a", "member1": "b", CODED: "c"}
    assert route.code_k == 2  # what the coding services are told: the set's two members
    assert route.code.lambdas == (0.25, 0.75) and route.code.space == "probabilities"
    assert parse_route("mnist_coin=coin:k=2,method=average").models[CODED] == "mnist_coin_k2_average"


@pytest.mark.parametrize(
    "params, message",
    [
        ({"space": "softmax"}, "space"),
        ({"method": "mean"}, "method"),
        ({"lambdas": "1+x"}, "lambdas"),
        ({"lambdas": "1+2+3"}, "weights"),
        ({"members": "a"}, "members"),
        ({"colour": "red"}, "unknown"),
    ],
)
def test_bad_set_parameters_are_named(params, message):
    with pytest.raises(CodingError, match=message):
        get_scheme("coin", 2, params)
    with pytest.raises(CodingError, match="k >= 2"):
        get_scheme("coin", 1, {})


def test_one_missing_member_is_recoverable_once_the_rest_and_the_coded_output_are_in():
    scheme = CoinScheme(3)
    assert scheme.recoverable(_arrivals([True, False, True])) == {1}
    assert scheme.recoverable(_arrivals([True, False, True], coded=False)) == set()
    assert scheme.recoverable(_arrivals([False, False, True])) == set()  # one coded model, one erasure


def test_the_logit_decode_inverts_an_exact_coded_model():
    rng = np.random.default_rng(0)
    members = [rng.standard_normal(10).astype(np.float32) for _ in range(3)]
    lam = (0.2, 0.3, 0.5)
    coded = sum(w * m for w, m in zip(lam, members, strict=True))
    scheme = CoinScheme(3, weights=lam)
    rebuilt, faulty = scheme.decode_slots([members[0], None, members[2]], [coded])
    np.testing.assert_allclose(rebuilt[1], members[1], rtol=1e-5, atol=1e-5)
    assert rebuilt[0] is members[0] and faulty == []


def test_the_probability_decode_inverts_an_exact_mixture_and_returns_log_probabilities():
    rng = np.random.default_rng(1)
    members = [rng.standard_normal(10).astype(np.float32) for _ in range(2)]
    mixture = 0.5 * softmax(members[0]) + 0.5 * softmax(members[1])
    scheme = CoinScheme(2, space="probabilities")
    rebuilt, _ = scheme.decode_slots([None, members[1]], [np.log(mixture)])  # softmax(log p) = p
    np.testing.assert_allclose(np.exp(rebuilt[0]), softmax(members[0]), rtol=1e-4, atol=1e-6)


def test_a_decode_without_the_coded_output_or_with_two_missing_members_is_an_error():
    scheme = CoinScheme(2)
    out = np.zeros(10, np.float32)
    with pytest.raises(CodingError, match="one missing member"):
        scheme.decode_slots([None, out], [None])
    with pytest.raises(CodingError, match="2 missing"):
        CoinScheme(3).decode_slots([None, None, out], [out])
    assert member_role(0) == "member0"


def test_a_set_baseline_sends_the_query_to_every_member_with_nothing_coded():
    route = parse_route("ens=hedge:members=a+b+c")
    assert route.dispatch.mode == "hedge" and not route.coded and not route.code.coded_slots
    assert route.models == {"member0": "a", "member1": "b", "member2": "c"}
    assert parse_route("mnist_cnn=none").models == {"deployed": "mnist_cnn"}
