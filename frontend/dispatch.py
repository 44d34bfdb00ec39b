"""Sending a Triton call: once, replicated, or hedged — the uncoded baselines live here.

Every call of a route goes through its Dispatcher. Data calls follow the route's policy; coded calls
are sent once (their redundancy is the code's). The first successful copy wins. Losing copies are
left to finish and are discarded, unless ``cancel_losers`` is on (never against the local Triton 2.51:
cancelling in-flight calls crashes it). Extra copies go to instances the call does not use yet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from frontend import metrics
from frontend.config import Dispatch
from frontend.latency import LatencyWindow
from frontend.placement import Placer
from frontend.workers import CallInfo, ModelSignature, Pool, WorkerError

HEDGE_QUANTILE = 0.95  # The Tail at Scale: hedge after about the p95 of normal latency


class Dispatcher:
    def __init__(self, pool: Pool, placer: Placer, policy: Dispatch, cancel_losers: bool) -> None:
        self._pool = pool
        self._placer = placer
        self._policy = policy
        self._cancel_losers = cancel_losers
        self.latency = LatencyWindow()  # of the data calls: what the hedging delay adapts to
        self._outcomes = metrics.Bound(lambda key: metrics.WORKER_CALLS.labels(*key))

    async def call(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray:
        """The output of ``batch`` on ``call.model``: first from ``call.instance``, then from copies."""
        if call.kind != "data" or self._policy.mode == "single":
            return await self._one(call, batch, signature)
        tasks: list[asyncio.Future[np.ndarray]] = [asyncio.ensure_future(self._one(call, batch, signature))]
        if self._policy.mode == "hedge":
            done, _ = await asyncio.wait(tasks, timeout=self._hedge_delay_s())
            if done and tasks[0].exception() is None:
                return tasks[0].result()
            metrics.HEDGES.labels(call.model).inc()
            copies = 1
        else:
            copies = self._policy.copies - 1
        used = {call.instance: 1}
        for copy in range(1, copies + 1):
            instance = self._placer.place(call.model, used)
            used[instance] = used.get(instance, 0) + 1
            replica = dataclasses.replace(call, instance=instance, copy=copy)
            tasks.append(asyncio.ensure_future(self._one(replica, batch, signature)))
        return await self._first_success(tasks)

    def _hedge_delay_s(self) -> float:
        if self._policy.hedge_delay_ms is not None:
            return self._policy.hedge_delay_ms / 1e3
        return self.latency.quantile(HEDGE_QUANTILE)

    async def _one(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray:
        start = time.perf_counter()
        try:
            out = await self._pool.infer(call, batch, signature)
        except WorkerError:
            self._outcomes[call.model, "error"].inc()
            raise
        if call.kind == "data":
            self.latency.record(time.perf_counter() - start)
        self._outcomes[call.model, "ok"].inc()
        return out

    async def _first_success(self, tasks: list[asyncio.Future[np.ndarray]]) -> np.ndarray:
        pending: set[asyncio.Future[np.ndarray]] = set(tasks)
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.exception() is None:
                    self._release(pending)
                    return task.result()
                error = task.exception()
        assert error is not None
        raise error

    def _release(self, losers: set[asyncio.Future[np.ndarray]]) -> None:
        for task in losers:
            if self._cancel_losers:
                task.cancel()
            else:  # let it finish; read its outcome so a late failure is not reported as unhandled
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
