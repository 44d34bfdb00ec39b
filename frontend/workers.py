"""Triton workers: every Triton instance the frontend calls, behind tritonclient's asyncio gRPC client.

The pool only sends calls; *which* instance a call goes to is decided before (a coding group places
its slots, :mod:`frontend.placement`). Calls are never cancelled: a late answer is awaited to
completion and discarded, because cancelling in-flight ModelInfer calls crashes tritonserver 2.51
(see ../shared/README.md). Each call carries a generous safety deadline only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype, triton_to_np_dtype


class WorkerError(Exception):
    """A Triton call failed (server down, model missing, error, or an injected failure)."""


@dataclass(frozen=True)
class ModelSignature:
    """What one query for a model must look like, and what it answers (batch dimension stripped)."""

    input_name: str
    output_name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    output_shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class CallInfo:
    """One Triton call: which model on which instance, and what it is to its coding group.

    ``kind`` is "data" or "coded"; ``worker`` the scheme's worker number (data slots 0..k-1 then coded
    slots, or coded slots only for a non-systematic code: :func:`coding.berrut.coded_nodes`); ``copy``
    the copy of a replicated or hedged call (0 = the first). ``annotation`` is the query's opaque tag,
    passed through untouched (only fault injection reads it).
    """

    model: str
    instance: int
    kind: str = "data"
    worker: int = 0
    copy: int = 0
    annotation: Any = None


class Pool(Protocol):
    """What the frontend calls Triton through: :class:`TritonPool`, or a wrapper of it."""

    urls: tuple[str, ...]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def signature(self, model: str, instance: int) -> ModelSignature: ...

    async def infer(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray: ...


class TritonPool:
    """One client per Triton instance; instances are numbered by their position in ``urls``."""

    def __init__(self, urls: tuple[str, ...], timeout_s: float, max_message_bytes: int) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self._channel_args = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self._clients: list[triton_aio.InferenceServerClient] = []

    async def start(self) -> None:
        """Create the clients inside the running loop (grpc.aio channels bind to it)."""
        self._clients = [triton_aio.InferenceServerClient(u, channel_args=self._channel_args) for u in self.urls]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients), return_exceptions=True)

    async def signature(self, model: str, instance: int) -> ModelSignature:
        """Read the model's input/output from Triton's metadata (raises WorkerError if not ready)."""
        client, url = self._clients[instance], self.urls[instance]
        try:
            if not await client.is_model_ready(model, client_timeout=2.0):
                raise WorkerError(f"model {model!r} is not ready on Triton at {url}")
            meta = await client.get_model_metadata(model, client_timeout=2.0)
        except InferenceServerException as exc:
            raise WorkerError(f"Triton at {url}: {exc.message()}") from exc
        return ModelSignature(
            meta.inputs[0].name,
            meta.outputs[0].name,
            tuple(int(d) for d in meta.inputs[0].shape[1:]),
            np.dtype(triton_to_np_dtype(meta.inputs[0].datatype)),
            tuple(int(d) for d in meta.outputs[0].shape[1:]),
        )

    async def infer(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray:
        """One ModelInfer of ``batch`` on ``call.instance``; returns the output rows. Raises WorkerError."""
        infer_input = InferInput(signature.input_name, list(batch.shape), np_to_triton_dtype(signature.dtype))
        infer_input.set_data_from_numpy(np.ascontiguousarray(batch, dtype=signature.dtype))
        try:
            result = await self._clients[call.instance].infer(
                call.model,
                [infer_input],
                outputs=[InferRequestedOutput(signature.output_name)],
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            raise WorkerError(f"{call.model}: {exc.message()}") from exc
        output = result.as_numpy(signature.output_name)
        if output is None:
            raise WorkerError(f"{call.model}: Triton returned no {signature.output_name!r} output")
        return output
