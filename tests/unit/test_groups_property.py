"""Property test of coding groups (hypothesis): whatever the scheme, the number of instances, the order in
which outputs, failures, straggler and resend deadlines, encodes and decodes happen, and whether clients give up,

- no two calls of a group share an instance while enough instances exist (else they spread evenly);
- every query is closed at most once, and exactly once when every call eventually answers or fails;
- an own output is answered as it came; every decode the group asks for is one its scheme can do;
- with eager decoding, a straggler deadline never starts a decode: everything decodable already was.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coding.approxifer import ApproxiferScheme
from coding.collage import SIDES, CollageScheme
from coding.parm import ParmScheme
from coding.scheme import Uncoded, group_size
from frontend.core.actions import Answer, Decode, Encode, Fail, Infer
from frontend.core.groups import CodingGroup
from frontend.core.placement import Placer
from tests.toy_schemes import EnsembleScheme, TileScheme

CLASSES = 10
SCHEMES = st.one_of(
    st.builds(ParmScheme, encoder=st.sampled_from(["add", "concat"]), k=st.integers(2, 4)),
    st.builds(CollageScheme, s=st.sampled_from(SIDES)),
    st.builds(
        ApproxiferScheme,
        k=st.integers(1, 3),
        s=st.integers(0, 2),
        systematic=st.booleans(),
    ),
    st.builds(TileScheme, k=st.integers(2, 4)),
    st.just(EnsembleScheme()),
    st.just(Uncoded()),
)
ROLES = ("deployed", "parity", "collage", "tiles", "member0", "member1", "coded")


class Simulation:
    """Runs one group; every action becomes a pending event that hypothesis picks the order of."""

    def __init__(self, scheme, instances: int, data) -> None:
        self.scheme, self.data = scheme, data
        # Each instance also serves a model of its own, so earlier calls can load instances unevenly.
        serving = {role: tuple(range(instances)) for role in ROLES} | {f"only{i}": (i,) for i in range(instances)}
        placer = Placer(serving)
        for i in data.draw(st.lists(st.integers(0, instances - 1), max_size=12), label="earlier calls"):
            placer.place(f"only{i}", {})
        eager = data.draw(st.booleans(), label="eager decode")
        self.group = CodingGroup(0, scheme, {role: role for role in ROLES}, placer, eager_decode=eager)
        self.pending: list[tuple] = []
        self.closed: dict[int, list] = {}
        self.own: dict[int, list[np.ndarray]] = {}
        self.hung = False
        self.queries = []
        self.deadline_decodes = 0  # decodes a straggler deadline started

    def run(self, n_queries: int) -> None:
        for i in range(n_queries):
            query, actions = self.group.add(np.full((1, 4, 4), i, np.float32), 1.0, i)
            self.queries.append(query)
            self.pending.append(("straggler", query))
            if self.data.draw(st.booleans(), label="a resend deadline (Collage's fallback)"):
                self.pending.append(("resend", query))
            if self.data.draw(st.booleans(), label="client gives up"):
                self.pending.append(("close", query))
            self._take(actions)
        if self.group.full:
            self._take(self.group.seal())
        else:
            self.pending.append(("seal", None))
        while self.pending:
            event = self.pending.pop(self.data.draw(st.integers(0, len(self.pending) - 1), label="next event"))
            self._take(self._fire(*event))

    def _fire(self, kind: str, subject) -> list:
        group = self.group
        if kind == "seal":
            return group.seal()
        if kind == "straggler":
            actions = group.straggler_deadline(subject)
            self.deadline_decodes += sum(isinstance(a, Decode) for a in actions)
            return actions
        if kind == "resend":
            return group.resend_deadline(subject)
        if kind == "close":
            group.close(subject)
            return []
        if kind == "encode":
            if self.data.draw(st.booleans(), label="encoder fails"):
                return group.encode_failed()
            return group.encoded(np.zeros((len(self.scheme.coded_slots), 1, 4, 4), np.float32))
        if kind == "decode":
            rebuilt, faulty = self.scheme.decode_slots(subject.data_outputs, subject.coded_outputs)
            if self.data.draw(st.integers(0, 4), label="decoder fails") == 0:
                return group.decode_failed(subject.handle)
            return group.decoded(subject.handle, rebuilt, faulty)
        outcome = self.data.draw(st.sampled_from(["arrive", "arrive", "arrive", "fail", "hang"]), label="call")
        if outcome == "hang":
            self.hung = True
            return []
        if outcome == "fail":
            return group.failed(subject.handle)
        output = np.random.default_rng(len(self.own)).standard_normal(self._shape(subject)).astype(np.float32)
        if subject.kind == "data":
            self.own.setdefault(subject.handle.query.index, []).append(output)
        return group.arrived(subject.handle, output)

    def _shape(self, infer: Infer) -> tuple[int, ...]:
        if infer.kind == "data":
            return (CLASSES,)
        return self.scheme.coded_output_shape(infer.handle.slots[0], (CLASSES,))

    def _take(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Infer):
                self.pending.append(("infer", action))
            elif isinstance(action, Encode):
                self.pending.append(("encode", action))
            elif isinstance(action, Decode):
                self.pending.append(("decode", action))
            elif isinstance(action, Answer | Fail):
                self.closed.setdefault(action.ticket, []).append(action)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scheme=SCHEMES, instances=st.integers(1, 8), data=st.data())
def test_placement_and_exactly_once_hold_whatever_happens(scheme, instances, data):
    n_queries = data.draw(st.integers(1, group_size(scheme)), label="queries")
    sim = Simulation(scheme, instances, data)
    sim.run(n_queries)

    used = np.bincount(sim.group.instances(), minlength=instances)
    if len(sim.group.instances()) <= instances:
        assert used.max() <= 1, f"two calls of one group share an instance: {used.tolist()}"
    else:
        assert used.max() - used.min() <= 1, f"calls not spread evenly: {used.tolist()}"

    for ticket, closes in sim.closed.items():
        assert len(closes) == 1, f"query {ticket} closed {len(closes)} times"
        close = closes[0]
        if isinstance(close, Answer):
            for output in close.outputs:
                if not output.reconstructed:
                    assert any(np.array_equal(output.logits, own) for own in sim.own[ticket])
    if sim.group.eager_decode:
        assert sim.deadline_decodes == 0, "an eager group left a decodable output for its straggler deadline"
    if not sim.hung:
        given_up = {q.index for q in sim.queries if q.closed and q.index not in sim.closed}
        assert set(sim.closed) | given_up == set(range(n_queries)), "a query was left without an answer"
