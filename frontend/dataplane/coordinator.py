"""Per-route serving (:class:`ModelServer`: runs coding groups' actions against Triton and the coding services),
and the one dataplane over the routes' servers that both protocols call (:class:`Dataplane`).

Queries are grouped in arrival order (:mod:`frontend.core.groups` decides everything); this module owns
the clock and the I/O. It feeds a group its events — a query admitted, the group full or its fill
timeout passed, a call's outcome, a straggler deadline, the encoder's or decoder's answer — and
executes the actions the group returns: Triton calls, encodes, decodes, answers. It never writes a
group's fields. Every coding call's timeout is what is left of its queries' deadlines; Triton calls
keep a generous safety timeout and are never cancelled (see :mod:`frontend.transport.triton`), unless the
pool gives calls up (``--cancel-losers``): then once every query of a sealed group is closed (answered, or
its client gone), the group's calls still queued or out are given up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from coding.scheme import group_size
from frontend.core.actions import Action, Answer, Decode, Discarded, Encode, Fail, Infer
from frontend.core.admission import Admission, Admitted
from frontend.core.calls import (
    CallInfo,
    Cancel,
    Cancelled,
    Coder,
    CodingServiceError,
    ModelSignature,
    Pool,
    WorkerError,
)
from frontend.core.deadlines import DeadlinePolicy, RouteDeadlines
from frontend.core.groups import CodingGroup, Query
from frontend.core.placement import Placer
from frontend.core.routes import Route, RouteError
from frontend.dataplane import metrics
from frontend.dataplane.dispatch import Dispatcher
from service_common.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable, code_name

log = logging.getLogger(__name__)

MIN_CODING_TIMEOUT_S = 0.001  # a coding call is still made with at least this much time left


@dataclass(frozen=True)
class ModelOutput:
    model: str
    logits: np.ndarray
    reconstructed: bool


@dataclass(frozen=True)
class QueryAnswer:
    """A query's answer: one output per model it ran on (one for every scheme but COIN's)."""

    outputs: tuple[ModelOutput, ...]
    scheme: str
    group_id: int
    latency_s: float
    faulty_workers: tuple[int, ...] = ()  # coded workers the decoder judged Byzantine

    @property
    def logits(self) -> np.ndarray:
        """The first model's output: the only one for routes of one model."""
        return self.outputs[0].logits

    @property
    def reconstructed(self) -> bool:
        return any(o.reconstructed for o in self.outputs)


