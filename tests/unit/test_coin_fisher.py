"""COIN's export side: the diagonal Fisher against per-example autograd, the Fisher merge against its formula,
the members' labellings, and a smoke run of ``python -m export.coin`` into a temporary repository."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from coding.coin import METHODS, SPACES
from coding.spec import NUM_CLASSES
from export import coin, fisher
from export.models import Arch, SmallCNN

ROOT = Path(__file__).resolve().parents[2]


def _tiny_model(seed: int = 0) -> SmallCNN:
    """A SmallCNN small enough for a per-example loop, with BatchNorm statistics that are not the defaults."""
    torch.manual_seed(seed)
    model = SmallCNN(Arch(stages=((3,),), hidden=5), mean=0.1, std=0.3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _biased_conv_model() -> torch.nn.Module:
    """Layers SmallCNN lacks: a conv with a bias and 5x5 kernel, BatchNorm on a Linear layer's output."""
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 5, padding=2),
        torch.nn.ReLU(inplace=True),
        torch.nn.MaxPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 7 * 7, 6),
        torch.nn.BatchNorm1d(6),
        torch.nn.Linear(6, NUM_CLASSES),
    ).eval()


def _brute_force_fisher(
    model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, kind: str
) -> dict[str, torch.Tensor]:
    """One backward pass per (example, class): Σ_y w_y (∂ log p(y|x) / ∂θ)², averaged over the examples."""
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for i in range(len(x)):
        log_p = torch.log_softmax(model(x[i : i + 1])[0], -1)
        weights = torch.eye(NUM_CLASSES)[labels[i]] if kind == "empirical" else log_p.exp().detach()
        for y in range(NUM_CLASSES):
            grads = torch.autograd.grad(log_p[y], list(model.parameters()), retain_graph=True)
            for (name, _), g in zip(model.named_parameters(), grads, strict=True):
                total[name] += weights[y] * g.square()
    return {name: t / len(x) for name, t in total.items()}


@pytest.mark.parametrize("make_model", [_tiny_model, _biased_conv_model])
@pytest.mark.parametrize("kind", fisher.FISHER_KINDS)
def test_the_diagonal_fisher_matches_a_per_example_loop(kind: str, make_model) -> None:
    model = make_model()
    gen = torch.Generator().manual_seed(1)
    x, labels = torch.rand(7, 1, 28, 28, generator=gen), torch.randint(0, NUM_CLASSES, (7,), generator=gen)
    estimate = fisher.diagonal_fisher(model, x, labels, kind, chunk=3)  # chunks of 3, 3 and 1
    expected = _brute_force_fisher(model, x, labels, kind)
    assert estimate.keys() == dict(model.named_parameters()).keys()
    for name, value in expected.items():
        torch.testing.assert_close(estimate[name], value, rtol=1e-4, atol=1e-9, msg=name)


def test_the_empirical_fisher_needs_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        fisher.diagonal_fisher(_tiny_model(), torch.rand(2, 1, 28, 28), None, "empirical")


def test_the_merge_is_the_fisher_weighted_formula_and_plain_averaging_where_no_fisher_weighs() -> None:
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}]
    fishers = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([3.0, 0.0])}]
    merged = fisher.merge(states, [0.5, 0.5], fishers, eps=0.5)
    # element 0: (0.5·1.5·1 + 0.5·3.5·3) / (0.5·1.5 + 0.5·3.5) = 2.4; element 1: F = 0 for both, (2 + 6) / 2
    torch.testing.assert_close(merged["w"], torch.tensor([2.4, 4.0]))
    tiny_eps = fisher.merge(states, [0.25, 0.75], fishers, eps=1e-12)["w"]
    torch.testing.assert_close(tiny_eps[0], torch.tensor((0.25 * 1 * 1 + 0.75 * 3 * 3) / (0.25 * 1 + 0.75 * 3)))


def test_with_equal_fishers_the_merge_is_plain_weighted_averaging() -> None:
    gen = torch.Generator().manual_seed(0)
    states = [{"a": torch.randn(4, 3, generator=gen), "b": torch.randn(5, generator=gen)} for _ in range(3)]
    shared = {"a": torch.rand(4, 3, generator=gen), "b": torch.rand(5, generator=gen)}
    lambdas = [0.2, 0.3, 0.5]
    merged, plain = fisher.merge(states, lambdas, [shared] * 3), fisher.merge(states, lambdas)
    for name in ("a", "b"):
        average = sum(lam * s[name] for lam, s in zip(lambdas, states, strict=True))
        torch.testing.assert_close(merged[name], average)
        torch.testing.assert_close(plain[name], average)


def test_merging_copies_of_one_model_gives_that_model() -> None:
    model = _tiny_model()
    fishers = [fisher.diagonal_fisher(model, torch.rand(4, 1, 28, 28), kind="true")] * 2
    merged = coin.merged_model([model, model], [0.5, 0.5], fishers, "average", torch.zeros(0, 1, 28, 28))
    x = torch.rand(6, 1, 28, 28)
    torch.testing.assert_close(merged(x), model(x))


def test_every_labelling_is_a_permutation_and_any_two_members_disagree_on_every_digit() -> None:
    digits = np.arange(NUM_CLASSES)
    labels = [coin.member_labels(j, digits) for j in range(len(coin.LABELLINGS))]
    assert all(sorted(row) == list(digits) for row in labels)
    assert all((labels[i] != labels[j]).all() for i in range(len(labels)) for j in range(i))
    np.testing.assert_array_equal(coin.member_labels(1, digits), (3 * digits + 7) % 10)
    assert coin.coding_weights(3) == pytest.approx((1 / 3,) * 3)
    assert coin.coding_weights(2, "3,1,5") == (0.75, 0.25)


def test_the_cli_builds_exports_and_tabulates_a_tiny_run(tmp_path: Path) -> None:
    began = time.monotonic()
    results = tmp_path / "coin-mnist.md"
    coin.main(
        [
            *("--k", "2", "--settings", "shared", "--limit", "200", "--fisher-samples", "8"),
            *("--base", str(ROOT / "model_repository"), "--data", str(ROOT / "data")),
            *("--out", str(tmp_path), "--results", str(results)),
        ]
    )
    models = json.loads((tmp_path / "manifest.json").read_text())["models"]
    assert sorted(models) == sorted(["mnist_coin_m0", "mnist_coin_m1", *(f"mnist_coin_k2_{m}" for m in METHODS)])
    coded = models["mnist_coin_k2_fisher"]
    assert coded["role"] == "coin_coded" and coded["k"] == 2
    assert coded["coin"]["members"] == ["mnist_coin_m0", "mnist_coin_m1"] and coded["coin"]["fisher_samples"] == 8
    assert set(coded["metrics"]["decoded_accuracy"]) == set(SPACES)
    assert models["mnist_coin_m1"]["coin"]["labelling"] == {"a": 3, "b": 7, "rule": "(3*d + 7) % 10"}
    assert all((tmp_path / name / "1" / "model.onnx").is_file() for name in models)
    assert "| shared | 2 |" in results.read_text()
    assert time.monotonic() - began < 60
