"""Admission: which queries the frontend takes on, decided at once when they arrive.

Three bounds, checked in this order, each refused with RESOURCE_EXHAUSTED naming the bound:
- the wait: a query whose estimated wait (the Triton queue ahead of it, :meth:`Batcher.wait_s`) is
  longer than its own deadline would only time out later, after taking a place in the queue;
- the queries in flight in all (``max_inflight``): the queue, and so latency and memory, stay bounded;
- the queries in flight from one client (``max_per_client``): one client cannot take every place.
A query is counted from admission until its answer, whatever the answer is.
"""

from __future__ import annotations

from collections import Counter

from service_common.errors import ResourceExhausted


class Admission:
    def __init__(self, max_inflight: int, max_per_client: int) -> None:
        if max_inflight < 1 or max_per_client < 1:
            raise ValueError(f"need max_inflight >= 1 and max_per_client >= 1, got {max_inflight}, {max_per_client}")
        self.max_inflight = max_inflight
        self.max_per_client = max_per_client
        self.inflight = 0
        self._clients: Counter[str] = Counter()  # only clients with a query in flight: bounded by max_inflight

    def client_inflight(self, client: str) -> int:
        return self._clients[client]

    def admit(self, client: str, queries: int, time_left_s: float, wait_s: float) -> Admitted:
        """Count ``queries`` from ``client`` in flight while the ``with`` block runs, or refuse them as it
        starts."""
        return Admitted(self, client, queries, time_left_s, wait_s)

    def _enter(self, client: str, queries: int) -> None:
        self.inflight += queries
        self._clients[client] += queries

    def _leave(self, client: str, queries: int) -> None:
        self.inflight -= queries
        self._clients[client] -= queries
        if not self._clients[client]:
            del self._clients[client]

    def _check(self, client: str, queries: int, time_left_s: float, wait_s: float) -> None:
        if wait_s > time_left_s:
            raise ResourceExhausted(
                f"frontend overloaded: the estimated wait of {wait_s * 1e3:.0f} ms for Triton exceeds this "
                f"query's deadline ({time_left_s * 1e3:.0f} ms left); retry with backoff or a longer deadline"
            )
        if self.inflight + queries > self.max_inflight:
            raise ResourceExhausted(
                f"frontend overloaded: {self.inflight} queries in flight, {queries} more asked "
                f"(max_inflight={self.max_inflight}); retry with backoff"
            )
        mine = self._clients[client]
        if mine + queries > self.max_per_client:
            raise ResourceExhausted(
                f"client {client!r} has {mine} queries in flight, {queries} more asked "
                f"(max_inflight_per_client={self.max_per_client}); retry with backoff"
            )


class Admitted:
    """The ``with`` block of :meth:`Admission.admit` (a class, not a generator: one per query, cheaper)."""

    __slots__ = ("_admission", "_client", "_queries", "_time_left_s", "_wait_s")

    def __init__(self, admission: Admission, client: str, queries: int, time_left_s: float, wait_s: float) -> None:
        self._admission, self._client, self._queries = admission, client, queries
        self._time_left_s, self._wait_s = time_left_s, wait_s

    def __enter__(self) -> None:
        self._admission._check(self._client, self._queries, self._time_left_s, self._wait_s)
        self._admission._enter(self._client, self._queries)

    def __exit__(self, *exc: object) -> None:
        self._admission._leave(self._client, self._queries)
