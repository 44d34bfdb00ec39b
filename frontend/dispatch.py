"""Sending a Triton call: once, replicated, or hedged — the uncoded baselines live here.

Every call of a route goes through its Dispatcher. Data calls follow the route's policy; coded calls
are sent once (their redundancy is the code's). The first successful copy wins. Losing copies are
left to finish and are discarded (cancelling in-flight calls crashes the local Triton 2.51). Extra
copies go to instances the call does not use yet. Outcomes travel as completion callbacks
(:mod:`frontend.completion`), so a hedge costs a timer, not a task.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from frontend import metrics
from frontend.completion import Done, awaited
from frontend.config import Dispatch
from frontend.latency import LatencyWindow
from frontend.placement import Placer
from frontend.workers import CallInfo, ModelSignature, Pool

HEDGE_QUANTILE = 0.95  # The Tail at Scale: hedge after about the p95 of normal latency


class Dispatcher:
    def __init__(self, pool: Pool, placer: Placer, policy: Dispatch) -> None:
        self._pool = pool
        self._placer = placer
        self._policy = policy
        self.latency = LatencyWindow()  # of the data calls: what the hedging delay adapts to
        self._outcomes = metrics.Bound(lambda key: metrics.WORKER_CALLS.labels(*key))

    async def call(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray:
        """The output of ``batch`` on ``call.model``: :meth:`send`, awaited."""
        output: np.ndarray = await awaited(lambda done: self.send(call, batch, signature, done))
        return output

    def send(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done) -> None:
        """``done`` gets the output: first from ``call.instance``, then from copies. No task: copies are
        sent and raced from completion callbacks and a timer."""
        if call.kind != "data" or self._policy.mode == "single":
            self._one(call, batch, signature, done)
        else:
            _Race(self, call, batch, signature, done)

    def _hedge_delay_s(self) -> float:
        if self._policy.hedge_delay_ms is not None:
            return self._policy.hedge_delay_ms / 1e3
        return self.latency.quantile(HEDGE_QUANTILE)

    def _one(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done) -> None:
        start = time.perf_counter()

        def recorded(result: np.ndarray | None, error: BaseException | None) -> None:
            if error is not None:
                self._outcomes[call.model, "error"].inc()
            else:
                if call.kind == "data":
                    self.latency.record(time.perf_counter() - start)
                self._outcomes[call.model, "ok"].inc()
            done(result, error)

        self._pool.send(call, batch, signature, recorded)


class _Race:
    """One replicated or hedged data call: its copies race and the first success goes to ``done``.
    Replication sends every copy at once; hedging sends a second one when the first has not answered
    within the hedge delay, or at once when it fails. Losers finish and are dropped (Triton calls are
    never cancelled: see frontend.workers); ``done`` gets the last error only if every copy failed."""

    def __init__(
        self, dispatcher: Dispatcher, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done
    ) -> None:
        self._dispatcher, self._call, self._batch, self._signature = dispatcher, call, batch, signature
        self._done: Done | None = done  # None once answered
        self._used = {call.instance: 1}
        self._out = 0  # copies sent and not finished
        self._hedge: asyncio.TimerHandle | None = None
        self._send(call)
        policy = dispatcher._policy
        if policy.mode == "hedge":
            self._hedge = asyncio.get_running_loop().call_later(dispatcher._hedge_delay_s(), self._send_hedge)
        else:
            for _ in range(policy.copies - 1):
                self._send_copy()

    def _send(self, call: CallInfo) -> None:
        self._out += 1
        self._dispatcher._one(call, self._batch, self._signature, self._finished)

    def _send_copy(self) -> None:
        instance = self._dispatcher._placer.place(self._call.model, self._used)
        self._used[instance] = self._used.get(instance, 0) + 1
        self._send(dataclasses.replace(self._call, instance=instance, copy=sum(self._used.values()) - 1))

    def _send_hedge(self) -> None:
        self._hedge = None
        if self._done is not None:
            metrics.HEDGES.labels(self._call.model).inc()
            self._send_copy()

    def _finished(self, result: np.ndarray | None, error: BaseException | None) -> None:
        self._out -= 1
        done = self._done
        if done is None:
            return  # a loser
        if error is None:
            self._done = None
            if self._hedge is not None:
                self._hedge.cancel()
                self._hedge = None
            done(result, None)
        elif self._hedge is not None:  # the first copy failed before the hedge delay: hedge at once
            self._hedge.cancel()
            self._send_hedge()
        elif not self._out:
            self._done = None
            done(None, error)
