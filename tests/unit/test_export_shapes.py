"""Export on images that are not 1 x 28 x 28: the deployed model, a ParM parity model (concatenation, k = 3) and
the scheme's refusal of a shape it cannot code, on synthetic 3 x 12 x 17 data (seconds, no dataset)."""

from __future__ import annotations

import pytest
import torch

from export import train
from export.models import build_model

SHAPE = (3, 12, 17)


def _split(n: int, seed: int, shape: tuple[int, ...] = SHAPE) -> train.Split:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=gen)
    return train.Split(images, torch.randint(0, 10, (n,), generator=gen))


def _data(shape: tuple[int, ...] = SHAPE) -> train.Data:
    return train.Data(_split(60, 0, shape), _split(30, 1, shape), _split(30, 2, shape))


def test_a_concat_k3_parity_model_trains_on_three_channel_non_square_images() -> None:
    data = _data()
    deployed = train.train_deployed(data, train.TrainConfig(epochs=1, batch_size=16)).model
    teacher = train.Teacher.of(deployed, data)
    parity = train.train_parity(data, teacher, "concat", 3, train.TrainConfig(epochs=1, batch_size=8)).model
    x = train.parity_inputs(data.test.images, torch.arange(9).view(3, 3), "concat")
    assert x.shape == (3, *SHAPE) and not x[:, :, 6:, 8:].any()  # k = 3: the bottom-right quadrant is 0
    assert parity(x).shape == (3, 10)
    metrics = train.evaluate_parity(parity, teacher, "concat", 3, data.test, rounds=1)
    assert metrics["decoded_slots"] == 30


def test_parity_training_refuses_images_the_encoder_cannot_tile() -> None:
    data = _data((1, 1, 9))
    teacher = train.Teacher(*(torch.zeros(len(s), 10) for s in (data.train, data.val, data.test)))
    with pytest.raises(ValueError, match="concat k=4 needs H >= 2 and W >= 2, got 1x9"):
        train.train_parity(data, teacher, "concat", 4, train.TrainConfig(epochs=1, batch_size=8))


@pytest.mark.parametrize("arch", ["cnn", "resnet_s"])
def test_the_built_in_architectures_take_any_image_shape_and_class_count(arch: str) -> None:
    model = build_model(arch, shape=(3, 32, 20), classes=7).eval()
    assert model(torch.rand(2, 3, 32, 20)).shape == (2, 7)
