"""Coding groups: the pure state machine that decides, per query, when to answer and how.

No I/O here: the coordinator feeds events in (an output arrived, a call failed, a straggler
deadline passed, the parity output arrived) and asks :meth:`CodingGroup.next_actions` what to do.
That keeps the exactly-once and decodability rules unit-testable without Triton or gRPC.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Action(enum.Enum):
    ANSWER_OWN = "answer_own"  # the deployed model's own output is in: answer with it
    DECODE = "decode"  # own output late or failed, and the rest of the group can rebuild it
    FAIL = "fail"  # own call failed and the group can never rebuild it


@dataclass(eq=False)
class Query:
    """One client query inside a coding group."""

    index: int
    input: np.ndarray
    output: np.ndarray | None = None
    failed: bool = False  # its own deployed-model call failed
    straggling: bool = False  # its straggler deadline passed with no output
    decoding: bool = False  # a decode for it is in flight
    decode_failed: bool = False
    answered: bool = False  # exactly-once guard: set by whoever answers (or gives up on) it
    waiter: Any = None  # the coordinator's future; opaque here


@dataclass(eq=False)
class CodingGroup:
    """Up to k queries (in arrival order) plus the parity output computed from them."""

    group_id: int
    k: int
    coded: bool = True  # False for uncoded routes: no parity will ever come
    queries: list[Query] = field(default_factory=list)
    slots: list[int] | None = None  # query index per slot; set when sealed
    parity_output: np.ndarray | None = None
    parity_failed: bool = False

    @property
    def sealed(self) -> bool:
        return self.slots is not None

    @property
    def full(self) -> bool:
        return len(self.queries) >= self.k

    def add(self, x: np.ndarray) -> Query:
        if self.sealed or self.full:
            raise RuntimeError(f"group {self.group_id} is closed")
        query = Query(index=len(self.queries), input=x)
        self.queries.append(query)
        return query

    def seal(self) -> list[int]:
        """Close the group. A partial group (fill timeout) is padded by repeating its queries
        cyclically, so the parity query keeps the shape the parity model was trained on and every
        slot's output is one that will arrive anyway."""
        if not self.queries:
            raise RuntimeError(f"group {self.group_id} is empty")
        if self.slots is None:
            self.slots = [s % len(self.queries) for s in range(self.k)]
        return self.slots

    def slot_inputs(self) -> np.ndarray:
        """``(k, ...)`` inputs in slot order: what the encoder codes."""
        assert self.slots is not None, "seal() first"
        return np.stack([self.queries[i].input for i in self.slots])

    def decodable(self, query: Query) -> bool:
        """Every other query's output and the parity output are in."""
        return (
            self.coded
            and self.sealed
            and self.parity_output is not None
            and all(q.output is not None for q in self.queries if q is not query)
        )

    def hopeless(self, query: Query) -> bool:
        """The group can never rebuild ``query``: the parity or another member is lost."""
        return (
            not self.coded
            or self.parity_failed
            or query.decode_failed
            or any(q.failed and q.output is None for q in self.queries if q is not query)
        )

    def decode_inputs(self, query: Query) -> tuple[np.ndarray, np.ndarray]:
        """``(slot_outputs (k, classes), present (k,))`` for rebuilding ``query``."""
        assert self.slots is not None and self.parity_output is not None
        present = np.array([i != query.index for i in self.slots], dtype=bool)
        zeros = np.zeros_like(self.parity_output[0])
        outputs = np.stack([zeros if i == query.index else self.queries[i].output for i in self.slots])
        return outputs, present

    def next_actions(self) -> list[tuple[Action, Query]]:
        """What to do now for each query not yet answered. Idempotent given the same state."""
        actions = []
        for q in self.queries:
            if q.answered:
                continue
            if q.output is not None:
                actions.append((Action.ANSWER_OWN, q))
            elif not (q.straggling or q.failed) or q.decoding:
                continue
            elif self.decodable(q) and not q.decode_failed:
                actions.append((Action.DECODE, q))
            elif q.failed and self.hopeless(q):
                actions.append((Action.FAIL, q))
        return actions

    def settled(self) -> bool:
        return all(q.answered for q in self.queries)
