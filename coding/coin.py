"""COIN (Jhunjhunwala et al., ISIT 2024): erasure coding across k models that answer the same query.

A *set* of k member models f_0..f_{k-1} (one architecture, e.g. fine-tuned from one initialisation)
each answers every query of the set; one *coded model* f_c is built so that f_c(x) ≈ Σ λ_i f_i(x)
(export/coin.py makes it by Fisher-weighted averaging of the members' weights). One query is one
group: k data slots, the query on each member, and one coded slot, the same query on f_c — no
encoder call. When member j is late or lost its output is decoded as

    f̂_j(x) = (f_c(x) − Σ_{i≠j} λ_i f_i(x)) / λ_j

in the chosen output space: ``logits`` (the models' raw outputs) or ``probabilities`` (each output's
softmax; the decoded probabilities are clipped to [ε, 1] and returned as their logarithm, so a client
reads logits either way and the argmax is the decoded probabilities'). One coded model rebuilds one
missing member.

Names: a set served as ``S`` has members ``S_m0..S_m{k-1}`` and the coded model ``S_k{k}_{method}``
(``method`` fisher | average | distill: how export/coin.py built it), unless the route names them:
``--route mnist_coin=coin:k=2,members=a+b,coded_model=c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from coding.errors import CodingError
from coding.scheme import Arrivals, Outputs, Shape, Slot, check_outputs, member_role

CODED = "coin_coded"  # the role of the coded model
SPACES = ("logits", "probabilities")
METHODS = ("fisher", "average", "distill")
PROBABILITY_FLOOR = 1e-6  # ε: a decoded probability below it (or negative) counts as ε


def member_model_name(served: str, i: int) -> str:
    return f"{served}_m{i}"


def coded_model_name(served: str, k: int, method: str = "fisher") -> str:
    return f"{served}_k{k}_{method}"


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def decode_member(coded: np.ndarray, others: list[np.ndarray], weights: list[float], weight: float) -> np.ndarray:
    """``(coded − Σ weights_i · others_i) / weight``: the missing member's output, in one space."""
    rest = sum((w * o for w, o in zip(weights, others, strict=True)), np.zeros_like(coded))
    return (coded - rest) / weight


@dataclass(frozen=True)
class CoinScheme:
    """k member slots and one coded slot, all on the one query of the group."""

    k: int
    method: str = "fisher"
    space: str = "logits"
    weights: tuple[float, ...] = ()  # λ; empty: 1/k each (what export/coin.py builds by default)
    members: tuple[str, ...] = ()  # member model names; empty: S_m0..
    coded_model: str = ""
    name: str = "coin"

    def __post_init__(self) -> None:
        if self.k < 2:
            raise CodingError(f"coin needs k >= 2 member models, got k={self.k}")
        if self.space not in SPACES:
            raise CodingError(f"coin space must be one of {SPACES}, got {self.space!r}")
        if self.method not in METHODS:
            raise CodingError(f"coin method must be one of {METHODS}, got {self.method!r}")
        if self.weights and (len(self.weights) != self.k or min(self.weights) <= 0):
            raise CodingError(f"coin weights must be {self.k} positive numbers, got {list(self.weights)}")
        if self.members and len(self.members) != self.k:
            raise CodingError(f"coin with k={self.k} needs {self.k} members, got {list(self.members)}")

    @property
    def lambdas(self) -> tuple[float, ...]:
        return self.weights or (1.0 / self.k,) * self.k

    @property
    def data_slots(self) -> tuple[Slot, ...]:
        return tuple(Slot(0, member_role(i)) for i in range(self.k))

    @property
    def coded_slots(self) -> tuple[Slot, ...]:
        return (Slot(0, CODED),)

    systematic = True
    encodes = False  # the coded model runs the query itself

    def rejects(self, shape: Shape) -> str | None:
        return None  # no encoding: the coded model takes whatever the members take

    def coded_inputs(self, inputs: np.ndarray) -> np.ndarray:
        return inputs[:1]

    def recoverable(self, arrivals: Arrivals) -> frozenset[int]:
        """One absent member, once the coded output and every other member have arrived."""
        absent = arrivals.absent()
        return frozenset(absent) if all(arrivals.coded) and len(absent) == 1 else frozenset()

    def decode_slots(self, data_outputs: Outputs, coded_outputs: Outputs) -> tuple[list[np.ndarray], list[int]]:
        check_outputs(self, data_outputs, coded_outputs)
        coded = coded_outputs[0]
        absent = [j for j, o in enumerate(data_outputs) if o is None]
        if coded is None or len(absent) != 1:
            raise CodingError(
                f"coin rebuilds one missing member from the coded output and the other {self.k - 1}; "
                f"got {len(absent)} missing and {'a' if coded is not None else 'no'} coded output"
            )
        (j,) = absent
        lam = self.lambdas
        others = [np.asarray(o, np.float32) for o in data_outputs if o is not None]
        weights = [w for i, w in enumerate(lam) if i != j]
        if self.space == "logits":
            missing = decode_member(np.asarray(coded, np.float32), others, weights, lam[j])
        else:
            p = decode_member(softmax(np.asarray(coded, np.float32)), [softmax(o) for o in others], weights, lam[j])
            missing = np.log(np.clip(p, PROBABILITY_FLOOR, 1.0))
        return [o if o is not None else missing.astype(np.float32) for o in data_outputs], []

    def coded_output_shape(self, index: int, data_output_shape: Shape) -> Shape:
        return data_output_shape

    def models(self, served: str) -> dict[str, str]:
        members = self.members or tuple(member_model_name(served, i) for i in range(self.k))
        roles = {member_role(i): m for i, m in enumerate(members)}
        return roles | {CODED: self.coded_model or coded_model_name(served, self.k, self.method)}
