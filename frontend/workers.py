"""Triton workers: the deployed and parity models behind tritonclient's asyncio gRPC client.

Calls are never cancelled: a late answer is awaited to completion and discarded, because
cancelling in-flight ModelInfer calls crashes tritonserver 2.51 (see ../shared/README.md).
Each call carries a generous safety deadline only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype

from frontend.config import FaultPlan
from frontend.service_time import ServiceTime

log = logging.getLogger(__name__)


class WorkerError(Exception):
    """A Triton call failed (server down, model missing, error, or an injected failure)."""


@dataclass(frozen=True)
class ModelSignature:
    """What one query for a model must look like (batch dimension stripped)."""

    input_name: str
    output_name: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class Fault:
    delay_s: float = 0.0
    fail: bool = False
    corrupt: bool = False  # a lying (Byzantine) worker: the output comes back sign-flipped


class FaultInjector:
    """Draws a fault per deployed-model call from a :class:`FaultPlan` (seeded, reproducible)."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)

    def draw(self) -> Fault:
        u = self._rng.random()
        if u < self.plan.fail_share:
            return Fault(fail=True)
        if u < self.plan.fail_share + self.plan.delay_share:
            return Fault(delay_s=self._rng.uniform(self.plan.delay_min_ms, self.plan.delay_max_ms) / 1e3)
        return Fault()


def parse_fault_metadata(value: str) -> Fault:
    """``delay=MS``, ``fail`` or ``corrupt`` (the ``codedserve-fault`` metadata, and --inject-coded-faults)."""
    if value in ("fail", "corrupt"):
        return Fault(fail=value == "fail", corrupt=value == "corrupt")
    key, _, ms = value.partition("=")
    if key == "delay":
        return Fault(delay_s=float(ms) / 1e3)
    raise ValueError(f"fault {value!r}: expected 'delay=MS', 'fail' or 'corrupt'")


class TritonPool:
    """Round-robin over one or more Triton servers that all serve the same repository."""

    def __init__(
        self, urls: tuple[str, ...], timeout_s: float, max_message_bytes: int, service_time: ServiceTime | None = None
    ) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self.service_time = service_time  # injected: each call lasts at least a drawn latency
        self._channel_args = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._clients: list[triton_aio.InferenceServerClient] = []
        self._next = itertools.count()

    async def start(self) -> None:
        """Create the clients inside the running loop (grpc.aio channels bind to it)."""
        self._clients = [triton_aio.InferenceServerClient(u, channel_args=self._channel_args) for u in self.urls]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)

    async def signature(self, model: str) -> ModelSignature:
        """Read the model's input/output from Triton's metadata (raises WorkerError if not ready)."""
        client = self._clients[0]
        try:
            if not await client.is_model_ready(model, client_timeout=2.0):
                raise WorkerError(f"model {model!r} is not ready on Triton at {self.urls[0]}")
            meta = await client.get_model_metadata(model, client_timeout=2.0)
        except InferenceServerException as exc:
            raise WorkerError(f"Triton at {self.urls[0]}: {exc.message()}") from exc
        shape = tuple(int(d) for d in meta.inputs[0].shape[1:])
        return ModelSignature(
            meta.inputs[0].name, meta.outputs[0].name, shape, np.dtype(triton_to_np_dtype(meta.inputs[0].datatype))
        )

    def pick(self, avoid: int | None = None) -> int:
        """The next instance in round-robin order, skipping ``avoid`` when there is another."""
        index = next(self._next) % len(self._clients)
        if index == avoid and len(self._clients) > 1:
            index = next(self._next) % len(self._clients)
        return index

    async def infer(
        self,
        model: str,
        batch: np.ndarray,
        signature: ModelSignature,
        fault: Fault | None = None,
        instance: int | None = None,
    ) -> np.ndarray:
        """One ModelInfer on ``instance`` (default: the next); returns the output rows. Raises WorkerError."""
        if fault is not None:
            if fault.fail:
                raise WorkerError(f"injected failure on {model}")
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
        started = time.monotonic() if self.service_time is not None else 0.0
        client = self._clients[self.pick() if instance is None else instance]
        infer_input = InferInput(signature.input_name, list(batch.shape), np_to_triton_dtype(signature.dtype))
        infer_input.set_data_from_numpy(np.ascontiguousarray(batch, dtype=signature.dtype))
        try:
            result = await client.infer(
                model,
                [infer_input],
                outputs=[InferRequestedOutput(signature.output_name)],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise WorkerError(f"{model}: {exc.message()}") from exc
        if self.service_time is not None:
            await asyncio.sleep(self.service_time.draw_s() - (time.monotonic() - started))
        output = result.as_numpy(signature.output_name)
        return -output if fault is not None and fault.corrupt else output
