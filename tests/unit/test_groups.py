"""The coding-group state machine, driven through its events: when a query is answered, decoded, or
failed — never twice — and where each of its calls goes."""

from __future__ import annotations

import numpy as np
import pytest

from coding.approxifer import ApproxiferScheme
from coding.parm import ParmScheme
from coding.scheme import Uncoded
from frontend.core.actions import Answer, Decode, Discarded, Encode, Fail, Infer
from frontend.core.groups import CodingGroup
from frontend.core.placement import Placer
from tests.toy_schemes import EnsembleScheme, TileScheme

MODELS = {"deployed": "m", "parity": "p", "tiles": "t", "member0": "a", "member1": "b", "coded": "c"}


class Driver:
    """A group and the actions it returned, with helpers to answer its calls."""

    def __init__(self, scheme, instances=4, placer=None, eager=False):
        everything = tuple(range(instances))
        placer = placer or Placer({m: everything for m in MODELS.values()})
        self.group = CodingGroup(7, scheme, MODELS, placer, eager_decode=eager)
        self.actions = []
        self.queries = []

    def add(self, n=1):
        for _ in range(n):
            query, actions = self.group.add(np.full((1, 2, 2), len(self.queries), np.float32), 10.0, len(self.queries))
            self.queries.append(query)
            self.actions += actions
        return self

    def seal(self):
        self.actions += self.group.seal()
        return self

    def do(self, actions):
        self.actions += actions
        return actions

    def infers(self, kind=None):
        return [a for a in self.actions if isinstance(a, Infer) and kind in (None, a.kind)]

    def data(self, i):
        return self.infers("data")[i].handle

    def coded(self, i=0):
        return self.infers("coded")[i].handle

    def of(self, kind):
        return [a for a in self.actions if isinstance(a, kind)]


def _out(v, n=3):
    return np.full(n, float(v), dtype=np.float32)


def _answers(actions):
    return {a.ticket: a for a in actions if isinstance(a, Answer)}


def _parm(n=2, k=2):
    return Driver(ParmScheme("add", k)).add(n)


def test_data_calls_leave_at_once_and_the_encoder_is_asked_when_the_group_fills():
    d = _parm(n=1)
    assert len(d.infers("data")) == 1 and not d.of(Encode)
    d.add().seal()
    assert len(d.infers("data")) == 2 and len(d.of(Encode)) == 1
    assert d.of(Encode)[0].inputs.shape == (2, 1, 2, 2)
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    assert len(d.infers("coded")) == 1 and d.infers("coded")[0].role == "parity"


def test_own_output_answers_the_query():
    d = _parm().seal()
    actions = d.do(d.group.arrived(d.data(0), _out(1)))
    assert list(_answers(actions)) == [0] and not _answers(actions)[0].outputs[0].reconstructed


def test_a_straggler_is_decoded_once_the_rest_and_the_parity_are_in():
    d = _parm().seal()
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    assert d.group.straggler_deadline(d.queries[1]) == []  # nothing else in yet
    assert list(_answers(d.group.arrived(d.data(0), _out(1)))) == [0]
    (decode,) = d.group.arrived(d.coded(), _out(3))
    assert isinstance(decode, Decode)
    assert decode.data_outputs[1] is None and decode.coded_outputs[0] is not None
    assert d.group.straggler_deadline(d.queries[1]) == []  # a decode in flight is not started twice
    (answer,) = d.group.decoded(decode.handle, [_out(1), _out(2)], [])
    assert answer.ticket == 1 and answer.outputs[0].reconstructed
    np.testing.assert_array_equal(answer.outputs[0].logits, _out(2))


def test_a_late_original_after_its_reconstruction_is_discarded_not_answered():
    d = _parm().seal()
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    d.group.arrived(d.data(0), _out(1))
    d.group.arrived(d.coded(), _out(3))
    (decode,) = d.group.straggler_deadline(d.queries[1])
    d.group.decoded(decode.handle, [_out(1), _out(2)], [])
    late = d.group.arrived(d.data(1), _out(2))
    assert [type(a) for a in late] == [Discarded]


