"""Client-side batching that adds no delay: the frontend's twin of Triton's dynamic batcher.

While fewer than ``max_inflight`` calls are out, items leave at once (after the current turn of the
event loop, so items submitted together — a KServe batch, groups sealed together — leave as one
call). While the limit is reached, new items wait, and when a call returns everything that queued
meanwhile leaves as one call (up to ``max_size``). The Triton pool keeps one :func:`row_batcher` per
(instance, model); the coding clients one :class:`Batcher` per service. Placement is untouched: a
Triton batcher only ever holds rows already placed on its instance, and two slots of one group are
never placed on one instance while another is free.

Giving items up (``cancel``, off by default): with ``"queued"`` :meth:`Batcher.send` returns a callable that
gives its item up — still queued, it leaves the queue and is never sent; with ``"sent"`` also a call already
out is cancelled (its task, and so its gRPC call) once every item it carries has been given up. A given-up
item's ``done`` gets :class:`~frontend.core.calls.Cancelled` when it is dropped or its call cancelled, and its
result as usual when its call finishes anyway.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import numpy as np

from frontend.core.calls import Cancel, Cancelled
from frontend.core.completion import Done, awaited, deliver

# How long the measured call time stands with no call returning to renew it (Batcher.recent_call_s).
DEFAULT_ESTIMATE_MAX_AGE_S = 0.5

CANCELS = ("never", "queued", "sent")  # what a Batcher may give up (see the module doc)

Item = TypeVar("Item")
Result = TypeVar("Result")


# A queued or sent item: the item, who gets its result, and its deadline (loop time; None: none).
_Entry = tuple[Item, Done, float | None]


class Expired(Exception):
    """The item's deadline passed while it waited in the queue: it was never sent."""


