"""The one protocol every coding scheme implements, described by its slots.

A coding group is a set of *data slots* — each one of the group's queries run on one model — and
*coded slots* — each one coded input run on one model. ParM, ApproxIFER and Collage-CNN are
"k inputs x one model" (data slot i = query i on the deployed model); COIN is "one input x k models"
(data slot i = the query on member model i). A slot names its model by *role* ("deployed",
"parity", ...); :meth:`Scheme.models` maps the roles to the model names Triton serves.

The frontend knows a scheme only through this protocol: which slots it has, whether the data slots
are sent at all (``systematic``), whether coding needs the encoder (``encodes``), which missing data
slots can be rebuilt from what has arrived (``recoverable``), each coded slot's output shape, and the
model names. The encoder and decoder services call ``coded_inputs`` and ``decode_slots``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from coding.errors import CodingError

DEPLOYED = "deployed"  # the role of the model clients name in their queries


def name_prefix(served: str) -> str:
    """What a route's default model names start with: the served name less a trailing ``_cnn`` (the built-in
    deployed models' suffix: ``mnist`` for ``mnist_cnn``). A route that names its models needs none of it."""
    return served.removesuffix("_cnn")


def member_role(i: int) -> str:
    """The role of member i of a *set*: one query answered by several models (COIN)."""
    return f"member{i}"


Shape = tuple[int, ...]
Outputs = Sequence[np.ndarray | None]  # one entry per slot; None where the output is absent


@dataclass(frozen=True)
class Slot:
    """One inference of a coding group: input ``input`` run on the model playing ``role``.

    For a data slot ``input`` indexes the group's queries; for a coded slot it indexes the encoder's
    coded inputs, or the group's queries when the scheme's encoding is the identity (``encodes`` False).
    """

    input: int
    role: str


@dataclass(frozen=True)
class Arrivals:
    """Which outputs a group has: ``data[j]`` for data slot j, ``coded[i]`` for coded slot i.

    ``calls[j]`` says which distinct call fills data slot j: a partial group repeats its queries to
    fill every slot, and slots holding the same (query, model) are one call, so one unknown.
    """

    data: tuple[bool, ...]
    coded: tuple[bool, ...]
    calls: tuple[int, ...]

    def absent(self) -> list[int]:
        return [j for j, present in enumerate(self.data) if not present]

    def unknowns(self) -> int:
        """Distinct calls among the absent data slots."""
        return len({self.calls[j] for j in self.absent()})


class Scheme(Protocol):
    """What the frontend, the encoder and the decoder need from a coding scheme. Read-only members may
    be plain attributes (``systematic = True``) in an implementation."""

    @property
    def name(self) -> str: ...

    @property
    def data_slots(self) -> tuple[Slot, ...]: ...

    @property
    def coded_slots(self) -> tuple[Slot, ...]: ...

    @property
    def systematic(self) -> bool:
        """The data slots are sent as ordinary queries (and only missing ones are decoded)."""
        ...

    @property
    def encodes(self) -> bool:
        """Coded inputs come from :meth:`coded_inputs`; False: the encoding is the identity (no encoder call)."""
        ...

    def rejects(self, shape: Shape) -> str | None:
        """Why queries of ``shape`` (one query, no batch axis, e.g. ``(3, 32, 32)``) cannot be coded, or None
        when they can. :meth:`coded_inputs` raises :class:`CodingError` with this reason; export asks it
        before training a model for the scheme, and a frontend may ask it once it knows a model's input."""
        ...

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """``(group_size, ...)`` queries (padded) -> one coded input per coded slot ``(r, ...)``."""
        ...

    def recoverable(self, arrivals: Arrivals) -> frozenset[int]:
        """The absent data slots a decode could rebuild from exactly what has arrived."""
        ...

    def decode_slots(self, data_outputs: Outputs, coded_outputs: Outputs) -> tuple[list[np.ndarray], list[int]]:
        """Every data slot's output (present ones as given, absent ones rebuilt) and the coded
        workers judged Byzantine and left out."""
        ...

    def coded_output_shape(self, index: int, data_output_shape: Shape) -> Shape:
        """The output shape of coded slot ``index`` (batch axis stripped), given the data slots'."""
        ...

    def models(self, served: str) -> dict[str, str]:
        """Role -> model name on Triton, for the route that serves ``served``."""
        ...


def group_size(scheme: Scheme) -> int:
    """How many queries fill one group."""
    return max(slot.input for slot in scheme.data_slots) + 1


def check_shape(scheme: Scheme, shape: Shape) -> None:
    """Raise :class:`CodingError` naming the scheme and the reason unless it can code queries of ``shape``."""
    problem = scheme.rejects(tuple(shape))
    if problem:
        raise CodingError(f"{scheme.name}: {problem}")


def check_outputs(scheme: Scheme, data_outputs: Outputs, coded_outputs: Outputs) -> None:
    """Raise CodingError unless there is one entry per slot and at least one data slot is absent."""
    if len(data_outputs) != len(scheme.data_slots) or len(coded_outputs) != len(scheme.coded_slots):
        raise CodingError(
            f"{scheme.name}: expected {len(scheme.data_slots)} data and {len(scheme.coded_slots)} coded outputs, "
            f"got {len(data_outputs)} and {len(coded_outputs)}"
        )
    if all(o is not None for o in data_outputs):
        raise CodingError("nothing to decode: every output of the coding group is present")


@dataclass(frozen=True)
class Uncoded:
    """No redundancy: one data slot on the deployed model — or, for a set, one per member model —
    and nothing to rebuild it from (the baselines)."""

    name: str = "none"
    members: tuple[str, ...] = ()  # a set's member models; empty: the served model itself

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        if self.members:
            return tuple(Slot(0, member_role(i)) for i in range(len(self.members)))
        return (Slot(0, DEPLOYED),)

    @property
    def coded_slots(self) -> tuple[Slot, ...]:
        return ()

    systematic = True
    encodes = False

    def rejects(self, shape: Shape) -> str | None:
        return None  # nothing is coded: any query the model takes

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        raise CodingError(f"{self.name} has no coded queries")

    def recoverable(self, arrivals: Arrivals) -> frozenset[int]:
        return frozenset()

    def decode_slots(self, data_outputs: Outputs, coded_outputs: Outputs) -> tuple[list[np.ndarray], list[int]]:
        raise CodingError(f"{self.name} cannot decode: it sends no redundancy")

    def coded_output_shape(self, index: int, data_output_shape: Shape) -> Shape:
        raise CodingError(f"{self.name} has no coded slots")

    def models(self, served: str) -> dict[str, str]:
        if self.members:
            return {member_role(i): m for i, m in enumerate(self.members)}
        return {DEPLOYED: served}
