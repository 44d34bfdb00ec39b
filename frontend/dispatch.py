"""Sending a deployed-model call: once, replicated, or hedged — the uncoded baselines live here.

The first successful copy wins. Losing copies are left to finish and are discarded, unless
``cancel_losers`` is on (never against the local Triton 2.51: cancelling in-flight calls crashes it).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from frontend import metrics
from frontend.config import Dispatch
from frontend.latency import LatencyWindow
from frontend.workers import Fault, FaultInjector, ModelSignature, TritonPool, WorkerError

HEDGE_QUANTILE = 0.95  # The Tail at Scale: hedge after about the p95 of normal latency


class Dispatcher:
    def __init__(self, pool: TritonPool, policy: Dispatch, faults: FaultInjector, cancel_losers: bool) -> None:
        self._pool = pool
        self._policy = policy
        self._faults = faults
        self._cancel_losers = cancel_losers
        self.latency = LatencyWindow()

    async def call(self, model: str, batch: np.ndarray, signature: ModelSignature, forced: Fault | None) -> np.ndarray:
        """The deployed model's output for ``batch``; ``forced`` overrides the first copy's injected fault."""
        first = self._pool.pick()
        first_fault = forced if forced is not None else self._faults.draw()
        if self._policy.mode == "single":
            return await self._one(model, batch, signature, first, first_fault)
        tasks = [asyncio.ensure_future(self._one(model, batch, signature, first, first_fault))]
        if self._policy.mode == "hedge":
            done, _ = await asyncio.wait(tasks, timeout=self._hedge_delay_s())
            if done and tasks[0].exception() is None:
                return tasks[0].result()
            metrics.HEDGES.labels(model).inc()
            copies = 1
        else:
            copies = self._policy.copies - 1
        for _ in range(copies):
            instance = self._pool.pick(avoid=first)
            tasks.append(asyncio.ensure_future(self._one(model, batch, signature, instance, self._faults.draw())))
        return await self._first_success(tasks)

    def _hedge_delay_s(self) -> float:
        if self._policy.hedge_delay_ms is not None:
            return self._policy.hedge_delay_ms / 1e3
        return self.latency.quantile(HEDGE_QUANTILE)

    async def _one(
        self, model: str, batch: np.ndarray, signature: ModelSignature, instance: int, fault: Fault
    ) -> np.ndarray:
        start = time.perf_counter()
        try:
            out = await self._pool.infer(model, batch, signature, fault, instance=instance)
        except WorkerError:
            metrics.WORKER_CALLS.labels(model, "error").inc()
            raise
        self.latency.record(time.perf_counter() - start)
        metrics.WORKER_CALLS.labels(model, "ok").inc()
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
