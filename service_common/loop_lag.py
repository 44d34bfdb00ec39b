"""How far behind an event loop runs: a gauge, ``codedserve_event_loop_lag_seconds``.

The sampler asks to wake after ``interval_s`` and records how much later than that it ran, smoothed
over a few samples so that one GC pause does not dominate. A lag of tens of milliseconds means the
service's Python work is its bottleneck. Note what it does not see (measured with bench.overload):
a call waits for its handler in the gRPC core, not in the loop's queue, so under overload the loop
can run on time (1 ms) while calls wait 800 ms to be handed to the servicer.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Gauge

LOOP_LAG = Gauge("codedserve_event_loop_lag_seconds", "How late the event loop runs a timer (smoothed)")


class LoopLag:
    def __init__(self, interval_s: float = 0.05, smoothing: float = 0.2) -> None:
        if interval_s <= 0 or not 0 < smoothing <= 1:
            raise ValueError(f"need interval_s > 0 and 0 < smoothing <= 1, got {interval_s}, {smoothing}")
        self.interval_s = interval_s
        self.smoothing = smoothing
        self.lag_s = 0.0  # exponentially smoothed
        self._task: asyncio.Task[None] | None = None

    def record(self, late_s: float) -> None:
        self.lag_s += self.smoothing * (max(late_s, 0.0) - self.lag_s)
        LOOP_LAG.set(self.lag_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.record(loop.time() - asked)
