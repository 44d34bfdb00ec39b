"""Coding groups: the pure state machine that decides, per query, when to answer and how.

No I/O here. A group's events are methods — a query added, the group sealed, an output arrived, a
call failed, a straggler deadline passed, the encoder or decoder answered — and each returns the
actions to take (:mod:`frontend.core.actions`). The coordinator executes them and never writes a group's
fields, so the exactly-once and decodability rules are properties of this class, tested here.

A group holds up to ``group_size`` queries and the slots its scheme asks for (:mod:`coding.scheme`):
data slots, each a query on a model, and coded slots. Slots holding the same query on the same model
(a partial group repeats its queries) are one *call*. The group places every call it sends on a
Triton instance (:mod:`frontend.core.placement`), never one it already uses while another is free.
Systematic codes send every data call at once and decode only the missing ones; a non-systematic
code (ApproxIFER) sends none and decodes every answer.

When a systematic code decodes an own output still out: at the query's straggler deadline, once the
arrivals can rebuild it (the default), or, with ``eager_decode``, as soon as they can (ParM's own
policy: the parity and the other k - 1 outputs are in). Either way the original, if it comes first,
answers; if it comes after the reconstruction, it is discarded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coding.scheme import Arrivals, Scheme, group_size
from frontend.core.actions import Action, Answer, Decode, Discarded, Encode, Fail, Infer, Output
from frontend.core.placement import Placer

DATA, CODED = "data", "coded"


@dataclass(eq=False)
class Call:
    """One inference of the group: a query on one model (data) or one coded input on one model (coded)."""

    kind: str
    role: str
    slots: list[int]  # the data slots it fills (data) or its coded slot (coded)
    worker: int
    query: Query | None = None
    instance: int | None = None
    output: np.ndarray | None = None
    failed: bool = False  # no own output will come: the call failed, or was never sent (non-systematic)
    rebuilt: np.ndarray | None = None
    faulty: tuple[int, ...] = ()
    decoding: bool = False
    decode_failed: bool = False
    attempts: int = 0  # sends still out: a resent call fails only when every send has
    error: str = ""  # why it failed (the worker's, encoder's or decoder's message)
    resent: bool = False


@dataclass(eq=False)
class Query:
    """One client query inside a coding group; ``ticket`` is the coordinator's, opaque here."""

    index: int
    input: np.ndarray
    deadline: float
    ticket: Any
    annotation: Any = None
    calls: list[Call] = field(default_factory=list)
    straggling: bool = False  # its straggler deadline passed with an output still missing
    closed: bool = False  # answered, failed, or given up by its client: exactly once


@dataclass(frozen=True, eq=False)
class DecodeHandle:
    """Which calls one decode rebuilds."""

    calls: tuple[Call, ...]


