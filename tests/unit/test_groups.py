"""The coding-group state machine: when a query is answered, decoded, or failed — and never twice."""

import numpy as np

from frontend.groups import Action, CodingGroup


def _group(k=2, n=2, coded=True):
    g = CodingGroup(group_id=7, k=k, coded=coded)
    for i in range(n):
        g.add(np.full((1, 2, 2), i, dtype=np.float32))
    return g


def _out(v):
    return np.full(3, float(v), dtype=np.float32)


def test_own_output_answers_the_query():
    g = _group()
    g.queries[0].output = _out(1)
    assert g.next_actions() == [(Action.ANSWER_OWN, g.queries[0])]


def test_a_straggler_is_decoded_once_the_rest_and_the_parity_are_in():
    g = _group()
    g.seal()
    q0, q1 = g.queries
    q1.straggling = True
    assert g.next_actions() == []  # nothing else in yet
    q0.output = _out(1)
    assert g.next_actions() == [(Action.ANSWER_OWN, q0)]
    q0.answered = True
    g.parity_output = _out(3)[None]
    assert g.next_actions() == [(Action.DECODE, q1)]
    q1.decoding = True
    assert g.next_actions() == []  # a decode in flight is not started twice


def test_a_late_query_is_not_decoded_before_its_straggler_deadline():
    g = _group()
    g.seal()
    g.queries[0].output = _out(1)
    g.queries[0].answered = True
    g.parity_output = _out(3)[None]
    assert g.next_actions() == []  # q1 is merely not back yet


def test_a_failed_query_with_a_lost_parity_fails_instead_of_hanging():
    g = _group()
    g.seal()
    g.queries[1].failed = True
    g.parity_failed = True
    assert g.next_actions() == [(Action.FAIL, g.queries[1])]


def test_two_losses_in_one_group_cannot_be_decoded():
    g = _group()
    g.seal()
    g.parity_output = _out(3)[None]
    g.queries[0].failed = True
    g.queries[1].failed = True
    assert {a for a, _ in g.next_actions()} == {Action.FAIL}


def test_an_uncoded_failure_fails_at_once():
    g = _group(k=1, n=1, coded=False)
    g.seal()
    g.queries[0].failed = True
    assert g.next_actions() == [(Action.FAIL, g.queries[0])]


def test_answered_queries_are_never_acted_on_again():
    g = _group()
    g.queries[0].output = _out(1)
    g.queries[0].answered = True
    assert g.next_actions() == []


def test_a_partial_group_is_padded_cyclically_and_decodes_the_repeated_query():
    g = _group(k=4, n=3)
    assert g.seal() == [0, 1, 2, 0]
    assert g.slot_inputs().shape == (4, 1, 2, 2)
    g.queries[1].output, g.queries[2].output = _out(1), _out(2)
    g.parity_output = _out(9)[None]
    outputs, present = g.decode_inputs(g.queries[0])
    assert present.tolist() == [False, True, True, False]
    assert outputs.shape == (4, 3)
