"""Sending a Triton call: once, replicated, or hedged — the uncoded baselines live here.

Every call of a route goes through its Dispatcher. Data calls follow the route's policy; coded calls
are sent once (their redundancy is the code's). The first successful copy wins. Losing copies are
left to finish and are discarded (cancelling in-flight calls crashes the local Triton 2.51), unless the
pool gives calls up (``--cancel-losers``, for a Triton with the fix): then the winner gives up the
losers still out. Extra
copies go to instances the call does not use yet. Outcomes travel as completion callbacks
(:mod:`frontend.core.completion`), so a hedge costs a timer, not a task. A route may cap its hedges with a
budget (:class:`HedgeBudget`), as budgeted hedging in public RPC libraries does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import numpy as np

from frontend.core.calls import CallInfo, Cancel, Cancelled, ModelSignature, Pool
from frontend.core.completion import Done, awaited
from frontend.core.deadlines import LatencyWindow
from frontend.core.placement import Placer
from frontend.core.routes import Dispatch
from frontend.dataplane import metrics

BUDGET_WINDOW = 100  # calls: a hedging budget saves up at most the hedges of this many calls


class HedgeBudget:
    """At most ``share`` of the deployed calls get a hedge copy: a token bucket. Every deployed call adds
    ``share`` of a token and every hedge spends a whole one; the bucket starts with one token and holds at
    most the tokens of :data:`BUDGET_WINDOW` calls (at least one). So from the start hedges never exceed
    ``share`` × calls + 1, and over any stretch of calls ``share`` × (calls + BUDGET_WINDOW): a quiet
    stretch lets a later burst of stragglers be hedged, but only what the stretch before it paid for."""

    _EPSILON = 1e-9  # twenty deposits of 0.05 make one token, whatever the float rounding

    def __init__(self, share: float, window: int = BUDGET_WINDOW) -> None:
        self._share = share
        self._cap = max(1.0, share * window)
        self._tokens = 1.0

    def deposit(self) -> None:
        """A deployed call was made."""
        self._tokens = min(self._cap, self._tokens + self._share)

    def spend(self) -> bool:
        """A hedge is wanted: True (and one token spent) when the budget allows it."""
        if self._tokens < 1.0 - self._EPSILON:
            return False
        self._tokens -= 1.0
        return True


class Dispatcher:
    def __init__(self, pool: Pool, placer: Placer, policy: Dispatch) -> None:
        self._pool = pool
        self._placer = placer
        self._policy = policy
        self.latency = LatencyWindow()  # of the data calls: what the hedging delay adapts to
        self._budget = HedgeBudget(policy.hedge_budget) if policy.hedge_budget is not None else None
        self._outcomes = metrics.Bound(lambda key: metrics.WORKER_CALLS.labels(*key))
        self._hedged = metrics.Bound(lambda model: metrics.HEDGES.labels(model))
        self._withheld = metrics.Bound(lambda model: metrics.HEDGES_WITHHELD.labels(model))

    async def call(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray:
        """The output of ``batch`` on ``call.model``: :meth:`dispatch`, awaited."""
        output: np.ndarray = await awaited(lambda done: self.dispatch(call, batch, signature, done))
        return output

    def dispatch(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done) -> Cancel | None:
        """``done`` gets the output: first from ``call.instance``, then from copies. No task: copies are
        sent and raced from completion callbacks and a timer. Returns what gives the call (every copy) up
        where the pool allows it, else None."""
        if call.kind != "data" or self._policy.mode == "single":
            return self._one(call, batch, signature, done)
        return _Race(self, call, batch, signature, done).cancel

    def hedge_delay_s(self) -> float:
        """How long a hedged call waits for its first copy: fixed, or the chosen quantile of recent data calls."""
        if self._policy.hedge_delay_ms is not None:
            return self._policy.hedge_delay_ms / 1e3
        return self.latency.quantile(self._policy.hedge_quantile)

    def _deployed(self) -> None:
        """A hedged data call starts: it pays into the budget."""
        if self._budget is not None:
            self._budget.deposit()

    def _may_hedge(self, model: str) -> bool:
        """A hedge copy is wanted: counted as sent, or as withheld when the budget is spent."""
        if self._budget is None or self._budget.spend():
            self._hedged[model].inc()
            return True
        self._withheld[model].inc()
        return False

    def _one(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done) -> Cancel | None:
        start = time.perf_counter()

        def timed(result: np.ndarray | None, error: BaseException | None) -> None:  # the answer path's 3rd step
            if isinstance(error, Cancelled):
                pass  # given up, not failed: counted by the pool
            elif error is not None:
                self._outcomes[call.model, "error"].inc()
            else:
                if call.kind == "data":
                    self.latency.record(time.perf_counter() - start)
                self._outcomes[call.model, "ok"].inc()
            done(result, error)

        return self._pool.send(call, batch, signature, timed)


class _Race:
    """One replicated or hedged data call: its copies race and the first success goes to ``done``.
    Replication sends every copy at once; hedging sends a second one when the first has not answered
    within the hedge delay, or at once when it fails, unless the route's hedging budget is spent. Losers
    finish and are dropped, or are given up once a copy won where the pool allows it (see
    frontend.transport.triton); ``done`` gets the last error only if every copy sent failed."""

    def __init__(
        self, dispatcher: Dispatcher, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done
    ) -> None:
        self._dispatcher, self._call, self._batch, self._signature = dispatcher, call, batch, signature
        self._done: Done | None = done  # None once answered
        self._used = {call.instance: 1}
        self._out = 0  # copies sent and not finished
        self._hedge: asyncio.TimerHandle | None = None
        self._cancels: list[Cancel] = []  # each copy's, where the pool gives calls up
        self._send(call)
        policy = dispatcher._policy
        if policy.mode == "hedge":
            dispatcher._deployed()
            self._hedge = asyncio.get_running_loop().call_later(dispatcher.hedge_delay_s(), self._send_hedge)
        else:
            for _ in range(policy.copies - 1):
                self._send_copy()

    @property
    def cancel(self) -> Cancel | None:
        """What gives every copy up (and sends no more), where the pool gives calls up."""
        return self._give_up if self._cancels else None

    def _give_up(self) -> None:
        if self._hedge is not None:
            self._hedge.cancel()
            self._hedge = None
        for cancel in self._cancels:
            cancel()

    def _send(self, call: CallInfo) -> None:
        self._out += 1
        cancel = self._dispatcher._one(call, self._batch, self._signature, self._copy_answered)
        if cancel is not None:
            self._cancels.append(cancel)

    def _send_copy(self) -> None:
        instance = self._dispatcher._placer.place(self._call.model, self._used)
        self._used[instance] = self._used.get(instance, 0) + 1
        self._send(dataclasses.replace(self._call, instance=instance, copy=sum(self._used.values()) - 1))

    def _send_hedge(self) -> None:
        self._hedge = None
        if self._done is not None and self._dispatcher._may_hedge(self._call.model):
            self._send_copy()

    def _copy_answered(self, result: np.ndarray | None, error: BaseException | None) -> None:
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
            for cancel in self._cancels:  # the losers still out (the winner's is a no-op)
                cancel()
            return
        if self._hedge is not None:  # the first copy failed before the hedge delay: hedge at once
            self._hedge.cancel()
            self._send_hedge()  # may be withheld by the budget, or fail at once (re-entering here)
        if not self._out and self._done is not None:
            self._done = None
            done(None, error)
