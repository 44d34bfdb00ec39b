"""The vocabulary of a call: what the dataplane asks of Triton (a :class:`CallInfo` on a :class:`Pool`, answered
for a :class:`ModelSignature`, failing with :class:`WorkerError`) and of the coding services (a :class:`Coder`,
failing with :class:`CodingServiceError`). The transport implements both interfaces."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from coding.scheme import Outputs
from frontend.core.completion import Done
from frontend.core.routes import Route


class WorkerError(Exception):
    """A Triton call failed (server down, model missing, error, or an injected failure). ``transport``:
    it failed on the way (the instance is unreachable or died with the call: UNAVAILABLE), so the same
    call may succeed on another instance."""

    def __init__(self, message: str, transport: bool = False) -> None:
        super().__init__(message)
        self.transport = transport


class Cancelled(WorkerError):
    """The call was given up because no query waits for its output any more (``--cancel-losers``): it was
    dropped while still queued, or its ModelInfer was cancelled on the way. Not a failure: whoever gets it
    counts and reports nothing."""


# Given back by Pool.send where calls can be given up (None where they cannot): call it once no query waits
# for the call's output. A no-op once the call has finished.
Cancel = Callable[[], None]


@dataclass(frozen=True)
class ModelSignature:
    """What one query for a model must look like, and what it answers (batch dimension stripped)."""

    input_name: str
    output_name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    output_shape: tuple[int, ...] = ()
    max_batch: int = 1  # rows one ModelInfer may carry (the model's max_batch_size)
    input_datatype: str = "FP32"  # Triton's spelling of ``dtype``
    output_dtype: np.dtype = np.dtype("float32")
    # The model version every call names (Triton's highest ready version when the route loaded): the route's
    # calls stay on it, and a KServe answer names it. "": Triton's choice (its version policy).
    version: str = ""


@dataclass(frozen=True)
class CallInfo:
    """One Triton call: which model on which instance, and what it is to its coding group.

    ``kind`` is "data" or "coded"; ``worker`` the scheme's worker number (data slots 0..k-1 then coded
    slots, or coded slots only for a non-systematic code: :func:`coding.berrut.coded_nodes`); ``copy``
    the copy of a replicated, hedged or resent call (0 = the first); ``group`` its coding group's id (for logs and
    traces). ``annotation`` is the query's opaque tag, passed through untouched (only fault injection reads it).
    """

    model: str
    instance: int
    kind: str = "data"
    worker: int = 0
    copy: int = 0
    annotation: Any = None
    group: int = -1
    # Loop time after which no query of its group waits for it: a call still queued then is never sent.
    deadline: float | None = None


class Pool(Protocol):
    """What the frontend calls Triton through: :class:`TritonPool`, or a wrapper of it."""

    urls: tuple[str, ...]

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def signature(self, model: str, instance: int) -> ModelSignature: ...

    async def repository(self, instance: int, timeout_s: float = 2.0) -> dict[str, tuple[str, str]]: ...

    def send(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature, done: Done) -> Cancel | None: ...

    async def infer(self, call: CallInfo, batch: np.ndarray, signature: ModelSignature) -> np.ndarray: ...

    def wait_s(self, model: str, instances: Sequence[int], rows: int = 1) -> float: ...


class CodingServiceError(Exception):
    """The encoder or decoder service failed or timed out."""


class Coder(Protocol):
    """How the coordinator encodes and decodes: the coding services, or the same library in-process."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ready(self, timeout_s: float) -> dict[str, bool]:
        """Which coding services answer (by name); empty when coding runs in-process."""
        ...

    async def encode(self, route: Route, inputs: np.ndarray, timeout_s: float) -> np.ndarray: ...

    async def decode(
        self, route: Route, data_outputs: Outputs, coded_outputs: Outputs, timeout_s: float
    ) -> tuple[list[np.ndarray], list[int]]: ...