class CodingGroup:
    """Up to ``group_size(scheme)`` queries (in arrival order) and the slots the scheme makes of them."""

    def __init__(
        self, group_id: int, scheme: Scheme, models: Mapping[str, str], placer: Placer, eager_decode: bool = False
    ) -> None:
        self.group_id = group_id
        self.scheme = scheme
        self.eager_decode = eager_decode and scheme.systematic  # a non-systematic code decodes every answer
        self.size = group_size(scheme)
        self.queries: list[Query] = []
        self.sealed = False
        self._models = dict(models)
        self._placer = placer
        self._used: Counter[int] = Counter()  # the group's calls per instance
        self._data: list[Call | None] = [None] * len(scheme.data_slots)
        offset = len(scheme.data_slots) if scheme.systematic else 0
        self._coded = [Call(CODED, s.role, [i], worker=offset + i) for i, s in enumerate(scheme.coded_slots)]

    @property
    def full(self) -> bool:
        return len(self.queries) >= self.size

    @property
    def coded(self) -> bool:
        return bool(self._coded)

    def instances(self) -> list[int]:
        """The instance of every call sent so far (what placement promises about)."""
        return [c.instance for c in self._calls() if c.instance is not None]

    # ---- events -------------------------------------------------------------------------------

    def add(self, x: np.ndarray, deadline: float, ticket: Any, annotation: Any = None) -> tuple[Query, list[Action]]:
        """A new query: its data calls leave at once (systematic), before the group fills."""
        if self.sealed or self.full:
            raise RuntimeError(f"group {self.group_id} is closed")
        query = Query(len(self.queries), x, deadline, ticket, annotation)
        self.queries.append(query)
        actions: list[Action] = []
        for j, slot in enumerate(self.scheme.data_slots):
            if slot.input == query.index:
                actions += self._fill(j, query, slot.role)
        return query, actions

    def seal(self) -> list[Action]:
        """Close the group. A partial group (fill timeout) fills its empty data slots by repeating its
        queries cyclically, so the coded inputs keep the shape the code was built for and every slot's
        output is one that will arrive anyway. Then the coded calls are made."""
        if not self.queries:
            raise RuntimeError(f"group {self.group_id} is empty")
        if self.sealed:
            return []
        self.sealed = True
        actions: list[Action] = []
        for j, slot in enumerate(self.scheme.data_slots):
            if self._data[j] is None:
                actions += self._fill(j, self._query_for(slot.input), slot.role)
        if self._coded and self.scheme.encodes:
            actions.append(Encode(self.inputs(), self._latest_deadline(self.queries)))
        elif self._coded:  # the identity encoding: each coded slot runs one of the queries as it is
            for call, slot in zip(self._coded, self.scheme.coded_slots, strict=True):
                actions.append(self._send(call, self._query_for(slot.input).input))
        return actions + self._decide()

    def encoded(self, coded_inputs: np.ndarray) -> list[Action]:
        if len(coded_inputs) != len(self._coded):
            return self.encode_failed()
        return [self._send(call, x) for call, x in zip(self._coded, coded_inputs, strict=True)]

    def encode_failed(self, error: str = "") -> list[Action]:
        for call in self._coded:
            call.failed, call.error = True, f"the encoder failed: {error}" if error else "the encoder failed"
        return self._decide()

    def arrived(self, handle: Call, output: np.ndarray) -> list[Action]:
        handle.attempts -= 1
        if handle.output is not None:  # the slower of a resent call's two sends
            return [Discarded(handle.role)]
        if handle.failed:
            return []
        handle.output = output
        late = handle.query is not None and handle.query.closed
        return ([Discarded(handle.role)] if late else []) + self._decide()

    def failed(self, handle: Call, error: str = "", retry_at: float | None = None) -> list[Action]:
        """A send of the call failed. ``retry_at``: it failed in transport (its instance died or is
        unreachable) at this time (the caller's clock, as the deadlines): a data call is then sent once
        more, to another instance, if its query is open and within its deadline; else it is lost."""
        handle.attempts -= 1
        if handle.output is not None or handle.attempts > 0:
            return []
        if retry_at is not None and self._may_retry(handle, retry_at):
            handle.resent = True
            assert handle.query is not None
            return [self._send(handle, handle.query.input, avoid=handle.instance)]
        handle.failed, handle.error = True, error
        return self._decide()

    def _may_retry(self, call: Call, now: float) -> bool:
        """One retry of a data call, while its query waits and has time, on an instance it did not use."""
        query = call.query
        if call.kind != DATA or call.resent or query is None or query.closed or now >= query.deadline:
            return False
        return any(i != call.instance for i in self._placer.serving(self._models[call.role]))

    def straggler_deadline(self, query: Query) -> list[Action]:
        """The query's straggler deadline passed: stop waiting for its own outputs once decodable."""
        if query.closed:
            return []
        query.straggling = True
        return self._decide()

    def resend_deadline(self, query: Query) -> list[Action]:
        """Collage-CNN's fallback, at a second deadline: an own call of the query still out, which the
        group cannot rebuild yet (its coded outputs are slow too), is sent once more, to another
        instance. The first output of either send is the call's; the other is dropped."""
        if query.closed:
            return []
        rebuildable = self.scheme.recoverable(self._arrivals()) if self.sealed and self._coded else frozenset()
        actions: list[Action] = []
        for call in query.calls:
            waiting = call.output is None and call.rebuilt is None and call.attempts > 0
            if waiting and not call.resent and not call.decoding and not set(call.slots) <= rebuildable:
                call.resent = True
                actions.append(self._send(call, query.input, avoid=call.instance))
        return actions

    def decoded(self, handle: DecodeHandle, outputs: list[np.ndarray], faulty: list[int]) -> list[Action]:
        if len(outputs) != len(self._data):
            return self.decode_failed(handle)
        for call in handle.calls:
            call.decoding = False
            call.rebuilt, call.faulty = outputs[call.slots[0]], tuple(faulty)
        return self._decide()

    def decode_failed(self, handle: DecodeHandle, error: str = "") -> list[Action]:
        for call in handle.calls:
            call.decoding, call.decode_failed = False, True
            call.error = f"the decode failed: {error}" if error else "the decode failed"
        return self._decide()

    def close(self, query: Query) -> None:
        """The query's client stopped waiting (deadline, cancellation): never answer it."""
        query.closed = True

    # ---- slots and calls ----------------------------------------------------------------------

    def inputs(self) -> np.ndarray:
        """``(group_size, ...)`` queries, padded: what the encoder codes."""
        return np.stack([self._query_for(i).input for i in range(self.size)])

    def _query_for(self, index: int) -> Query:
        return self.queries[index % len(self.queries)]

    def _calls(self) -> list[Call]:
        data = list({id(c): c for c in self._data if c is not None}.values())
        return data + self._coded

    def _fill(self, slot: int, query: Query, role: str) -> list[Action]:
        call = next((c for c in query.calls if c.role == role), None)
        if call is not None:  # the same query on the same model: one call fills both slots
            call.slots.append(slot)
            self._data[slot] = call
            return []
        call = Call(DATA, role, [slot], worker=slot, query=query, failed=not self.scheme.systematic)
        query.calls.append(call)
        self._data[slot] = call
        return [self._send(call, query.input)] if self.scheme.systematic else []

    def _send(self, call: Call, x: np.ndarray, avoid: int | None = None) -> Infer:
        if avoid is None:
            instance = self._placer.place(self._models[call.role], self._used)
            self._used[instance] += 1
            call.instance = instance
        else:  # a resend: an extra copy, like a hedge, placed away from the first but not counted
            instance = self._placer.place(self._models[call.role], {**self._used, avoid: len(self._calls()) + 1})
        call.attempts += 1
        annotation = call.query.annotation if call.query is not None else None
        return Infer(call, call.role, instance, x, call.kind, call.worker, annotation, copy=int(avoid is not None))

    # ---- decisions ----------------------------------------------------------------------------

    def _decide(self) -> list[Action]:
        """What to do now for every open query. Each query is closed by exactly one Answer or Fail."""
        actions: list[Action] = []
        to_decode: list[Call] = []
        for query in self.queries:
            if query.closed:
                continue
            pending = [c for c in query.calls if c.output is None and c.rebuilt is None]
            if not pending:
                query.closed = True
                actions.append(self._answer(query))
                continue
            lost = next((c for c in pending if c.failed and self._hopeless(c)), None)
            if lost is not None:
                query.closed = True
                actions.append(Fail(query.ticket, self._why(lost)))
                continue
            to_decode += [c for c in pending if self._should_decode(c, query)]
        if to_decode:
            for call in to_decode:
                call.decoding = True
            deadline = self._latest_deadline([c.query for c in to_decode if c.query is not None])
            data = tuple(c.output if c is not None else None for c in self._data)
            coded = tuple(c.output for c in self._coded)
            actions.append(Decode(DecodeHandle(tuple(to_decode)), data, coded, deadline))
        return actions

    def _should_decode(self, call: Call, query: Query) -> bool:
        if call.decoding or call.decode_failed or not (call.failed or query.straggling or self.eager_decode):
            return False
        if not (self.sealed and self._coded):
            return False
        if not set(call.slots) <= self.scheme.recoverable(self._arrivals()):
            return False
        # Non-systematic: every answer is decoded, so wait for the stragglers among the coded calls
        # until this query's own straggler deadline: more outputs decode more accurately.
        settled = all(c.output is not None or c.failed for c in self._coded)
        return self.scheme.systematic or settled or query.straggling

    def _hopeless(self, call: Call) -> bool:
        """The group can never rebuild ``call``: even if every call not lost yet answered."""
        if not self._coded or call.decode_failed:
            return True
        return self.sealed and not set(call.slots) <= self.scheme.recoverable(self._arrivals(potential_for=call))

    def _arrivals(self, potential_for: Call | None = None) -> Arrivals:
        """What has arrived; with ``potential_for``, the most that ever can, ``potential_for`` aside."""
        calls = [c for c in self._data if c is not None]
        if potential_for is None:
            data = tuple(c.output is not None for c in calls)
            coded = tuple(c.output is not None for c in self._coded)
        else:
            data = tuple(c is not potential_for and (c.output is not None or not c.failed) for c in calls)
            coded = tuple(c.output is not None or not c.failed for c in self._coded)
        return Arrivals(data, coded, tuple(c.slots[0] for c in calls))

    def _answer(self, query: Query) -> Answer:
        outputs = []
        faulty: set[int] = set()
        for call in query.calls:
            if call.output is not None:
                outputs.append(Output(call.role, call.output, reconstructed=False))
            else:
                assert call.rebuilt is not None
                outputs.append(Output(call.role, call.rebuilt, reconstructed=True))
                faulty.update(call.faulty)
        return Answer(query.ticket, tuple(outputs), tuple(sorted(faulty)))

    def _why(self, call: Call) -> str:
        """The failure, with the causes that made it final (an unreachable Triton reads as such)."""
        own = f" ({call.error})" if call.error and not call.decode_failed else ""
        if not self._coded:
            why = "it has no redundancy"
        elif call.decode_failed:
            why = call.error
        else:
            causes = dict.fromkeys(c.error or "failed" for c in self._calls() if c is not call and c.failed)
            why = "the other outputs it needs are lost too" + (f": {'; '.join(causes)}" if causes else "")
        return (
            f"the call to {self._models[call.role]} failed{own} and coding group {self.group_id} "
            f"cannot rebuild the answer ({why})"
        )

    @staticmethod
    def _latest_deadline(queries: list[Query]) -> float:
        """A call made for several queries serves until the last of them gives up."""
        open_ = [q.deadline for q in queries if not q.closed]
        return max(open_ or [q.deadline for q in queries])
