"""Faults injected from outside the serving code, on this machine only, each bounded in time.

- ``stalls``: SIGSTOP a random Triton worker for 20–100 ms every 0.3–1 s, then SIGCONT
  (a GC pause, a noisy neighbour, a throttled VM: the worker is up but answers late).
- ``contention``: a background tenant that burns one core in a loop (CPU interference).
- ``kills``: SIGKILL a random worker every few seconds and restart it (a crash and recovery).
- ``none``: nothing, the control.
Every injector runs in one thread, stops when its run ends, and always SIGCONTs what it stopped.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from triton_local.server import TritonServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StallProfile:
    stall_ms: tuple[float, float] = (20.0, 100.0)
    every_s: tuple[float, float] = (0.3, 1.0)


class FaultInjector:
    """Base: a background thread running ``_step`` until stopped; a context manager."""

    name = "none"

    def __init__(self, workers: Sequence[TritonServer], seed: int = 0) -> None:
        self.workers = list(workers)
        self.rng = random.Random(seed)
        self.events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FaultInjector:
        self._thread = threading.Thread(target=self._loop, name=f"fault-{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._cleanup()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._step()

    def _step(self) -> None:
        self._stop.wait(0.5)

    def _cleanup(self) -> None:
        pass


class Stalls(FaultInjector):
    name = "stalls"

    def __init__(self, workers: Sequence[TritonServer], seed: int = 0, profile: StallProfile = StallProfile()) -> None:
        super().__init__(workers, seed)
        self.profile = profile

    def _step(self) -> None:
        if self._stop.wait(self.rng.uniform(*self.profile.every_s)):
            return
        victim = self.rng.choice(self.workers)
        if victim.pid is None:
            return
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            time.sleep(self.rng.uniform(*self.profile.stall_ms) / 1e3)
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        self.events += 1


def _burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        sum(i * i for i in range(10000))


class Contention(FaultInjector):
    """A co-located tenant burning one core for the length of the run (bounded by ``max_s``)."""

    name = "contention"

    def __init__(self, workers: Sequence[TritonServer], seed: int = 0, max_s: float = 900.0) -> None:
        super().__init__(workers, seed)
        self._tenant = multiprocessing.get_context("spawn").Process(
            target=_burn, args=(time.monotonic() + max_s,), daemon=True
        )

    def __enter__(self) -> FaultInjector:
        self._tenant.start()
        self.events = 1
        return super().__enter__()

    def _cleanup(self) -> None:
        self._tenant.terminate()
        self._tenant.join(timeout=5)


class Kills(FaultInjector):
    """SIGKILL a worker every ``every_s`` and restart it at once (its models reload, seconds)."""

    name = "kills"

    def __init__(self, workers: Sequence[TritonServer], seed: int = 0, every_s: float = 8.0) -> None:
        super().__init__(workers, seed)
        self.every_s = every_s

    def _step(self) -> None:
        if self._stop.wait(self.every_s):
            return
        victim = self.rng.choice(self.workers)
        if victim.pid is None:
            return
        os.kill(victim.pid, signal.SIGKILL)
        victim.stop()
        victim.start()  # same ports: clients reconnect once it is back
        self.events += 1


PROFILES: dict[str, Callable[..., FaultInjector]] = {
    "none": FaultInjector,
    "stalls": Stalls,
    "contention": Contention,
    "kills": Kills,
}
