"""The coding-group state machine: when a query is answered, decoded, or failed — and never twice."""

import numpy as np

from coding.layout import GroupLayout
from frontend.groups import UNCODED, Action, CodingGroup


def _group(k=2, n=2, coded=True):
    layout = GroupLayout(k=k, parities=1, systematic=True, parity_model=True, needed=k) if coded else UNCODED
    g = CodingGroup(group_id=7, layout=layout)
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
    g.parity_outputs = [_out(3)]
    assert g.next_actions() == [(Action.DECODE, q1)]
    q1.decoding = True
    assert g.next_actions() == []  # a decode in flight is not started twice


def test_a_late_query_is_not_decoded_before_its_straggler_deadline():
    g = _group()
    g.seal()
    g.queries[0].output = _out(1)
    g.queries[0].answered = True
    g.parity_outputs = [_out(3)]
    assert g.next_actions() == []  # q1 is merely not back yet


def test_a_failed_query_with_a_lost_parity_fails_instead_of_hanging():
    g = _group()
    g.seal()
    g.queries[1].failed = True
    g.parity_failed = [True]
    assert g.next_actions() == [(Action.FAIL, g.queries[1])]


def test_two_losses_in_one_group_cannot_be_decoded():
    g = _group()
    g.seal()
    g.parity_outputs = [_out(3)]
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
    g.parity_outputs = [_out(9)]
    outputs, present, parity, parity_present = g.decode_inputs()
    assert present.tolist() == [False, True, True, False]
    assert outputs.shape == (4, 3) and parity.shape == (1, 3) and parity_present.tolist() == [True]
    g.queries[0].straggling = True
    assert (Action.DECODE, g.queries[0]) in g.next_actions()


def _berrut_group(k=2, parities=3, needed=2):
    """Non-systematic (ApproxIFER-like): no own calls, every answer decoded from the coded outputs."""
    g = CodingGroup(group_id=1, layout=GroupLayout(k, parities, systematic=False, parity_model=False, needed=needed))
    for i in range(k):
        g.add(np.full((1, 2, 2), i, dtype=np.float32))
    g.seal()
    return g


def test_non_systematic_waits_for_every_coded_output_until_the_straggler_deadline():
    g = _berrut_group()
    g.parity_outputs[0], g.parity_outputs[1] = _out(1), _out(2)
    assert g.next_actions() == []  # enough to decode, but the third may still come and decode better
    g.queries[0].straggling = True
    assert g.next_actions() == [(Action.DECODE, g.queries[0])]
    g.parity_outputs[2] = _out(3)
    assert {q.index for _, q in g.next_actions()} == {0, 1}  # everything in: decode all at once


def test_non_systematic_fails_when_too_few_coded_outputs_can_ever_arrive():
    g = _berrut_group()
    g.parity_failed = [True, True, False]
    assert [a for a, _ in g.next_actions()] == [Action.FAIL, Action.FAIL]
