"""A data call that fails in transport (its Triton instance died or is unreachable) is sent once more
to another instance, within its query's deadline; never twice, never for a model error."""

from __future__ import annotations

import numpy as np

from coding.parm import ParmScheme
from coding.scheme import Uncoded
from frontend.core.actions import Answer, Decode, Fail, Infer
from frontend.core.groups import CodingGroup
from frontend.core.placement import Placer

MODELS = {"deployed": "m", "parity": "p"}
DEADLINE = 10.0


def _group(scheme, instances=(0, 1)):
    return CodingGroup(0, scheme, MODELS, Placer({"m": instances, "p": instances}))


def _add(group, n=1):
    infers = []
    for i in range(n):
        _, actions = group.add(np.full((1, 2, 2), i, np.float32), DEADLINE, ticket=i)
        infers += [a for a in actions if isinstance(a, Infer)]
    return infers


def test_an_uncoded_call_lost_in_transport_is_answered_from_another_instance_once():
    group = _group(Uncoded())
    (first,) = _add(group)
    (retry,) = group.failed(first.handle, "m at t1: UNAVAILABLE: Socket closed", retry_at=1.0)
    assert isinstance(retry, Infer) and retry.handle is first.handle and retry.instance != first.instance
    (answer,) = group.arrived(retry.handle, np.ones(3, np.float32))
    assert isinstance(answer, Answer) and answer.ticket == 0 and not answer.outputs[0].reconstructed


def test_the_retry_is_made_once_and_its_failure_is_final():
    group = _group(Uncoded())
    (first,) = _add(group)
    (retry,) = group.failed(first.handle, "UNAVAILABLE", retry_at=1.0)
    (fail,) = group.failed(retry.handle, "UNAVAILABLE again", retry_at=1.1)
    assert isinstance(fail, Fail) and fail.ticket == 0 and "UNAVAILABLE again" in fail.reason


def test_no_retry_past_the_deadline_without_another_instance_or_for_a_model_error():
    for group, retry_at in ((_group(Uncoded()), DEADLINE), (_group(Uncoded(), (0,)), 1.0), (_group(Uncoded()), None)):
        (first,) = _add(group)
        (fail,) = group.failed(first.handle, "lost", retry_at=retry_at)
        assert isinstance(fail, Fail)


def test_a_coded_group_that_lost_two_calls_on_one_instance_retries_them_and_answers_each_once():
    """k=2 on two instances: the two data calls share one; when it dies, the parity alone cannot rebuild
    them, so each is retried on the other instance."""
    placer = Placer({"m": (0,), "p": (0,)})
    group = CodingGroup(0, ParmScheme("add", 2), MODELS, placer)
    data = _add(group, 2)
    placer.add(1, ["m", "p"])  # a second instance appears after both data calls were placed on 0
    actions = group.seal()
    retries = [a for d in data for a in group.failed(d.handle, "UNAVAILABLE", retry_at=1.0)]
    assert [type(a) for a in retries] == [Infer, Infer] and {a.instance for a in retries} == {1}
    answers = [a for r in retries for a in group.arrived(r.handle, np.ones(3, np.float32))]
    assert sorted(a.ticket for a in answers if isinstance(a, Answer)) == [0, 1]
    assert not [a for a in actions if isinstance(a, Decode)]
