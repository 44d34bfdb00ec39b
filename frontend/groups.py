"""Coding groups: the pure state machine that decides, per query, when to answer and how.

No I/O here: the coordinator feeds events in (an output arrived, a call failed, a straggler
deadline passed, a coded output arrived) and asks :meth:`CodingGroup.next_actions` what to do.
That keeps the exactly-once and decodability rules unit-testable without Triton or gRPC.

A group has k slots (queries in arrival order; a partial group repeats its queries) and ``r``
coded queries. Systematic codes (ParM, systematic ApproxIFER) also send every query to the deployed
model and decode only the missing ones; non-systematic ApproxIFER decodes every answer. A decode
needs ``needed`` outputs, counting slots whose query answered and coded outputs that arrived.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coding.layout import GroupLayout

UNCODED = GroupLayout(k=1, parities=0, systematic=True, parity_model=False, needed=1)


class Action(enum.Enum):
    ANSWER_OWN = "answer_own"  # the deployed model's own output is in: answer with it
    DECODE = "decode"  # own output late, failed or never sent, and the group can rebuild it now
    FAIL = "fail"  # the group can never rebuild it and no own output will come


@dataclass(eq=False)
class Query:
    """One client query inside a coding group."""

    index: int
    input: np.ndarray
    output: np.ndarray | None = None
    failed: bool = False  # its own deployed-model call failed (or was never sent: non-systematic)
    straggling: bool = False  # its straggler deadline passed with no output
    decoding: bool = False  # a decode covering it is in flight
    decode_failed: bool = False
    answered: bool = False  # exactly-once guard: set by whoever answers (or gives up on) it
    waiter: Any = None  # the coordinator's future; opaque here


@dataclass(eq=False)
class CodingGroup:
    """Up to k queries (in arrival order) plus the outputs of the coded queries made from them."""

    group_id: int
    layout: GroupLayout = UNCODED
    queries: list[Query] = field(default_factory=list)
    slots: list[int] | None = None  # query index per slot; set when sealed
    parity_outputs: list[np.ndarray | None] = field(default_factory=list)
    parity_failed: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.parity_outputs = [None] * self.layout.parities
        self.parity_failed = [False] * self.layout.parities

    @property
    def k(self) -> int:
        return self.layout.k

    @property
    def coded(self) -> bool:
        return self.layout.parities > 0

    @property
    def sealed(self) -> bool:
        return self.slots is not None

    @property
    def full(self) -> bool:
        return len(self.queries) >= self.k

    def add(self, x: np.ndarray) -> Query:
        if self.sealed or self.full:
            raise RuntimeError(f"group {self.group_id} is closed")
        query = Query(index=len(self.queries), input=x, failed=not self.layout.systematic)
        self.queries.append(query)
        return query

    def seal(self) -> list[int]:
        """Close the group. A partial group (fill timeout) is padded by repeating its queries
        cyclically, so the coded queries keep the shape the code was built for and every slot's
        output is one that will arrive anyway."""
        if not self.queries:
            raise RuntimeError(f"group {self.group_id} is empty")
        if self.slots is None:
            self.slots = [s % len(self.queries) for s in range(self.k)]
        return self.slots

    def slot_inputs(self) -> np.ndarray:
        """``(k, ...)`` inputs in slot order: what the encoder codes."""
        assert self.slots is not None, "seal() first"
        return np.stack([self.queries[i].input for i in self.slots])

    # ---- decodability -------------------------------------------------------------------------

    def _available(self, query: Query | None) -> int:
        """Outputs a decode for ``query`` could use now: answered slots of other queries + coded outputs."""
        assert self.slots is not None
        slots = sum(1 for i in self.slots if self.queries[i] is not query and self.queries[i].output is not None)
        return slots + sum(o is not None for o in self.parity_outputs)

    def _potential(self, query: Query | None) -> int:
        """The most outputs that can ever arrive for a decode of ``query``."""
        assert self.slots is not None
        slots = sum(1 for i in self.slots if self.queries[i] is not query and not self._lost(self.queries[i]))
        return slots + sum(not failed for failed in self.parity_failed)

    @staticmethod
    def _lost(query: Query) -> bool:
        return query.output is None and query.failed

    def _needed(self, query: Query) -> int:
        """Outputs a decode of ``query`` needs. ParM's subtraction decoder rebuilds a query that fills c
        slots of a padded group as one unknown, so its c - 1 repeats do not count as extra losses."""
        assert self.slots is not None
        if not self.layout.parity_model:
            return self.layout.needed
        return self.layout.needed - (self.slots.count(query.index) - 1)

    def _coded_settled(self) -> bool:
        return all(o is not None or f for o, f in zip(self.parity_outputs, self.parity_failed, strict=True))

    def decodable(self, query: Query) -> bool:
        """A decode could rebuild ``query`` now."""
        if not (self.coded and self.sealed):
            return False
        if self._available(query) < self._needed(query):
            return False
        # Non-systematic: every answer is decoded, so wait for the stragglers among the coded queries
        # until this query's own straggler deadline: more outputs decode more accurately.
        return self.layout.systematic or self._coded_settled() or query.straggling

    def hopeless(self, query: Query) -> bool:
        """The group can never rebuild ``query``."""
        if not self.coded or query.decode_failed:
            return True
        return self.sealed and self._potential(query) < self._needed(query)

    def decode_inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(outputs (k, classes), present (k,), parity_outputs (r, classes), parity_present (r,))`` now."""
        assert self.slots is not None
        arrived = [o for o in self.parity_outputs if o is not None]
        arrived += [q.output for q in self.queries if q.output is not None]
        zeros = np.zeros_like(arrived[0])
        slot_out = [self.queries[i].output for i in self.slots]
        outputs = np.stack([zeros if o is None else o for o in slot_out])
        present = np.array([o is not None for o in slot_out], dtype=bool)
        parity = np.stack([zeros if o is None else o for o in self.parity_outputs])
        parity_present = np.array([o is not None for o in self.parity_outputs], dtype=bool)
        return outputs, present, parity, parity_present

    # ---- decisions ----------------------------------------------------------------------------

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
