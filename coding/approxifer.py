"""ApproxIFER as a coding scheme: K queries -> N Berrut-coded queries, every worker runs the deployed model.

No parity model: decoding interpolates the deployed model's own logits (see :mod:`coding.berrut`).
Non-systematic: all N workers get coded queries and all K answers are decoded. Systematic: workers 0..K-1
get the originals and workers K..N-1 the N-K parities; only a missing original is interpolated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coding import berrut
from coding.errors import CodingError
from coding.scheme import DEPLOYED, Arrivals, Outputs, Shape, Slot, check_outputs


def min_workers(k: int, s: int, a: int) -> int:
    """The fewest workers that tolerate s stragglers and a Byzantine workers: K+S, or 2K+2A+S-1 when A > 0."""
    return 2 * k + 2 * a + s - 1 if a > 0 else k + s


@dataclass(frozen=True)
class ApproxiferScheme:
    """ApproxIFER (Soleymani et al., AAAI 2022): k queries, n workers, s stragglers, a Byzantine workers.

    ``n`` defaults to :func:`min_workers`. ``decode`` needs at least n - s outputs; with a > 0 it first
    drops the workers :meth:`locate` judges faulty.
    """

    k: int
    n: int | None = None
    s: int = 1
    a: int = 0
    systematic: bool = False
    name: str = "approxifer"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise CodingError(f"ApproxIFER needs k >= 1 queries per group, got k={self.k}")
        if self.s < 0 or self.a < 0:
            raise CodingError(f"stragglers s and Byzantine workers a must be >= 0, got s={self.s}, a={self.a}")
        if self.n is None:
            object.__setattr__(self, "n", min_workers(self.k, self.s, self.a))
        need = min_workers(self.k, self.s, self.a)
        if self.workers < need:
            rule = "2k+2a+s-1" if self.a > 0 else "k+s"
            raise CodingError(
                f"n={self.n} workers are too few for k={self.k}, s={self.s}, a={self.a}: need n >= {rule} = {need}"
            )

    @property
    def workers(self) -> int:
        """N, resolved (``n`` is never None after construction)."""
        assert self.n is not None
        return self.n

    @property
    def needed(self) -> int:
        """How many outputs a decode needs: N - S."""
        return self.workers - self.s

    def rejects(self, shape: Shape) -> str | None:
        """None: Berrut coding is element-wise, so a query may have any shape (C x H x W, a feature vector, ...)."""
        return None

    def encode(self, group: np.ndarray) -> np.ndarray:
        """``(k, *query)`` queries of any shape -> ``(n, *query)`` float32 coded queries, one per worker."""
        if group.ndim < 1 or group.shape[0] != self.k:
            raise CodingError(f"expected a coding group of shape (k={self.k}, ...), got {list(group.shape)}")
        return berrut.encode(group, self.workers, self.systematic)

    def decode(self, outputs: np.ndarray, worker_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``(m, classes)`` outputs of the workers ``worker_indices`` -> ``(k, classes)`` float32 answers."""
        idx = self._check(outputs, worker_indices)
        if self.a > 0:
            keep = ~np.isin(idx, self.locate(outputs, idx))
            outputs, idx = outputs[keep], idx[keep]
        return berrut.decode(outputs, idx, self.k, self.workers, self.systematic)

    def locate(self, outputs: np.ndarray, worker_indices: Sequence[int] | np.ndarray) -> list[int]:
        """The a workers judged Byzantine among those that answered (empty when a == 0)."""
        idx = self._check(outputs, worker_indices)
        if self.a == 0:
            return []
        return berrut.locate(outputs, idx, self.k, self.workers, self.a, self.systematic)

    def _check(self, outputs: np.ndarray, worker_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(worker_indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise CodingError(f"worker indices must be a 1-D list of integers, got {idx.dtype} {list(idx.shape)}")
        if outputs.ndim != 2 or len(outputs) != len(idx):
            raise CodingError(
                f"expected outputs of shape (m={len(idx)}, classes) for {len(idx)} worker indices, "
                f"got {list(outputs.shape)}"
            )
        if len(idx) < self.needed:
            raise CodingError(
                f"{len(idx)} outputs are fewer than needed: n - s = {self.workers} - {self.s} = {self.needed}"
            )
        if len(np.unique(idx)) != len(idx):
            raise CodingError(f"duplicate worker indices: {sorted(idx.tolist())}")
        if idx.min() < 0 or idx.max() >= self.workers:
            raise CodingError(f"worker indices must lie in [0, n={self.workers}), got {sorted(idx.tolist())}")
        return idx.astype(np.int64)

    # ---- the Scheme protocol (coding.scheme) --------------------------------------------------

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(Slot(i, DEPLOYED) for i in range(self.k))

    @property
    def coded_slots(self) -> tuple[Slot, ...]:
        """All N workers' coded queries, or the N - K beyond the originals when systematic; every one
        runs the deployed model itself."""
        count = self.workers - self.k if self.systematic else self.workers
        return tuple(Slot(i, DEPLOYED) for i in range(count))

    encodes = True

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        coded = self.encode(inputs)
        return coded[self.k :] if self.systematic else coded

    def recoverable(self, arrivals: Arrivals) -> frozenset[int]:
        """Any n - s outputs decode every query (the originals' outputs count when systematic)."""
        count = sum(arrivals.coded) + (sum(arrivals.data) if self.systematic else 0)
        return frozenset(arrivals.absent()) if count >= self.needed else frozenset()

    def decode_slots(self, data_outputs: Outputs, coded_outputs: Outputs) -> tuple[list[np.ndarray], list[int]]:
        """Decoded answers of every data slot from whatever arrived, and the workers judged Byzantine.

        Workers are numbered as in :func:`coding.berrut.coded_nodes`: systematic, 0..K-1 are the originals
        (the data slots) and K..N-1 the parities; otherwise 0..N-1 are the coded slots.
        """
        check_outputs(self, data_outputs, coded_outputs)
        offset = self.k if self.systematic else 0
        arrived = [(i + offset, o) for i, o in enumerate(coded_outputs) if o is not None]
        if self.systematic:
            arrived = [(j, o) for j, o in enumerate(data_outputs) if o is not None] + arrived
        if not arrived:
            raise CodingError("nothing arrived to decode from")
        workers = np.array([w for w, _ in arrived], dtype=np.int64)
        outputs = np.stack([o for _, o in arrived])
        faulty = self.locate(outputs, workers)
        keep = ~np.isin(workers, faulty)
        decoded = berrut.decode(outputs[keep], workers[keep], self.k, self.workers, self.systematic)
        return list(decoded), faulty

    def coded_output_shape(self, index: int, data_output_shape: Shape) -> Shape:
        return data_output_shape  # every coded query runs the deployed model

    def models(self, served: str) -> dict[str, str]:
        return {DEPLOYED: served}
