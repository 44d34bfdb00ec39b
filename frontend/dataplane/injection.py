"""Injected faults for demos, tests and benchmarks — never part of production serving.

:class:`InjectingPool` wraps the Triton pool; only a frontend started with an ``--inject-*`` flag or
``--allow-fault-metadata`` (``FaultPlan.active``) constructs it. Per call, in this order:

1. a fault the query forced through its ``codedserve-fault`` metadata (its first data call only);
2. a fault pinned to the call's worker (``--inject-worker-faults``, every group);
3. a fault drawn from the plan's shares, for calls that run a deployed model (data or coded);

a failure raises before the call, a delay sleeps before it, ``corrupt`` flips the output's sign (a
lying worker). Emulated accelerator time is not injected here: the local Triton holds the instance for it
(``python -m triton_local --service-time``), so requests queue behind a busy instance.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Sequence

import numpy as np

from frontend.core.calls import CallInfo, Cancel, ModelSignature, Pool, WorkerError
from frontend.core.completion import Done, awaited, run_then
from frontend.core.faults import Fault, FaultPlan, parse_fault_metadata


class FaultInjector:
    """Draws a fault per call from a :class:`FaultPlan`'s shares (seeded, reproducible)."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)

    def draw(self) -> Fault | None:
        if not (self.plan.fail_share or self.plan.delay_share):
            return None
        u = self._rng.random()
        if u < self.plan.fail_share:
            return Fault(fail=True)
        if u < self.plan.fail_share + self.plan.delay_share:
            return Fault(delay_s=self._rng.uniform(self.plan.delay_min_ms, self.plan.delay_max_ms) / 1e3)
        return None


class InjectingPool:
    """A :class:`frontend.transport.triton.Pool` that injects the plan's faults into the calls of the pool it wraps."""

    def __init__(self, pool: Pool, plan: FaultPlan, deployed_models: Collection[str]) -> None:
        self._pool = pool
        self.urls = pool.urls
        self._deployed = frozenset(deployed_models)
        self._drawn = FaultInjector(plan)
        self._pinned = {worker: parse_fault_metadata(fault) for worker, fault in plan.workers}

    async def start(self) -> None:
        await self._pool.start()

    async def close(self) -> None:
        await self._pool.close()

    async def signature(self, model: str, instance: int) -> ModelSignature:
        return await self._pool.signature(model, instance)

    async def repository(self, instance: int, timeout_s: float = 2.0) -> dict[str, tuple[str, str]]:
        return await self._pool.repository(instance, timeout_s)

    def wait_s(self, model: str, instances: Sequence[int], rows: int = 1) -> float:
        return self._pool.wait_s(model, instances, rows)  # injected delays are not queueing: not counted

    def fault_for(self, call: CallInfo) -> Fault | None:
        if call.kind == "data" and call.copy == 0 and isinstance(call.annotation, Fault):
            return call.annotation
        if call.copy == 0 and call.worker in self._pinned:
            return self._pinned[call.worker]
        return self._drawn.draw() if call.model in self._deployed else None

    async def infer(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray:
        output: np.ndarray = await awaited(lambda done: self.send(call, batch, signature, done))
        return output

    def send(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done) -> Cancel | None:
        """Straight to the wrapped pool where the call draws no fault (no task of its own), else through
        a task that injects the fault around it (then the call cannot be given up: None)."""
        fault = self.fault_for(call)  # drawn once per call
        if fault is None:
            return self._pool.send(call, batch, signature, done)
        run_then(self._faulty(call, batch, signature, fault), done)
        return None

    async def _faulty(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature, fault: Fault) -> np.ndarray:
        if fault.fail:
            raise WorkerError(f"injected failure on {call.model}")
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        output = await self._pool.infer(call, batch, signature)
        return -output if fault.corrupt else output
