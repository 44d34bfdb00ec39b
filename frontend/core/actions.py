"""What a coding group asks the coordinator to do. Groups return these; the coordinator executes them.

Every action carries what its execution needs, taken when the group decided: a decode's inputs are
the outputs in hand at that moment, so an original that arrives while the decode is on its way
cannot leave the decoder with nothing to decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class Infer:
    """Run ``input`` (one row, batch axis stripped) on the model playing ``role``, on ``instance``;
    report the outcome to the group with ``arrived(handle, ...)`` or ``failed(handle, ...)``."""

    handle: Any
    role: str
    instance: int
    input: np.ndarray
    kind: str  # "data" | "coded"
    worker: int  # the scheme's worker number (see frontend.transport.triton.CallInfo)
    annotation: Any = None
    copy: int = 0  # 1: a resend of a call already out (frontend.core.groups.CodingGroup.resend_deadline)


@dataclass(frozen=True, eq=False)
class Encode:
    """Ask the encoder for the coded inputs of ``inputs`` (the group's queries, padded); report with
    ``encoded`` or ``encode_failed``. ``deadline`` (loop time) bounds the call."""

    inputs: np.ndarray
    deadline: float


@dataclass(frozen=True, eq=False)
class Decode:
    """Ask the decoder to rebuild the group's absent data slots from these outputs (None: absent);
    report with ``decoded(handle, ...)`` or ``decode_failed(handle, ...)``."""

    handle: Any
    data_outputs: tuple[np.ndarray | None, ...]
    coded_outputs: tuple[np.ndarray | None, ...]
    deadline: float


@dataclass(frozen=True)
class Output:
    """One model's answer to a query."""

    role: str
    logits: np.ndarray
    reconstructed: bool


@dataclass(frozen=True, eq=False)
class Answer:
    """Answer the query whose ticket this is, with one output per model it ran on."""

    ticket: Any
    outputs: tuple[Output, ...]
    faulty_workers: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Fail:
    """Give the query whose ticket this is up: no answer can come. ``reason`` names why."""

    ticket: Any
    reason: str


@dataclass(frozen=True)
class Discarded:
    """An own output arrived after its query was closed (reconstructed, failed or expired): dropped."""

    role: str


Action = Infer | Encode | Decode | Answer | Fail | Discarded
