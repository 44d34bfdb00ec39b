"""COIN's export side: the diagonal Fisher against per-example autograd (the built-in CNN, and ResNet-style
models with strided, dilated and grouped convolutions and BatchNorm), the Fisher merge against its formula on
every layer of a ResNet, the members' labellings, and a smoke run of ``python -m export.coin`` into a
temporary repository."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from coding.coin import METHODS, SPACES
from export import coin, fisher
from export.models import Arch, SmallCNN, build_model
from export.spec import NUM_CLASSES

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
        classes = len(log_p)
        weights = torch.eye(classes)[labels[i]] if kind == "empirical" else log_p.exp().detach()
        for y in range(classes):
            grads = torch.autograd.grad(log_p[y], list(model.parameters()), retain_graph=True)
            for (name, _), g in zip(model.named_parameters(), grads, strict=True):
                total[name] += weights[y] * g.square()
    return {name: t / len(x) for name, t in total.items()}


class _Block(nn.Module):
    """A torchvision-style residual block, its shortcut declared BEFORE the body it is added to (so call order
    and declaration order differ): a strided 3x3 conv, a grouped 3x3 conv, a dilated 3x3 conv, each with
    BatchNorm, and a strided 1x1 conv + BatchNorm on the shortcut."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 3, padding=2, dilation=2)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)  # one module applied three times, as torchvision's blocks do

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A stem with a 5x5 stride-2 conv and max pooling, one block, global average pooling, a linear head, on
    3-channel inputs of any size (the tests use 3 x 18 x 22) and 4 classes."""

    def __init__(self, seed: int = 0, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 4, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.block = _Block(4, 8, groups=4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        for m in self.modules():  # statistics and affine maps unlike the defaults, different per seed
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.uniform_(m.bias, -0.2, 0.2)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def _project_resnet() -> nn.Module:
    """export.models' own ResNet ("resnet_s", strided 3x3 convs and 1x1 strided shortcuts) on 3 x 12 x 12."""
    torch.manual_seed(2)
    return build_model("resnet_s", shape=(3, 12, 12), classes=3).eval()


@pytest.mark.parametrize(
    "make_model,shape",
    [
        (_tiny_model, (1, 28, 28)),
        (_biased_conv_model, (1, 28, 28)),
        (TinyResNet, (3, 18, 22)),
        (_project_resnet, (3, 12, 12)),
    ],
)
@pytest.mark.parametrize("kind", fisher.FISHER_KINDS)
def test_the_diagonal_fisher_matches_a_per_example_loop(kind: str, make_model, shape) -> None:
    model = make_model()
    gen = torch.Generator().manual_seed(1)
    classes = model(torch.zeros(1, *shape)).shape[-1]
    x, labels = torch.rand(7, *shape, generator=gen), torch.randint(0, classes, (7,), generator=gen)
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


def test_a_strided_convolution_with_reflect_padding_matches_the_loop_too() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, (3, 2), stride=(2, 3), padding=(1, 2), padding_mode="reflect"),
        nn.Flatten(),
        nn.LazyLinear(5),
    )
    x = torch.rand(5, 2, 9, 11)
    model(x)  # materialise the lazy layer
    model.eval()
    estimate = fisher.diagonal_fisher(model, x, kind="true", chunk=2)
    for name, value in _brute_force_fisher(model, x, torch.zeros(5, dtype=torch.long), "true").items():
        torch.testing.assert_close(estimate[name], value, rtol=1e-4, atol=1e-9, msg=name)


def test_a_layer_without_a_per_example_rule_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 3), nn.LayerNorm(3))
    with pytest.raises(TypeError, match="3 .LayerNorm."):
        fisher.diagonal_fisher(model, torch.rand(2, 1, 6, 6))


def test_fisher_merging_covers_every_layer_of_a_resnet_and_averages_its_batchnorm_statistics() -> None:
    """Two ResNets merged: every parameter (strided, grouped and dilated convs, BatchNorm's γ and β, the linear
    head) is the Fisher-weighted formula of its own Fisher; BatchNorm's running statistics the λ-average."""
    members = [TinyResNet(seed) for seed in (0, 1)]
    x = torch.rand(6, 3, 18, 22, generator=torch.Generator().manual_seed(4))
    fishers = [fisher.diagonal_fisher(m, x) for m in members]
    lambdas = [0.25, 0.75]
    merged = coin.merged_model(members, lambdas, fishers, "average", torch.zeros(0, 3, 18, 22))
    params = dict(merged.named_parameters())
    assert params.keys() == fishers[0].keys() and len(params) == 18
    for name, value in params.items():
        weights = [lam * (f[name] + fisher.EPS) for lam, f in zip(lambdas, fishers, strict=True)]
        expected = sum(w * dict(m.named_parameters())[name] for w, m in zip(weights, members, strict=True))
        torch.testing.assert_close(value, expected / sum(weights), msg=name)
        assert fishers[0][name].abs().sum() > 0, f"{name} got no Fisher"
    for name, value in merged.named_buffers():
        if value.is_floating_point():
            expected = sum(lam * dict(m.named_buffers())[name] for lam, m in zip(lambdas, members, strict=True))
            torch.testing.assert_close(value, expected, msg=name)
    assert merged(x).shape == (6, 4)


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
