"""Client-side batching that adds no delay: the frontend's twin of Triton's dynamic batcher.

While fewer than ``max_inflight`` calls are out, items leave at once (after the current turn of the
event loop, so items submitted together — a KServe batch, groups sealed together — leave as one
call). While the limit is reached, new items wait, and when a call returns everything that queued
meanwhile leaves as one call (up to ``max_size``). The Triton pool keeps one :func:`row_batcher` per
(instance, model); the coding clients one :class:`Batcher` per service. Placement is untouched: a
Triton batcher only ever holds rows already placed on its instance, and two slots of one group are
never placed on one instance while another is free.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import numpy as np

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """``send`` takes the items of one call and answers one result per item, in order."""

    def __init__(
        self,
        send: Callable[[list[Item]], Awaitable[list[Result]]],
        max_inflight: int,
        max_size: int,
        size: Callable[[Item], int] = lambda item: 1,
    ) -> None:
        if max_inflight < 1 or max_size < 1:
            raise ValueError(f"need max_inflight >= 1 and max_size >= 1, got {max_inflight}, {max_size}")
        self._send = send
        self._max_inflight = max_inflight
        self._max_size = max_size
        self._size = size
        self._queue: deque[tuple[Item, asyncio.Future[Result]]] = deque()
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        """The result for ``item``, from whichever call carries it."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if not self._scheduled and self._queue:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue and self._inflight < self._max_inflight:
            batch = [self._queue.popleft()]
            size = self._size(batch[0][0])
            while self._queue and size + self._size(self._queue[0][0]) <= self._max_size:
                size += self._size(self._queue[0][0])
                batch.append(self._queue.popleft())
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
        except Exception as exc:  # noqa: BLE001 - every item of the call gets the call's failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a caller that stopped waiting (a cancelled hedge loser)
                    future.set_result(result)
        finally:
            self._inflight -= 1
            self._kick()


def row_batcher(
    send: Callable[[np.ndarray], Awaitable[np.ndarray]],
    max_inflight: int,
    max_rows: int,
    on_batch: Callable[[int], Any] | None = None,
) -> Batcher[np.ndarray, np.ndarray]:
    """Batches of rows (one ModelInfer): the items are concatenated and the output split back by rows."""

    async def send_rows(items: list[np.ndarray]) -> list[np.ndarray]:
        rows = items[0] if len(items) == 1 else np.concatenate(items)
        if on_batch is not None:
            on_batch(len(rows))
        output = await send(rows)
        bounds = np.cumsum([len(item) for item in items])[:-1]
        return list(np.split(output, bounds))

    return Batcher(send_rows, max_inflight, max_rows, size=len)