class Batcher(Generic[Item, Result]):
    """``send`` takes the items of one call and answers one result per item, in order."""

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[list[Result]]],
        max_inflight: int,
        max_size: int,
        size: Callable[[Item], int] = lambda item: 1,
        expired: Callable[[str], Exception] = Expired,
        estimate_max_age_s: float = DEFAULT_ESTIMATE_MAX_AGE_S,
        clock: Callable[[], float] = time.perf_counter,
        cancel: str = "never",
    ) -> None:
        if cancel not in CANCELS:
            raise ValueError(f"cancel must be one of {CANCELS}, got {cancel!r}")
        if max_inflight < 1 or max_size < 1:
            raise ValueError(f"need max_inflight >= 1 and max_size >= 1, got {max_inflight}, {max_size}")
        if estimate_max_age_s <= 0:
            raise ValueError(f"estimate_max_age_s must be positive, got {estimate_max_age_s}")
        self._send = send
        self._expired = expired  # the exception an item still queued at its deadline fails with
        self._max_inflight = max_inflight
        self._max_size = max_size
        self._size = size
        self._queue: deque[_Entry[Item]] = deque()
        self._queued = 0  # the size of what waits in the queue
        self._inflight = 0
        self.call_s: float | None = None  # a moving average of how long one call takes (None: none yet)
        self._measured_at = 0.0  # clock time of call_s's last sample
        self._estimate_max_age_s = estimate_max_age_s
        self._clock = clock
        self._started: dict[int, float] = {}  # calls out -> when each left (at most max_inflight)
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._cancel = cancel
        # With cancel: the calls out (id of their batch -> batch and task), the items of those given up, and
        # the calls cancelled because all of theirs were.
        self._out: dict[int, tuple[list[_Entry[Item]], asyncio.Task[None]]] = {}
        self._given_up: set[int] = set()
        self._cancelled: set[int] = set()

    async def submit(self, item: Item, deadline: float | None = None) -> Result:
        """The result for ``item``: :meth:`send`, awaited."""
        result: Result = await awaited(lambda done: self.send(item, done, deadline))
        return result

    def send(self, item: Item, done: Done, deadline: float | None = None) -> Cancel | None:
        """Queue ``item``; ``done`` gets its result from whichever call carries it, called directly when
        that call returns (no task or future per item). An item still queued at ``deadline`` (loop time:
        when nobody waits for its result any more) is never sent: ``done`` gets ``expired``'s exception
        (:class:`Expired` unless given). Under overload the queue sheds the work nobody waits for
        instead of doing it late. Returns what gives the item up when ``cancel`` allows it, else None."""
        entry = (item, done, deadline)
        self._queue.append(entry)
        self._queued += self._size(item)
        self._kick()
        if self._cancel == "never":
            return None
        return lambda: self._give_up(entry)

    def _give_up(self, entry: _Entry[Item]) -> None:
        """Nobody waits for ``entry``'s result: drop it if still queued; once every item of its call is given
        up, cancel the call (``cancel="sent"``). A no-op once its call has returned."""
        for i, queued in enumerate(self._queue):
            if queued is entry:
                del self._queue[i]
                self._queued -= self._size(entry[0])
                asyncio.get_running_loop().call_soon(deliver, entry[1], None, Cancelled("given up while queued"))
                return
        for key, (batch, task) in self._out.items():
            if any(sent is entry for sent in batch):
                self._given_up.add(id(entry))
                if (
                    self._cancel == "sent"
                    and key not in self._cancelled
                    and all(id(e) in self._given_up for e in batch)
                ):
                    self._cancelled.add(key)
                    task.cancel()
                return

    def _kick(self) -> None:
        """Start a call when items wait and a slot is free. The call takes its batch on its task's first
        step, after the current turn of the loop, so that items sent together leave together."""
        if not self._scheduled and self._queue and self._inflight < self._max_inflight:
            self._scheduled = True
            self._inflight += 1  # the slot is the new call's from now
            self._tasks.add(asyncio.get_running_loop().create_task(self._call()))

    def _take(self) -> list[_Entry[Item]]:
        entry = self._queue.popleft()
        batch = [entry]
        size = self._size(entry[0])
        while self._queue and size + self._size(self._queue[0][0]) <= self._max_size:
            size += self._size(self._queue[0][0])
            batch.append(self._queue.popleft())
        self._queued -= size
        return batch

    def _drop_expired(self) -> None:
        now = asyncio.get_running_loop().time()
        kept: deque[_Entry[Item]] = deque()
        for entry in self._queue:
            item, done, deadline = entry
            if deadline is not None and deadline <= now:
                self._queued -= self._size(item)
                deliver(done, None, self._expired(f"still queued {now - deadline:.3f} s after its deadline"))
            else:
                kept.append(entry)
        self._queue = kept

    def wait_s(self, size: int = 1) -> float:
        """About how long an item of ``size`` submitted now would wait for its result: one call when a
        slot is free, else the calls queued ahead of it (of ``max_size`` each, ``max_inflight`` at a
        time) and its own, each taking :meth:`recent_call_s`. 0 while nothing is known."""
        call_s = self.recent_call_s()
        if call_s is None:
            return 0.0
        if self._inflight < self._max_inflight and not self._queue:
            return call_s
        ahead = math.ceil((self._queued + size) / self._max_size)
        return call_s * (1 + ahead / self._max_inflight)

    def recent_call_s(self) -> float | None:
        """How long a call takes now, as far as is known (None: nothing is).

        The moving average of the calls that returned, while its last sample is younger than
        ``estimate_max_age_s``, and at least as long as the oldest call still out (a stalled instance
        makes it grow while the stall lasts). An older average is forgotten: the estimate feeds
        admission, and admission refuses queries whose deadline it exceeds, so an estimate a fault
        inflated would otherwise stand for good, since a refused query makes no call that could
        correct it. Forgotten, the next query is let through and its call measures the instance again."""
        now = self._clock()
        fresh = self.call_s if self.call_s is not None and now - self._measured_at <= self._estimate_max_age_s else None
        if not self._started:
            return fresh
        oldest_s = now - min(self._started.values())
        return oldest_s if fresh is None else max(fresh, oldest_s)

    def _measured(self, took: float, now: float) -> None:
        if self.call_s is None or now - self._measured_at > self._estimate_max_age_s:
            self.call_s = took  # what it averaged is forgotten: it starts again from this call
        else:
            self.call_s = 0.8 * self.call_s + 0.2 * took
        self._measured_at = now

    async def _call(self) -> None:
        self._scheduled = False
        try:
            self._drop_expired()
            if not self._queue:
                return
            batch = self._take()
            self._kick()  # more waits than one call carries and a slot is free: the next call starts too
            key = id(batch)
            self._started[key] = start = self._clock()
            if self._cancel != "never":
                self._out[key] = (batch, asyncio.current_task())  # type: ignore[assignment]
            try:
                results = await self._send([item for item, _, _ in batch])
            except asyncio.CancelledError:
                if not self._returned(key, batch):
                    raise  # not ours to swallow
                for _, done, _ in batch:
                    deliver(done, None, _cancelled())
            except Exception as exc:  # noqa: BLE001 - every item of the call gets the call's failure
                error = _cancelled() if self._returned(key, batch) else exc  # a cancelled call may fail as CANCELLED
                for _, done, _ in batch:
                    deliver(done, None, error)
            else:
                self._returned(key, batch)
                now = self._clock()
                self._measured(now - start, now)
                for (_, done, _), result in zip(batch, results, strict=True):
                    deliver(done, result, None)
            finally:
                del self._started[key]
        finally:
            self._inflight -= 1
            # Dropped here, not by a done callback: that would cost one more turn of the loop per call.
            self._tasks.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._kick()

    def _returned(self, key: int, batch: list[_Entry[Item]]) -> bool:
        """The call is back (before its items hear of it, so that giving one up from there is a no-op);
        True when it was cancelled by :meth:`_give_up`."""
        if self._cancel == "never":
            return False
        del self._out[key]
        for entry in batch:
            self._given_up.discard(id(entry))
        if key in self._cancelled:
            self._cancelled.discard(key)
            return True
        return False


def _cancelled() -> Cancelled:
    return Cancelled("cancelled on the way: every item of its call was given up")


def row_batcher(
    send: Callable[[np.ndarray], Awaitable[np.ndarray]],
    max_inflight: int,
    max_rows: int,
    on_batch: Callable[[int], Any] | None = None,
    expired: Callable[[str], Exception] = Expired,
    estimate_max_age_s: float = DEFAULT_ESTIMATE_MAX_AGE_S,
    cancel: str = "never",
) -> Batcher[np.ndarray, np.ndarray]:
    """Batches of rows (one ModelInfer): the items are concatenated and the output split back by rows."""

    async def send_rows(items: list[np.ndarray]) -> list[np.ndarray]:
        rows = items[0] if len(items) == 1 else np.concatenate(items)
        if on_batch is not None:
            on_batch(len(rows))
        output = await send(rows)
        if len(items) == 1:  # the common case at low load: nothing to split
            return [output]
        bounds = np.cumsum([len(item) for item in items])[:-1]
        return list(np.split(output, bounds))

    return Batcher(
        send_rows,
        max_inflight,
        max_rows,
        size=len,
        expired=expired,
        estimate_max_age_s=estimate_max_age_s,
        cancel=cancel,
    )
