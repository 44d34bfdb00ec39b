"""The committed COIN models reproduce, through onnxruntime and the serving decoder (coding.coin's CoinScheme,
one query per group) on the MNIST test split, the member and decoded accuracies their manifest entries record;
each member's labels come from the labelling its manifest entry names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from coding.coin import CODED, SPACES
from coding.schemes import get_scheme
from export import coin
from export.datasets import load
from export.spec import INPUT_NAME

REPO = Path(__file__).resolve().parents[2] / "model_repository"
MANIFEST = json.loads((REPO / "manifest.json").read_text())["models"]
# Logits reproduce exactly; in probability space the serving decoder floors decoded probabilities at
# coding.coin.PROBABILITY_FLOOR, which breaks ties among floored classes its own way (<= 0.09 points seen).
TOLERANCE = 2e-3


def _names(role: str) -> list[str]:
    return sorted(n for n, e in MANIFEST.items() if e["role"] == role)


@pytest.fixture(scope="module")
def outputs() -> dict:
    """Test digits and every COIN model's logits on the whole test split (as the manifest's), computed once."""
    images, digits = load("mnist", "test")
    x = images[:, None].astype(np.float32) / 255.0
    logits = {}
    for name in _names(coin.MEMBER) + _names(CODED):
        session = ort.InferenceSession(str(REPO / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
        logits[name] = np.concatenate(
            [session.run(None, {INPUT_NAME: x[i : i + 1000]})[0] for i in range(0, len(x), 1000)]
        )
    return {"digits": digits, "logits": logits}


def _labels(member: str, digits: np.ndarray) -> np.ndarray:
    """A member's label of each image, from the labelling its manifest entry names: (a d + b) mod 10."""
    labelling = MANIFEST[member]["coin"]["labelling"]
    return (labelling["a"] * digits + labelling["b"]) % 10


@pytest.mark.parametrize("name", _names(coin.MEMBER))
def test_member_accuracy_is_reproduced_under_its_labelling(name, outputs):
    entry = MANIFEST[name]
    digits = np.arange(10)
    np.testing.assert_array_equal(_labels(name, digits), coin.member_labels(entry["coin"]["member"], digits))
    accuracy = (outputs["logits"][name].argmax(1) == _labels(name, outputs["digits"])).mean()
    assert accuracy == pytest.approx(entry["metrics"]["test_accuracy"], abs=TOLERANCE)


@pytest.mark.parametrize("name", _names(CODED))
@pytest.mark.parametrize("space", SPACES)
def test_the_serving_decoder_reproduces_the_decoded_accuracy(name, space, outputs):
    """Each member in turn missing, rebuilt by CoinScheme.decode_slots from the other members and the coded model."""
    entry = MANIFEST[name]
    members, lambdas = entry["coin"]["members"], entry["coin"]["lambdas"]
    params = {"method": entry["coin"]["method"], "space": space, "lambdas": "+".join(map(str, lambdas))}
    scheme = get_scheme("coin", entry["k"], params)
    assert scheme.models("mnist_coin") == {**{f"member{j}": m for j, m in enumerate(members)}, CODED: name}
    member_out, coded_out = [outputs["logits"][m] for m in members], outputs["logits"][name]
    hits = np.zeros(len(members))
    for q in range(len(coded_out)):
        for j in range(len(members)):
            present = [None if i == j else out[q] for i, out in enumerate(member_out)]
            rebuilt, _ = scheme.decode_slots(present, [coded_out[q]])
            hits[j] += rebuilt[j].argmax() == _labels(members[j], outputs["digits"][q])
    accuracy = hits.mean() / len(coded_out)
    assert accuracy == pytest.approx(entry["metrics"]["decoded_accuracy"][space], abs=TOLERANCE)