def test_the_decode_carries_the_outputs_in_hand_when_it_was_decided():
    """An original that arrives while its decode is on its way must not empty the decode's inputs."""
    d = _parm().seal()
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    d.group.arrived(d.data(0), _out(1))
    d.group.arrived(d.coded(), _out(3))
    (decode,) = d.group.straggler_deadline(d.queries[1])
    (answer,) = d.group.arrived(d.data(1), _out(2))  # the original wins the race
    assert not answer.outputs[0].reconstructed
    assert decode.data_outputs[1] is None  # the decode still has something to decode
    assert d.group.decoded(decode.handle, [_out(1), _out(2)], []) == []  # and never answers twice


def test_a_late_query_is_not_decoded_before_its_straggler_deadline():
    d = _parm().seal()
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    d.group.arrived(d.data(0), _out(1))
    assert d.group.arrived(d.coded(), _out(3)) == []  # q1 is merely not back yet


def _parm_with_parity_and_one_output(eager):
    """ParM k = 2: query 0's own output and the parity are in, query 1's is still out."""
    d = Driver(ParmScheme("add", 2), eager=eager).add(2).seal()
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    assert list(_answers(d.group.arrived(d.data(0), _out(1)))) == [0]
    return d, d.group.arrived(d.coded(), _out(3))


def test_eager_decode_rebuilds_as_soon_as_the_parity_and_the_other_outputs_are_in():
    d, actions = _parm_with_parity_and_one_output(eager=True)
    (decode,) = actions  # no straggler deadline needed
    assert isinstance(decode, Decode) and [c.query.index for c in decode.handle.calls] == [1]
    assert d.group.straggler_deadline(d.queries[1]) == []  # the deadline, if it comes, starts nothing more
    (answer,) = d.group.decoded(decode.handle, [_out(1), _out(2)], [])
    assert answer.ticket == 1 and answer.outputs[0].reconstructed
    assert [type(a) for a in d.group.arrived(d.data(1), _out(2))] == [Discarded]  # the late original: dropped


def test_deadline_decode_waits_for_the_straggler_deadline():
    d, actions = _parm_with_parity_and_one_output(eager=False)
    assert actions == []
    (decode,) = d.group.straggler_deadline(d.queries[1])
    assert isinstance(decode, Decode)


def test_eager_decode_still_answers_with_the_original_when_it_wins_the_race():
    d, (decode,) = _parm_with_parity_and_one_output(eager=True)
    (answer,) = d.group.arrived(d.data(1), _out(2))
    assert answer.ticket == 1 and not answer.outputs[0].reconstructed
    assert d.group.decoded(decode.handle, [_out(1), _out(2)], []) == []  # never twice


def test_eager_decode_waits_for_what_the_decode_needs():
    d = Driver(ParmScheme("add", 3), eager=True).add(3).seal()
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    d.group.arrived(d.data(0), _out(1))
    assert d.group.arrived(d.coded(), _out(3)) == []  # two outputs out: nothing can be rebuilt yet
    answer, decode = d.group.arrived(d.data(2), _out(2))  # query 2 answered, query 1 rebuilt at once
    assert answer.ticket == 2 and [c.query.index for c in decode.handle.calls] == [1]


def test_eager_decode_does_not_apply_to_a_non_systematic_code():
    d = Driver(ApproxiferScheme(2, s=1), eager=True).add(2).seal()
    assert not d.group.eager_decode
    d.do(d.group.encoded(np.zeros((3, 1, 2, 2), np.float32)))
    d.group.arrived(d.coded(0), _out(1))
    assert d.group.arrived(d.coded(1), _out(2)) == []  # still waits for the third until the deadline


def test_a_failed_query_with_a_lost_parity_fails_instead_of_hanging():
    d = _parm().seal()
    d.group.encode_failed()
    (fail,) = d.group.failed(d.data(1))
    assert isinstance(fail, Fail) and fail.ticket == 1 and "cannot rebuild" in fail.reason


def test_two_losses_in_one_group_cannot_be_decoded():
    d = _parm().seal()
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    d.group.arrived(d.coded(), _out(3))
    d.group.failed(d.data(0))
    fails = d.group.failed(d.data(1))
    assert sorted(a.ticket for a in fails if isinstance(a, Fail)) == [0, 1]