class ModelServer:
    """Serves one route. Create inside the running loop; call :meth:`load` before queries."""

    def __init__(
        self,
        route: Route,
        pool: Pool,
        placer: Placer,
        dispatcher: Dispatcher,
        coders: Coder,
        deadlines: RouteDeadlines,
    ) -> None:
        self.route = route
        self.scheme = route.code
        self.models = route.models  # role -> model name on Triton
        self._pool = pool
        self._placer = placer
        self._dispatcher = dispatcher
        self._coders = coders
        self.deadlines = deadlines
        self._group_ids = itertools.count()
        self._open: CodingGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # encodes and decodes
        self._calls_out = 0  # Triton calls sent and not answered yet
        self._no_calls_out = asyncio.Event()
        self._cancels: dict[int, list[Cancel]] = {}  # group id -> its calls' (only where the pool gives them)
        self.signatures: dict[str, ModelSignature] = {}
        # Metric children bound once: labels() per query costs more than the count.
        self._answered = {
            rebuilt: (
                metrics.ANSWERS.labels(route.model, route.scheme, source),
                metrics.QUERY_SECONDS.labels(route.model, source),
            )
            for rebuilt, source in ((False, "deployed"), (True, "reconstructed"))
        }
        self._failures = metrics.Bound(lambda kind: metrics.FAILURES.labels(route.model, kind))
        self.signature: ModelSignature | None = None  # of the queries clients send; set = ready

    async def load(self) -> None:
        """Fetch every model's signature from Triton (raises WorkerError while one is not ready, RouteError
        when the models do not fit the route: different inputs, a shape the scheme cannot code, a coded
        model answering the wrong shape)."""
        signatures = {}
        for model in dict.fromkeys(self.models.values()):
            signatures[model] = await self._pool.signature(model, self._placer.serving(model)[0])
        data = [signatures[self.models[s.role]] for s in self.scheme.data_slots]
        if len({(s.shape, s.dtype) for s in data}) != 1:
            raise RouteError(f"route {self.route.model}: its models take different inputs: {data}")
        problem = self.scheme.rejects(data[0].shape)
        if problem:
            where = f"route {self.route.model}={self.route.scheme}"
            raise RouteError(f"{where}: {problem} (its deployed model takes {list(data[0].shape)})")
        for i, slot in enumerate(self.scheme.coded_slots):
            model = self.models[slot.role]
            expected = self.scheme.coded_output_shape(i, data[0].output_shape)
            if signatures[model].output_shape != expected:
                raise RouteError(
                    f"route {self.route.model}: {model} answers shape {list(signatures[model].output_shape)} "
                    f"but {self.scheme.name} expects {list(expected)} from coded slot {i}"
                )
        self.signatures = signatures
        # Last: a set signature means "ready", so it must not be set while a model (on other
        # instances, possibly still loading) is missing; a failed attempt is retried whole.
        self.signature = data[0]

    async def classify(self, x: np.ndarray, timeout_s: float, annotation: Any = None) -> QueryAnswer:
        """Answer one query exactly once, within ``timeout_s``. ``annotation`` travels with the query's
        data calls untouched (fault injection reads a forced fault from it)."""
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        self.deadlines.arrival(loop.time())
        group, query = self._admit(x, loop.time() + timeout_s, waiter, annotation)
        if group.coded and not group.eager_decode:  # eager: nothing waits for the deadline
            loop.call_later(self.deadlines.straggler_s(), self._on_straggler_deadline, group, query)
            resend_s = self.deadlines.resend_s()
            if resend_s is not None:
                loop.call_later(resend_s, self._on_resend_deadline, group, query)
        # A timer on the waiter, not asyncio.timeout (which costs a context manager and a task
        # cancellation per query): the deadline fails the waiter itself, and the group then
        # answers nothing more to it (its Answer and Fail actions skip a waiter that is done).
        timer = loop.call_at(query.deadline, _expire, waiter, self.route.model, timeout_s)
        try:
            answer = await waiter
        except Exception as exc:
            self._failures[code_name(exc)].inc()
            raise
        finally:
            timer.cancel()
            group.close(query)  # a deadline or a cancelled client also ends the query: never answer twice
            if self._cancels:
                self._give_up_calls(group)
        return self._reply(answer, group, time.perf_counter() - start)

    def _reply(self, answer: Answer, group: CodingGroup, latency_s: float) -> QueryAnswer:
        outputs = tuple(ModelOutput(self.models[o.role], o.logits, o.reconstructed) for o in answer.outputs)
        reply = QueryAnswer(outputs, self.route.scheme, group.group_id, latency_s, answer.faulty_workers)
        answers, seconds = self._answered[reply.reconstructed]
        answers.inc()
        seconds.observe(latency_s)
        return reply

    # ---- grouping -------------------------------------------------------------------------

    def _admit(
        self, x: np.ndarray, deadline: float, waiter: asyncio.Future[Answer], annotation: Any
    ) -> tuple[CodingGroup, Query]:
        if self._open is None:
            eager = self.route.decode == "eager"
            self._open = CodingGroup(next(self._group_ids), self.scheme, self.models, self._placer, eager)
            if self._open.coded and self._open.size > 1:
                asyncio.get_running_loop().call_later(self.deadlines.fill_s(), self._seal_on_timeout, self._open)
        group = self._open
        query, actions = group.add(x, deadline, waiter, annotation)
        self._execute(group, actions)
        if group.full:
            self._open = None
            self._seal(group, "full")
        return group, query

    def _seal_on_timeout(self, group: CodingGroup) -> None:
        if not group.sealed:
            if self._open is group:
                self._open = None
            self._seal(group, "timeout")

    def _seal(self, group: CodingGroup, fill: str) -> None:
        if group.coded:
            metrics.GROUPS.labels(self.route.model, fill).inc()
        self._execute(group, group.seal())
        if self._cancels:
            self._give_up_calls(group)  # its queries may all have closed while it filled

    def _on_straggler_deadline(self, group: CodingGroup, query: Query) -> None:
        self._execute(group, group.straggler_deadline(query))

    def _on_resend_deadline(self, group: CodingGroup, query: Query) -> None:
        actions = group.resend_deadline(query)
        if actions:
            metrics.RESENDS.labels(self.route.model).inc(len(actions))
        self._execute(group, actions)

    # ---- actions ----------------------------------------------------------------------------

    def _execute(self, group: CodingGroup, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Infer):
                self._infer(group, action)
            elif isinstance(action, Encode):
                self._spawn(self._encode(group, action))
            elif isinstance(action, Decode):
                self._spawn(self._decode(group, action))
            elif isinstance(action, Answer):
                if not action.ticket.done():  # cancelled (its client left) or past its deadline: answered once
                    action.ticket.set_result(action)
            elif isinstance(action, Fail):
                if not action.ticket.done():
                    action.ticket.set_exception(Unavailable(f"{self.route.model}: {action.reason}"))
            elif isinstance(action, Discarded):
                metrics.LATE_DISCARDED.labels(self.route.model).inc()

    def _infer(self, group: CodingGroup, action: Infer) -> None:
        """Send the call; its outcome comes back in :meth:`_call_answered` (a completion callback: no task
        or future per call, see frontend.core.completion)."""
        model = self.models[action.role]
        # Past the last deadline of the group's queries so far nobody waits for this output: never sent then.
        deadline = max(q.deadline for q in group.queries)
        call = CallInfo(
            model, action.instance, action.kind, action.worker, action.copy, action.annotation, group.group_id, deadline
        )
        self._calls_out += 1
        start = time.perf_counter()
        cancel = self._dispatcher.dispatch(
            call,
            action.input[None],
            self.signatures[model],
            lambda out, error: self._call_answered(group, action, model, start, out, error),
        )
        if cancel is not None:
            self._cancels.setdefault(group.group_id, []).append(cancel)
            self._give_up_calls(group)  # sent after its last query closed: given up at once

    def _give_up_calls(self, group: CodingGroup) -> None:
        """Once no query of the group can still be answered (it is sealed and each is closed), give up its calls
        still queued or out (where the pool allows: ``--cancel-losers``)."""
        if group.sealed and all(q.closed for q in group.queries):
            for cancel in self._cancels.pop(group.group_id, ()):
                cancel()

    def _call_answered(
        self,
        group: CodingGroup,
        action: Infer,
        model: str,
        start: float,
        out: np.ndarray | None,
        error: BaseException | None,
    ) -> None:
        self._calls_out -= 1
        if not self._calls_out:
            self._no_calls_out.set()
        if isinstance(error, Cancelled):
            return  # given up: no query of its group waits for it
        if error is not None:
            if not isinstance(error, WorkerError):  # a bug, not a worker's failure: the group still hears of it
                log.error("%s call to %s raised", action.kind, model, exc_info=error, extra=self._about(group))
                error = WorkerError(f"{type(error).__name__}: {error}")
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s call to %s failed: %s", action.kind, model, error, extra=self._about(group))
            now = asyncio.get_running_loop().time() if error.transport else None
            actions = group.failed(action.handle, str(error), retry_at=now)
            retries = sum(isinstance(a, Infer) for a in actions)
            if retries:
                metrics.RETRIES.labels(model).inc(retries)
            self._execute(group, actions)
            return
        assert out is not None
        if action.kind == "coded":
            self.deadlines.coded_latency.record(time.perf_counter() - start)
        self._execute(group, group.arrived(action.handle, out[0]))

    def _about(self, group: CodingGroup) -> dict[str, Any]:
        """A log line's fields when it concerns one coding group (JSON log lines carry them: service_common.logs)."""
        return {"group_id": group.group_id, "model": self.route.model}

    async def _encode(self, group: CodingGroup, action: Encode) -> None:
        start = time.perf_counter()
        try:
            coded = await self._coders.encode(self.route, action.inputs, self._time_left(action.deadline))
        except CodingServiceError as exc:
            log.debug(
                "encoding group %d of %s failed: %s",
                group.group_id,
                self.route.model,
                exc,
                extra=self._about(group),
            )
            self._execute(group, group.encode_failed(str(exc)))
            return
        self.deadlines.encode_latency.record(time.perf_counter() - start)
        self._execute(group, group.encoded(coded))

    async def _decode(self, group: CodingGroup, action: Decode) -> None:
        start = time.perf_counter()
        try:
            rebuilt, faulty = await self._coders.decode(
                self.route, action.data_outputs, action.coded_outputs, self._time_left(action.deadline)
            )
        except CodingServiceError as exc:
            log.debug(
                "decode for group %d of %s failed: %s",
                group.group_id,
                self.route.model,
                exc,
                extra=self._about(group),
            )
            self._execute(group, group.decode_failed(action.handle, str(exc)))
            return
        metrics.DECODE_SECONDS.labels(self.route.model).observe(time.perf_counter() - start)
        if faulty:
            metrics.FAULTY_WORKERS.labels(self.route.model).inc(len(faulty))
        self._execute(group, group.decoded(action.handle, rebuilt, faulty))

    @staticmethod
    def _time_left(deadline: float) -> float:
        return max(MIN_CODING_TIMEOUT_S, deadline - asyncio.get_running_loop().time())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight Triton calls finish (never cancel them: see module doc)."""
        calls = None
        if self._calls_out:
            self._no_calls_out.clear()
            calls = asyncio.ensure_future(self._no_calls_out.wait())
        waits: set[asyncio.Future[Any]] = {*self._tasks, *([calls] if calls else [])}
        if waits:
            await asyncio.wait(waits, timeout=timeout_s)
        if calls is not None:
            calls.cancel()


def _expire(waiter: asyncio.Future[Answer], model: str, timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(DeadlineExceeded(f"no answer for {model} within the deadline of {timeout_s * 1e3:.0f} ms"))


class Dataplane:
    """The one dataplane under both protocols: a shell converts its request into rows of queries and calls
    :meth:`answer`; it gets one :class:`QueryAnswer` per row, each through its route's coding groups. It holds
    the routes' servers, admission, the limits a shell checks (message size, default deadline), and how a
    request may force a fault (given at assembly: the shells never import fault injection).

    Create inside the running loop; :meth:`ModelServer.load` every server before its queries."""

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
        self._down: dict[str, str] = {}  # route -> why its queries cannot be answered now (set_down)

    def _server(self, route: Route, policy: DeadlinePolicy) -> ModelServer:
        dispatcher = Dispatcher(self.pool, self.placer, route.dispatch)
        deadlines = RouteDeadlines(route.deadlines or policy, dispatcher.latency, group_size(route.code))
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
        if model in self._down:
            route = server.route
            raise Unavailable(f"route {model}={route.scheme} (model {model!r}) is down: {self._down[model]}")
        if server.signature is None:
            raise Unavailable(f"model {model!r} is not ready yet: {self.waiting_for}")
        return server

    def set_down(self, down: dict[str, str]) -> None:
        """The routes that cannot be answered now (route -> why, from health): their queries are refused
        UNAVAILABLE at once, naming the route and why, instead of waiting on a Triton that is not there."""
        self._down = dict(down)

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
