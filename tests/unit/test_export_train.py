"""Training-side ParM helpers against the coding library, on synthetic data (seconds, no dataset)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from coding import parm
from export import train
from export.spec import IMAGE_SHAPE, NUM_CLASSES


def _split(n: int, seed: int) -> train.Split:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *IMAGE_SHAPE), dtype=torch.uint8, generator=gen)
    return train.Split(images, torch.randint(0, NUM_CLASSES, (n,), generator=gen))


def _data() -> train.Data:
    return train.Data(_split(96, 0), _split(32, 1), _split(32, 2))


def test_decode_every_erasure_is_subtraction_decode_for_each_slot() -> None:
    gen = torch.Generator().manual_seed(0)
    parity_out, slots = torch.randn(5, NUM_CLASSES, generator=gen), torch.randn(5, 3, NUM_CLASSES, generator=gen)
    decoded = train.decode_every_erasure(parity_out, slots)
    for j in range(3):
        present = torch.arange(3) != j
        torch.testing.assert_close(decoded[:, j], parm.subtraction_decode(parity_out, slots, present))


def test_a_linear_model_is_its_own_exact_parity_model_for_the_add_encoder() -> None:
    """F linear => F(sum X_i) = sum F(X_i): decoding must rebuild every erased output exactly."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, NUM_CLASSES, bias=False)).double()
    model = nn.Sequential(_ToDouble(), linear)
    test = _split(60, 3)
    logits = train.predict(model, train.image_batches(test.images))
    groups = train.random_groups(len(test), 3, torch.device("cpu"), torch.Generator().manual_seed(0))
    metrics = train.degraded_metrics(model, "add", test, logits, [groups])
    assert metrics["reconstruction_top1"] == 1.0
    assert metrics["degraded_accuracy"] == metrics["deployed_accuracy"]


class _ToDouble(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.double()


def test_parity_loss_is_zero_at_the_exact_target_and_mse_otherwise() -> None:
    slots = torch.randn(4, 2, NUM_CLASSES)
    assert train.parity_loss(parm.parity_target(slots), slots, decode_ce_weight=0.0) == 0.0
    off = parm.parity_target(slots) + 1.0
    torch.testing.assert_close(train.parity_loss(off, slots), torch.tensor(1.0))


@pytest.mark.parametrize("budget_s", [0.0, 1.0])  # 0: a run whose budget others spent must still stop
def test_training_stops_at_its_time_budget_and_keeps_the_best_epoch(budget_s: float) -> None:
    data = _data()
    start = time.monotonic()
    result = train.train_deployed(data, train.TrainConfig(epochs=10_000, batch_size=16, time_budget_s=budget_s))
    assert time.monotonic() - start < 10.0
    assert 1 <= result.best_epoch <= result.epochs < 10_000
    assert result.val_metric == max(h["val"] for h in result.history)


def test_parity_training_runs_warm_started_and_evaluates_every_slot() -> None:
    data = _data()
    deployed = train.train_deployed(data, train.TrainConfig(epochs=1, batch_size=32)).model
    teacher = train.Teacher.of(deployed, data)
    cfg = train.TrainConfig(epochs=1, batch_size=8, decode_ce_weight=2.0, warm_start=True)
    parity = train.train_parity(data, teacher, "concat", 4, cfg, deployed).model
    metrics = train.evaluate_parity(parity, teacher, "concat", 4, data.test, rounds=2)
    assert metrics["decoded_slots"] == 2 * 32
    # Each round decodes every test image's slot once: the deployed model's accuracy on the decoded slots is
    # its accuracy on the whole test split, and the degraded accuracy counts whole slots out of 64.
    own = (teacher.test.argmax(-1) == data.test.labels).float().mean().item()
    assert metrics["deployed_accuracy"] == pytest.approx(own)
    hits = metrics["degraded_accuracy"] * metrics["decoded_slots"]
    assert hits == pytest.approx(round(hits))


def test_the_parm_recipe_is_mse_alone_under_adam_at_a_constant_rate() -> None:
    """ParM's recipe against ours: its objective has no helping term (an exact parity output costs nothing), its
    optimiser is Adam at ParM's settings with no schedule; ours adds the cross-entropy and anneals AdamW."""
    slots = torch.randn(4, 2, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    exact = parm.parity_target(slots)
    paper, ours = train.parm_recipe(2), train.TrainConfig(epochs=1, batch_size=8, decode_ce_weight=0.5)
    assert train.parity_objective(paper)(exact, slots) == 0.0
    assert train.parity_objective(ours)(exact, slots) > 0.1  # the decoded slots' cross-entropy
    torch.testing.assert_close(train.parity_objective(paper)(exact + 1.0, slots), torch.tensor(1.0))
    model = nn.Linear(3, 2)
    adam, adamw = train.make_optimizer(model, paper), train.make_optimizer(model, ours)
    assert type(adam) is torch.optim.Adam and type(adamw) is torch.optim.AdamW
    assert (adam.defaults["lr"], adam.defaults["weight_decay"]) == (1e-3, 1e-5)
    assert [train.lr_at(paper, p) for p in (0.0, 0.5, 0.99)] == [1e-3] * 3
    assert train.lr_at(ours, 0.99) < 0.01 * ours.lr
    assert (paper.batch_size, train.parm_recipe(3).batch_size) == (64, 32)


def test_the_parm_recipe_refuses_a_helping_term_or_a_warm_start() -> None:
    for extra in ({"decode_ce_weight": 0.5}, {"warm_start": True}):
        with pytest.raises(ValueError, match="parm recipe"):
            train.TrainConfig(epochs=1, batch_size=8, recipe="parm", **extra)


def test_parm_init_is_parms_initialisation() -> None:
    torch.manual_seed(0)
    conv, norm, linear = nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Linear(8 * 26 * 26, 500)
    train.parm_init(nn.Sequential(conv, norm, nn.Flatten(), linear))
    assert abs(linear.weight.std().item() - 0.01) < 0.001  # PyTorch's default: 0.008 here
    assert conv.bias is not None and not conv.bias.any() and not linear.bias.any()
    assert bool((norm.weight == 1.0).all())


def test_parity_training_runs_under_the_parm_recipe_for_concat_k3() -> None:
    data = _data()
    deployed = train.train_deployed(data, train.TrainConfig(epochs=1, batch_size=32)).model
    teacher = train.Teacher.of(deployed, data)
    result = train.train_parity(data, teacher, "concat", 3, train.parm_recipe(3, epochs=2), deployed)
    assert result.epochs == 2 and result.history[-1]["steps"] == 2 * 1  # 96 images: 32 groups, one batch of 32
    metrics = train.evaluate_parity(result.model, teacher, "concat", 3, data.test, rounds=2)
    assert metrics["decoded_slots"] == 2 * 30
