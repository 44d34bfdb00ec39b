"""``python -m export evaluate``: every scheme's accuracy on a user's test split, all answers in and in degraded
mode, offline with onnxruntime.

Each scheme is run through its serving code (``coding.schemes``: ``coded_inputs`` and ``decode_slots``, what the
encoder and decoder services call), on the exported ONNX files (what Triton serves):

- ParM (A_a, A_d): the test split cut into random coding groups of k, every slot of every group erased in turn
  and decoded from the parity model's output and the other k − 1 (ParM's protocol, export.train.evaluate_parity).
- Collage: the same, the missing query's answer read off its cell.
- ApproxIFER (K, S): groups of K, N = K + S coded queries on the deployed model, S random workers missing,
  all K answers decoded (non-systematic; export.eval_approxifer's ``approxifer`` column); and systematic,
  the K originals served with S Berrut parities, S originals missing and decoded (A_d over those alone).
- COIN: each member in turn missing, decoded from the coded model and the other members.

Columns: A_a is the deployed model's accuracy on the same queries (COIN: the members' mean); A_d the decoded
answers'; "agrees" how often a decoded answer has the deployed model's (the member's) top class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coding.approxifer import ApproxiferScheme
from coding.coin import CoinScheme
from coding.collage import CollageScheme
from coding.parm import ParmScheme
from coding.scheme import Scheme
from export.manifest import read_manifest
from export.own_import import OnnxModel, Served, model_path

APPROXIFER_SETTINGS = ((2, 1), (4, 1), (8, 1), (8, 2))  # (K, S)


@dataclass(frozen=True)
class Row:
    scheme: str
    models: str
    k: int
    extra_load: float
    a_a: float
    a_d: float
    agrees: float
    decoded: int

    def markdown(self) -> str:
        gap = (self.a_a - self.a_d) * 100
        return (
            f"| {self.scheme} | {self.models} | {self.k} | {self.extra_load:.0%} | {self.a_a:.2%} | "
            f"{self.a_d:.2%} | {gap:.2f} pts | {self.agrees:.2%} | {self.decoded} |"
        )


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # the deployed model's, on the images evaluated
    images: int
    rows: list[Row]


HEADER = (
    "| scheme | coded models | k | extra load | A_a (all answers in) | A_d (degraded) | A_a − A_d | "
    "agrees with deployed | decoded answers |\n|---|---|---|---|---|---|---|---|---|"
)


def random_groups(n: int, k: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """``rounds`` random partitions of ``range(n)`` into groups of k, stacked ``(rounds · n // k, k)``."""
    return np.concatenate([rng.permutation(n)[: n // k * k].reshape(-1, k) for _ in range(rounds)])


def erase_each(
    scheme: Scheme, own: np.ndarray, coded: np.ndarray, labels: np.ndarray
) -> tuple[float, float, float, int]:
    """Decode every data slot of every group in turn with the others and the coded outputs present.

    ``own`` ``(G, k, classes)`` the data slots' outputs, ``coded`` ``(G, r, ...)`` the coded slots', ``labels``
    ``(G, k)``. Returns A_a, A_d, agreement with the own answers, and how many answers were decoded."""
    hits = agree = total = 0
    for g in range(len(own)):
        for j in range(own.shape[1]):
            data: list[np.ndarray | None] = list(own[g])
            data[j] = None
            answers, _ = scheme.decode_slots(data, list(coded[g]))
            top = int(np.argmax(answers[j]))
            hits += top == labels[g, j]
            agree += top == int(np.argmax(own[g, j]))
            total += 1
    a_a = float((own.argmax(-1) == labels).mean())
    return a_a, hits / max(total, 1), agree / max(total, 1), total


def _coded_outputs(scheme: Scheme, model: OnnxModel, x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    coded = np.stack([scheme.coded_inputs(x[g]) for g in groups])  # (G, r, ...), the encoder service's call
    out = model(coded.reshape(-1, *coded.shape[2:]))
    return out.reshape(len(groups), coded.shape[1], *out.shape[1:])


def parm_row(entry: dict, served: OnnxModel, repo: Path, x: np.ndarray, y: np.ndarray, rounds: int, rng) -> Row:
    scheme = ParmScheme(entry["encoder"], entry["k"], parity_model=entry["name"])
    groups = random_groups(len(y), scheme.k, rounds, rng)
    coded = _coded_outputs(scheme, OnnxModel(model_path(repo, entry["name"])), x, groups)
    own = served(x)[groups]
    result = erase_each(scheme, own, coded, y[groups])
    return Row(f"parm ({scheme.encoder})", entry["name"], scheme.k, 1 / scheme.k, *result)


def collage_row(entry: dict, served: OnnxModel, repo: Path, x: np.ndarray, y: np.ndarray, rounds: int, rng) -> Row:
    s = int(round(entry["k"] ** 0.5))
    scheme = CollageScheme(s, collage_model=entry["name"])
    groups = random_groups(len(y), s * s, rounds, rng)
    coded = _coded_outputs(scheme, OnnxModel(model_path(repo, entry["name"])), x, groups)
    result = erase_each(scheme, served(x)[groups], coded, y[groups])
    return Row(f"collage (s={s})", entry["name"], s * s, 1 / (s * s), *result)


def approxifer_row(
    k: int, s: int, served: OnnxModel, x: np.ndarray, y: np.ndarray, rounds: int, rng, systematic: bool = False
) -> Row:
    """ApproxIFER, S of the N = K + S workers missing at random. Non-systematic: all K answers decoded from
    the N − S coded outputs. Systematic: the K originals served, S of them missing, decoded from the others
    and the S parities (export.eval_approxifer's "systematic, missing only" column)."""
    scheme = ApproxiferScheme(k, s=s, systematic=systematic)
    groups = random_groups(len(y), k, rounds, rng)
    coded = _coded_outputs(scheme, served, x, groups)
    own = served(x)[groups]
    hits = agree = decoded = 0
    for g in range(len(groups)):
        data: list[np.ndarray | None] = list(own[g]) if systematic else [None] * k
        arrived: list[np.ndarray | None] = list(coded[g])
        slots = data if systematic else arrived
        missing = rng.choice(len(slots), s, replace=False)
        for w in missing:
            slots[w] = None
        answers, _ = scheme.decode_slots(data, arrived)
        judged = np.sort(missing) if systematic else np.arange(k)  # systematic: only the rebuilt ones count
        top = np.argmax(np.stack(answers), -1)[judged]
        hits += int((top == y[groups[g]][judged]).sum())
        agree += int((top == own[g].argmax(-1)[judged]).sum())
        decoded += len(judged)
    a_a = float((own.argmax(-1) == y[groups]).mean())
    name = f"approxifer {'systematic ' if systematic else ''}(S={s})"
    return Row(name, "– (deployed model)", k, s / k, a_a, hits / decoded, agree / decoded, decoded)


def coin_row(entry: dict, repo: Path, x: np.ndarray, y: np.ndarray) -> Row:
    members = entry["members"]
    scheme = CoinScheme(len(members), method=entry["encoder"], members=tuple(members), coded_model=entry["name"])
    own = np.stack([OnnxModel(model_path(repo, m))(x) for m in members], 1)  # (N, k, classes)
    coded = OnnxModel(model_path(repo, entry["name"]))(x)[:, None]
    a_a, a_d, agrees, n = erase_each(scheme, own, coded, np.repeat(y[:, None], len(members), 1))
    return Row(
        f"coin ({entry['encoder']})",
        f"{entry['name']} (set {entry['coin_set']})",
        len(members),
        1 / len(members),
        a_a,
        a_d,
        agrees,
        n,
    )


def evaluate(
    repository: Path,
    name: str,
    data_path: str | None = None,
    rounds: int = 2,
    seed: int = 0,
    approxifer: Sequence[tuple[int, int]] = APPROXIFER_SETTINGS,
    limit: int | None = None,
) -> Evaluation:
    """The deployed model's test accuracy and one row per coded model made for ``name`` and per ApproxIFER setting."""
    served = Served.of(repository, name)
    test = served.load_data(data_path).test
    x, y = test.x[:limit], test.y[:limit]
    model = served.model()
    rng = np.random.default_rng(seed)
    rows = []
    coded = sorted(
        (e for e in read_manifest(repository).values() if e.get("deployed_model") == name),
        key=lambda e: (e["role"], e.get("encoder") or "", e.get("k") or 0),
    )
    for entry in coded:
        if entry["role"] == "parity":
            rows.append(parm_row(entry, model, repository, x, y, rounds, rng))
        elif entry["role"] == "collage":
            rows.append(collage_row(entry, model, repository, x, y, rounds, rng))
        elif entry["role"] == "coin_coded":
            rows.append(coin_row(entry, repository, x, y))
    for k, s in (setting for setting in approxifer if setting[0] <= len(y)):
        rows += [approxifer_row(k, s, model, x, y, rounds, rng, systematic) for systematic in (False, True)]
    return Evaluation(float((model(x).argmax(-1) == y).mean()), len(y), rows)


def markdown(name: str, result: Evaluation) -> str:
    return "\n".join(
        [
            f"Deployed model {name}: test accuracy {result.accuracy:.2%} on {result.images} test images.",
            "",
            HEADER,
            *(r.markdown() for r in result.rows),
        ]
    )
