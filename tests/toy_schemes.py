"""Two toy coding schemes with what Collage-CNN and COIN need from the slot abstraction, and exact
linear models for them, so a test can check every answer through the real services.

- ``tiles``: k queries on the deployed model plus ONE coded slot that answers every data slot by
  itself — a "tile model" that takes the k queries stacked as channels and answers ``[k, classes]``,
  an output shape unlike the data slots'. Any missing query is row j of the tile output (Collage's
  decoder; its partners are not needed).
- ``ensemble``: ONE query answered by two different models (members) plus a coded model on the
  same input (identity encoding: no encoder call), f_c = f_0 + f_1; a missing member's output is
  f_c - f_other (COIN's decoder with lambda = 1).

Imported as a plug-in (``--scheme-module tests.toy_schemes``) it registers both in the services;
the models live in :mod:`tests.integration.toy_models`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coding.errors import CodingError
from coding.scheme import DEPLOYED, Arrivals, Outputs, Shape, Slot, check_outputs
from coding.schemes import register

TILES_ROLE = "tiles"
MEMBERS = ("member0", "member1")
ENSEMBLE = "toyset"  # the served name of the ensemble route (not itself a Triton model)
CODED_ROLE = "coded"


@dataclass(frozen=True)
class TileScheme:
    k: int
    name: str = "tiles"

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(Slot(i, DEPLOYED) for i in range(self.k))

    @property
    def coded_slots(self) -> tuple[Slot, ...]:
        return (Slot(0, TILES_ROLE),)

    systematic = True
    encodes = True

    def rejects(self, shape: Shape) -> str | None:
        return None if len(shape) == 3 and shape[0] == 1 else f"tiles: expected (1, H, W) queries, got {list(shape)}"

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """``(k, 1, H, W)`` -> ``(1, k, H, W)``: the queries as the channels of one coded input."""
        if inputs.ndim != 4 or inputs.shape[:2] != (self.k, 1):
            raise CodingError(f"tiles: expected (k={self.k}, 1, H, W), got {list(inputs.shape)}")
        return inputs[:, 0][None].astype(np.float32)

    def recoverable(self, arrivals: Arrivals) -> frozenset[int]:
        return frozenset(arrivals.absent()) if all(arrivals.coded) else frozenset()

    def decode_slots(self, data_outputs: Outputs, coded_outputs: Outputs) -> tuple[list[np.ndarray], list[int]]:
        check_outputs(self, data_outputs, coded_outputs)
        tiles = coded_outputs[0]
        if tiles is None:
            raise CodingError("tiles cannot decode without the tile output")
        return [o if o is not None else tiles[j] for j, o in enumerate(data_outputs)], []

    def coded_output_shape(self, index: int, data_output_shape: Shape) -> Shape:
        return (self.k, *data_output_shape)

    def models(self, served: str) -> dict[str, str]:
        return {DEPLOYED: served, TILES_ROLE: tile_model_name(self.k)}


@dataclass(frozen=True)
class EnsembleScheme:
    name: str = "ensemble"

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(Slot(0, role) for role in MEMBERS)

    @property
    def coded_slots(self) -> tuple[Slot, ...]:
        return (Slot(0, CODED_ROLE),)

    systematic = True
    encodes = False

    def rejects(self, shape: Shape) -> str | None:
        return None

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        return inputs[:1]

    def recoverable(self, arrivals: Arrivals) -> frozenset[int]:
        absent = arrivals.absent()
        return frozenset(absent) if all(arrivals.coded) and len(absent) == 1 else frozenset()

    def decode_slots(self, data_outputs: Outputs, coded_outputs: Outputs) -> tuple[list[np.ndarray], list[int]]:
        check_outputs(self, data_outputs, coded_outputs)
        coded = coded_outputs[0]
        known = [o for o in data_outputs if o is not None]
        if coded is None or len(known) != len(data_outputs) - 1:
            raise CodingError("ensemble decodes one missing member from the coded output and the others")
        missing = coded - sum(known)
        return [o if o is not None else missing for o in data_outputs], []

    def coded_output_shape(self, index: int, data_output_shape: Shape) -> Shape:
        return data_output_shape

    def models(self, served: str) -> dict[str, str]:
        return {MEMBERS[0]: f"{served}_m0", MEMBERS[1]: f"{served}_m1", CODED_ROLE: f"{served}_coded"}


def tile_model_name(k: int) -> str:
    return f"linear_tiles_k{k}"


def _tiles(k: int, params: Mapping[str, str]) -> TileScheme:
    return TileScheme(k)


def _ensemble(k: int, params: Mapping[str, str]) -> EnsembleScheme:
    return EnsembleScheme()


register("tiles", _tiles)
register("ensemble", _ensemble)
