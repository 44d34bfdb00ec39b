"""Per-model serving: coding groups, dispatch to Triton, straggler deadlines, exactly-once answers.

Every query goes to the deployed model at once. Queries are grouped in arrival order; a sealed
group is encoded and its parity query sent to the parity model. A query whose own output is
late past the straggler deadline (or failed) is answered by the decoder's reconstruction as
soon as the rest of its group and the parity output are in; whichever answer comes first wins
and the other is discarded. The decision logic lives in :mod:`frontend.groups`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from coding.schemes import get_scheme
from frontend import metrics
from frontend.coding_clients import CodingClients, CodingServiceError
from frontend.config import Route
from frontend.dispatch import Dispatcher
from frontend.groups import UNCODED, Action, CodingGroup, Query
from frontend.workers import Fault, ModelSignature, TritonPool, WorkerError
from service_common.errors import DeadlineExceeded, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    logits: np.ndarray
    reconstructed: bool
    scheme: str
    group_id: int
    latency_s: float
    faulty_workers: tuple[int, ...] = ()  # coded workers the decoder judged Byzantine


class ModelServer:
    """Serves one route. Create inside the running loop; call :meth:`load` before queries."""

    def __init__(
        self,
        route: Route,
        deployed: Dispatcher,
        deployed_pool: TritonPool,
        parity_pool: TritonPool,
        coders: CodingClients,
        straggler_timeout_s: float,
        fill_timeout_s: float,
        coded_faults: tuple[tuple[int, Fault], ...] = (),
    ) -> None:
        self.route = route
        self._deployed = deployed
        self._deployed_pool = deployed_pool
        self._parity_pool = parity_pool
        self._coders = coders
        self._straggler_timeout_s = straggler_timeout_s
        self._fill_timeout_s = fill_timeout_s
        self.layout = get_scheme(route.scheme, route.k, route.param_dict).layout if route.coded else UNCODED
        self._coded_faults = dict(coded_faults)
        self._group_ids = itertools.count()
        self._open: CodingGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.signature: ModelSignature | None = None
        self._parity_signature: ModelSignature | None = None

    async def load(self) -> None:
        """Fetch the model signatures from Triton (raises WorkerError while Triton is not ready)."""
        signature = await self._deployed_pool.signature(self.route.model)
        if self.layout.parity_model:
            self._parity_signature = await self._parity_pool.signature(self.route.parity_model)
        # Last: a set signature means "ready", so it must not be set while the parity model (on other
        # instances, possibly still loading) is missing; a failed attempt is retried whole.
        self.signature = signature

    async def classify(self, x: np.ndarray, timeout_s: float, fault: Fault | None = None) -> Answer:
        """Answer one query exactly once, within ``timeout_s``. ``fault`` forces an injected fault
        on its deployed-model call (tests); otherwise the configured FaultPlan draws one."""
        start = time.perf_counter()
        group, query = self._admit(x)
        query.waiter = asyncio.get_running_loop().create_future()
        if self.layout.systematic:
            self._spawn(self._run_own(group, query, fault))
        if self.route.coded:
            asyncio.get_running_loop().call_later(self._straggler_timeout_s, self._on_straggler_deadline, group, query)
        try:
            done, _ = await asyncio.wait({query.waiter}, timeout=timeout_s)
            if not done:
                raise DeadlineExceeded(
                    f"no answer for {self.route.model} within the deadline of {timeout_s * 1e3:.0f} ms"
                )
            logits, reconstructed, faulty = query.waiter.result()
        except Exception as exc:
            metrics.FAILURES.labels(self.route.model, type(exc).__name__).inc()
            raise
        finally:
            query.answered = True  # a deadline or a cancelled client also ends the query: never answer twice
        latency_s = time.perf_counter() - start
        source = "reconstructed" if reconstructed else "deployed"
        metrics.ANSWERS.labels(self.route.model, self.route.scheme, source).inc()
        metrics.QUERY_SECONDS.labels(self.route.model, source).observe(latency_s)
        return Answer(logits, reconstructed, self.route.scheme, group.group_id, latency_s, faulty)

    # ---- grouping -------------------------------------------------------------------------

    def _admit(self, x: np.ndarray) -> tuple[CodingGroup, Query]:
        if self._open is None:
            self._open = CodingGroup(next(self._group_ids), self.layout)
            if self.route.coded and self.layout.k > 1:
                asyncio.get_running_loop().call_later(self._fill_timeout_s, self._seal_on_timeout, self._open)
        group = self._open
        query = group.add(x)
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
        group.seal()
        if self.route.coded:
            metrics.GROUPS.labels(self.route.model, fill).inc()
            self._spawn(self._run_parity(group))

    # ---- calls ----------------------------------------------------------------------------

    async def _run_own(self, group: CodingGroup, query: Query, fault: Fault | None) -> None:
        assert self.signature is not None
        try:
            out = await self._deployed.call(self.route.model, query.input[None], self.signature, fault)
            query.output = out[0]
            if query.answered:
                metrics.LATE_DISCARDED.labels(self.route.model).inc()
        except WorkerError as exc:
            log.debug("deployed call failed: %s", exc)
            query.failed = True
        self._progress(group)

    async def _run_parity(self, group: CodingGroup) -> None:
        """Encode the group; run its coded queries on the parity model (one batch) or, for codes without
        one, each on the deployed model (a call each, spread over the instances like any query)."""
        try:
            coded = await self._coders.encode(self.route, group.slot_inputs())
        except CodingServiceError as exc:
            log.warning("encoding group %d of %s failed: %s", group.group_id, self.route.model, exc)
            group.parity_failed = [True] * len(group.parity_failed)
            self._progress(group)
            return
        if self.layout.parity_model:
            await self._run_parity_model(group, coded)
        else:
            await asyncio.gather(*(self._run_coded_query(group, i, q) for i, q in enumerate(coded)))

    async def _run_parity_model(self, group: CodingGroup, coded: np.ndarray) -> None:
        assert self._parity_signature is not None
        try:
            out = await self._parity_pool.infer(self.route.parity_model, coded, self._parity_signature)
            group.parity_outputs = list(out)
            metrics.WORKER_CALLS.labels(self.route.parity_model, "ok").inc()
        except WorkerError as exc:
            log.warning("parity for group %d of %s lost: %s", group.group_id, self.route.model, exc)
            group.parity_failed = [True] * len(group.parity_failed)
            metrics.WORKER_CALLS.labels(self.route.parity_model, "error").inc()
        self._progress(group)

    async def _run_coded_query(self, group: CodingGroup, i: int, coded_query: np.ndarray) -> None:
        assert self.signature is not None
        worker = i + self.layout.k if self.layout.systematic else i  # the code's worker numbering
        try:
            out = await self._deployed.call(
                self.route.model, coded_query[None], self.signature, self._coded_faults.get(worker)
            )
            group.parity_outputs[i] = out[0]
        except WorkerError as exc:
            log.debug("coded query %d of group %d failed: %s", i, group.group_id, exc)
            group.parity_failed[i] = True
        self._progress(group)

    async def _run_decode(self, group: CodingGroup, queries: list[Query]) -> None:
        """One decoder call rebuilds every slot; answer each query in ``queries`` from its first slot."""
        outputs, present, parity_outputs, parity_present = group.decode_inputs()
        start = time.perf_counter()
        try:
            rebuilt, faulty = await self._coders.decode(self.route, outputs, present, parity_outputs, parity_present)
            metrics.DECODE_SECONDS.labels(self.route.model).observe(time.perf_counter() - start)
            if faulty:
                metrics.FAULTY_WORKERS.labels(self.route.model).inc(len(faulty))
            assert group.slots is not None
            for query in queries:
                self._answer(query, rebuilt[group.slots.index(query.index)], reconstructed=True, faulty=faulty)
        except CodingServiceError as exc:
            log.warning("decode for group %d of %s failed: %s", group.group_id, self.route.model, exc)
            for query in queries:
                query.decode_failed = True
        for query in queries:
            query.decoding = False
        self._progress(group)

    # ---- decisions ------------------------------------------------------------------------

    def _on_straggler_deadline(self, group: CodingGroup, query: Query) -> None:
        if query.output is None and not query.answered:
            query.straggling = True
            self._progress(group)

    def _progress(self, group: CodingGroup) -> None:
        to_decode = []
        for action, query in group.next_actions():
            if action is Action.ANSWER_OWN:
                assert query.output is not None
                self._answer(query, query.output, reconstructed=False)
            elif action is Action.DECODE:
                query.decoding = True
                to_decode.append(query)
            elif action is Action.FAIL:
                self._fail(
                    query,
                    Unavailable(
                        f"{self.route.model}: the deployed model failed and coding group {group.group_id} "
                        "cannot rebuild the answer (too many of its outputs lost)"
                    ),
                )
        if to_decode:
            self._spawn(self._run_decode(group, to_decode))

    def _answer(self, query: Query, logits: np.ndarray, reconstructed: bool, faulty: list[int] | None = None) -> None:
        if query.answered:
            return
        query.answered = True
        query.waiter.set_result((logits, reconstructed, tuple(faulty or ())))

    def _fail(self, query: Query, error: Exception) -> None:
        if query.answered:
            return
        query.answered = True
        query.waiter.set_exception(error)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight Triton calls finish (never cancel them: see module doc)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