def test_an_uncoded_failure_fails_at_once():
    d = Driver(Uncoded()).add().seal()
    (fail,) = d.group.failed(d.data(0))
    assert isinstance(fail, Fail) and "no redundancy" in fail.reason


def test_a_closed_query_is_never_acted_on_again():
    d = _parm().seal()
    d.group.close(d.queries[0])
    assert d.group.arrived(d.data(0), _out(1)) == [Discarded("deployed")]


def test_a_partial_group_is_padded_cyclically_and_decodes_the_repeated_query():
    d = Driver(ParmScheme("add", 4)).add(3).seal()
    assert len(d.infers("data")) == 3  # the repeated query is not sent twice
    (encode,) = d.of(Encode)
    np.testing.assert_array_equal(encode.inputs[:, 0, 0, 0], [0, 1, 2, 0])
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    d.group.arrived(d.data(1), _out(1))
    d.group.arrived(d.data(2), _out(2))
    d.group.arrived(d.coded(), _out(9))
    (decode,) = d.group.straggler_deadline(d.queries[0])
    assert [o is not None for o in decode.data_outputs] == [False, True, True, False]
    (answer,) = d.group.decoded(decode.handle, [_out(3), _out(1), _out(2), _out(3)], [])
    assert answer.ticket == 0 and answer.outputs[0].reconstructed


def _berrut(k=2, s=1):
    d = Driver(ApproxiferScheme(k, s=s)).add(k).seal()
    d.do(d.group.encoded(np.zeros((k + s, 1, 2, 2), np.float32)))
    return d


def test_non_systematic_sends_no_data_call_and_waits_for_every_coded_output_until_the_deadline():
    d = _berrut()
    assert d.infers("data") == [] and len(d.infers("coded")) == 3
    assert d.group.arrived(d.coded(0), _out(1)) == []
    assert d.group.arrived(d.coded(1), _out(2)) == []  # enough to decode, but the third may decode better
    (decode,) = d.group.straggler_deadline(d.queries[0])
    assert [c.query.index for c in decode.handle.calls] == [0]
    (decode_all,) = d.group.arrived(d.coded(2), _out(3))  # everything in: the other query decodes at once
    assert [c.query.index for c in decode_all.handle.calls] == [1]


def test_non_systematic_fails_when_too_few_coded_outputs_can_ever_arrive():
    d = _berrut()
    d.group.failed(d.coded(0))
    fails = d.group.failed(d.coded(1))
    assert sorted(a.ticket for a in fails if isinstance(a, Fail)) == [0, 1]


def test_a_coded_slot_that_answers_every_data_slot_by_itself():
    """Collage's shape: one coded output of shape (k, classes) rebuilds any query, no partner needed."""
    d = Driver(TileScheme(3)).add(3).seal()
    d.do(d.group.encoded(np.zeros((1, 3, 2, 2), np.float32)))
    d.group.arrived(d.coded(), np.arange(30, dtype=np.float32).reshape(3, 10))
    (decode,) = d.group.straggler_deadline(d.queries[1])  # queries 0 and 2 have not answered either
    rebuilt, _ = TileScheme(3).decode_slots(decode.data_outputs, decode.coded_outputs)
    (answer,) = d.group.decoded(decode.handle, rebuilt, [])
    np.testing.assert_array_equal(answer.outputs[0].logits, np.arange(10, 20))


def test_one_input_answered_by_two_models_and_a_coded_model():
    """COIN's shape: one query, a call per member on its own model, the coded call needs no encoder."""
    d = Driver(EnsembleScheme()).add()
    assert d.group.full and [a.role for a in d.infers()] == ["member0", "member1"]
    d.seal()
    assert not d.of(Encode) and [a.role for a in d.infers("coded")] == ["coded"]
    assert len({a.instance for a in d.infers()}) == 3
    d.group.arrived(d.data(0), _out(1))
    d.group.failed(d.data(1))
    (decode,) = d.group.arrived(d.coded(), _out(5))
    (answer,) = d.group.decoded(decode.handle, [_out(1), _out(4)], [])
    assert [(o.role, o.reconstructed) for o in answer.outputs] == [("member0", False), ("member1", True)]


