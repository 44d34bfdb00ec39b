"""Client-side batching that adds no delay: the frontend's twin of Triton's dynamic batcher.

One :class:`Batcher` per (Triton instance, model). While fewer than ``max_inflight`` calls are out, rows
leave at once (after the current turn of the event loop, so rows submitted together — a KServe batch,
groups sealed together — leave as one call). While the limit is reached, new rows wait, and when a call
returns everything that queued meanwhile leaves as one batched ModelInfer (up to ``max_rows`` rows).
Placement is untouched: a batcher only ever holds rows already placed on its instance, and two slots of
one group are never placed on one instance while another is free.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

Send = Callable[[np.ndarray], Awaitable[np.ndarray]]


class Batcher:
    def __init__(self, send: Send, max_inflight: int, max_rows: int, on_batch: Callable[[int], Any] | None = None):
        if max_inflight < 1 or max_rows < 1:
            raise ValueError(f"need max_inflight >= 1 and max_rows >= 1, got {max_inflight}, {max_rows}")
        self._send = send
        self._max_inflight = max_inflight
        self._max_rows = max_rows
        self._on_batch = on_batch
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._inflight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """The output rows for ``rows`` (a batch of one or more), from whichever call carries them."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append((rows, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if not self._scheduled and self._queue:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue and self._inflight < self._max_inflight:
            items = [self._queue.popleft()]
            rows = len(items[0][0])
            while self._queue and rows + len(self._queue[0][0]) <= self._max_rows:
                rows += len(self._queue[0][0])
                items.append(self._queue.popleft())
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, items: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        try:
            batch = items[0][0] if len(items) == 1 else np.concatenate([rows for rows, _ in items])
            if self._on_batch is not None:
                self._on_batch(len(batch))
            output = await self._send(batch)
        except Exception as exc:  # noqa: BLE001 - every row of the batch gets the call's failure
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
        else:
            start = 0
            for rows, future in items:
                if not future.done():  # a caller that stopped waiting (a cancelled hedge loser)
                    future.set_result(output[start : start + len(rows)])
                start += len(rows)
        finally:
            self._inflight -= 1
            self._kick()
