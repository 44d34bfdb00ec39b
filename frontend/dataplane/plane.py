"""The one dataplane under both protocols: a shell converts its request into rows of queries and calls
:meth:`Dataplane.answer`; it gets one :class:`QueryAnswer` per row, each through its route's coding groups.

Holds what a request needs, and nothing of a wire: the routes' servers (:class:`ModelServer`), admission,
the limits a shell checks (message size, default deadline), and how a request may force a fault (given at
assembly: the shells never import fault injection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from coding.scheme import group_size
from frontend.core.admission import Admission, Admitted
from frontend.core.calls import Coder, Pool
from frontend.core.deadlines import DeadlinePolicy, RouteDeadlines
from frontend.core.placement import Placer
from frontend.core.routes import Route
from frontend.dataplane.coordinator import ModelServer, QueryAnswer
from frontend.dataplane.dispatch import Dispatcher
from service_common.errors import InvalidArgument, NotFound, Unavailable


class Dataplane:
    """Create inside the running loop; :meth:`ModelServer.load` every server before its queries."""

    def __init__(
        self,
        routes: Sequence[Route],
        pool: Pool,
        placer: Placer,
        coders: Coder,
        deadlines: DeadlinePolicy,
        admission: Admission,
        *,
        max_message_bytes: int,
        default_deadline_s: float,
        refuse_by_wait: bool = True,
        forced_fault: Callable[[str], Any] | None = None,
    ) -> None:
        self.routes = tuple(routes)
        self.pool = pool
        self.placer = placer
        self.coders = coders
        self.admission = admission
        self.max_message_bytes = max_message_bytes
        self.default_deadline_s = default_deadline_s
        self._refuse_by_wait = refuse_by_wait
        self._forced_fault = forced_fault  # None: requests may not force faults (--allow-fault-metadata off)
        self.servers = {r.model: self._server(r, deadlines) for r in routes}
        self.waiting_for = "the frontend has not reached Triton yet"  # why the routes are not ready (start-up)

    def _server(self, route: Route, policy: DeadlinePolicy) -> ModelServer:
        dispatcher = Dispatcher(self.pool, self.placer, route.dispatch)
        deadlines = RouteDeadlines(policy, dispatcher.latency, group_size(route.code))
        return ModelServer(route, self.pool, self.placer, dispatcher, self.coders, deadlines)

    @property
    def ready(self) -> bool:
        return all(s.signature is not None for s in self.servers.values())

    @property
    def takes_faults(self) -> bool:
        """Whether a request may force a fault on its query (:meth:`forced_fault`)."""
        return self._forced_fault is not None

    def forced_fault(self, value: str) -> Any:
        """The annotation a request's fault metadata ``value`` puts on its query (INVALID_ARGUMENT if bad)."""
        if self._forced_fault is None:
            return None
        try:
            return self._forced_fault(value)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    def model_server(self, model: str) -> ModelServer:
        server = self.servers.get(model)
        if server is None:
            raise NotFound(f"model {model!r} is not served by this frontend; served: {sorted(self.servers)}")
        if server.signature is None:
            raise Unavailable(f"model {model!r} is not ready yet: {self.waiting_for}")
        return server

    def admit(self, server: ModelServer, client: str, time_left_s: float, queries: int = 1) -> Admitted:
        """Count ``queries`` of ``client`` for ``server``'s route in flight while the ``with`` block runs, or
        refuse them at once with RESOURCE_EXHAUSTED (:mod:`frontend.core.admission`): over a bound, or when the
        Triton queue of the route's deployed model is longer than their deadline."""
        model = min(server.route.data_models)
        wait_s = self.pool.wait_s(model, self.placer.ready(model), queries) if self._refuse_by_wait else 0.0
        return self.admission.admit(client, queries, time_left_s, wait_s)

    async def answer(
        self, server: ModelServer, rows: np.ndarray, timeout_s: float, client: str, annotation: Any = None
    ) -> list[QueryAnswer]:
        """Every row a query of ``server``'s route, admitted together (RESOURCE_EXHAUSTED at once beyond a
        bound), answered through the coding groups at once. If one row fails, the others stop waiting
        (their Triton calls still finish in the coordinator's own tasks: never cancelled)."""
        with self.admit(server, client, timeout_s, len(rows)):
            if len(rows) == 1:  # the common case: no task, no gather
                return [await server.classify(rows[0], timeout_s, annotation)]
            tasks = [asyncio.ensure_future(server.classify(row, timeout_s, annotation)) for row in rows]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:
                    task.cancel()