def _collage_waiting():
    """A 2x2 Collage-shaped group whose query 1 and whose collage are both still out."""
    d = Driver(TileScheme(4), instances=3).add(4).seal()
    d.do(d.group.encoded(np.zeros((1, 4, 2, 2), np.float32)))
    for i in (0, 2, 3):
        d.group.arrived(d.data(i), _out(i))
    return d


def test_the_resend_deadline_sends_a_query_the_group_cannot_rebuild_once_more_elsewhere():
    d = _collage_waiting()
    first = d.infers("data")[1]
    (resend,) = d.do(d.group.resend_deadline(d.queries[1]))
    assert isinstance(resend, Infer) and resend.handle is first.handle and resend.instance != first.instance
    assert d.group.resend_deadline(d.queries[1]) == []  # once
    (answer,) = d.group.arrived(resend.handle, _out(7))  # the resend's output answers, own and not rebuilt
    assert answer.ticket == 1 and not answer.outputs[0].reconstructed
    assert [type(a) for a in d.group.arrived(first.handle, _out(1))] == [Discarded]  # never twice


def test_no_resend_once_the_group_can_rebuild_the_query():
    d = _collage_waiting()
    d.group.arrived(d.coded(), np.zeros((4, 3), np.float32))
    assert d.group.resend_deadline(d.queries[1]) == []


def test_a_resent_call_fails_only_when_both_sends_have():
    d = _collage_waiting()
    (resend,) = d.group.resend_deadline(d.queries[1])
    assert d.group.failed(resend.handle) == []  # the first send is still out
    (answer,) = d.group.arrived(d.data(1), _out(1))
    assert answer.ticket == 1
    d = _collage_waiting()
    (resend,) = d.group.resend_deadline(d.queries[1])
    d.group.failed(resend.handle)
    d.group.failed(d.data(1))
    (decode,) = d.group.arrived(d.coded(), np.zeros((4, 3), np.float32))  # both lost: rebuilt from the collage
    assert isinstance(decode, Decode)


def test_slots_of_a_group_never_share_an_instance_while_enough_exist():
    placer = Placer({"m": (0, 1, 2), "p": (3,)})
    for _ in range(5):
        d = Driver(ParmScheme("add", 3), placer=placer).add(3).seal()
        d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
        assert sorted(d.group.instances()) == [0, 1, 2, 3]


def test_with_fewer_instances_than_slots_a_group_spreads_evenly():
    d = Driver(ApproxiferScheme(2, n=5, s=1, systematic=True), instances=2).add(2).seal()
    d.do(d.group.encoded(np.zeros((3, 1, 2, 2), np.float32)))
    counts = np.bincount(d.group.instances(), minlength=2)
    assert sorted(counts.tolist()) == [2, 3]


def test_groups_take_turns_over_the_instances():
    placer = Placer({"m": (0, 1, 2)})
    firsts = [Driver(Uncoded(), placer=placer).add().infers()[0].instance for _ in range(6)]
    assert firsts == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("scheme", [ParmScheme("add", 2), ApproxiferScheme(2, s=1)])
def test_adding_to_a_sealed_group_is_an_error(scheme):
    d = Driver(scheme).add().seal()
    with pytest.raises(RuntimeError, match="closed"):
        d.add()


def test_a_failure_names_its_own_cause_and_the_causes_that_made_it_final():
    d = _parm().seal()
    d.do(d.group.encoded(np.zeros((1, 1, 2, 2), np.float32)))
    d.group.failed(d.coded(), "p at t2:8001: UNAVAILABLE: connection refused")
    (fail,) = d.group.failed(d.data(1), "m at t1:8001: UNAVAILABLE: connection refused")
    assert isinstance(fail, Fail)
    assert "m at t1:8001: UNAVAILABLE" in fail.reason and "lost too: p at t2:8001: UNAVAILABLE" in fail.reason
    d = _parm().seal()
    d.group.encode_failed("encoder at :8101: UNAVAILABLE")
    (fail,) = d.group.failed(d.data(0), "timed out")
    assert "the encoder failed: encoder at :8101: UNAVAILABLE" in fail.reason
