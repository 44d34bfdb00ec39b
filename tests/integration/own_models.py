"""Two models that are not the built-in CNN, with the synthetic data sets they learn in seconds.

- ``tiny_resnet``: a small ResNet-style net (stem, a strided residual block with a projection, BatchNorm) on
  3 x 32 x 32 colour images, 4 classes: a bright square in one of the four quadrants, written as PNG files
  in one folder per class.
- ``tiny_mlp``: an MLP on 1 x 20 x 24 images, 3 classes: a bright band in the top, middle or bottom third, in
  an ``.npz`` (``x`` N x H x W x C uint8, ``y``).
- ``linear``: an exact oracle for the decoders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = _Block(8, 16, 2)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def tiny_resnet() -> nn.Module:
    return TinyResNet()


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(20 * 24, 32), nn.ReLU(), nn.Linear(32, 3))


def linear() -> nn.Module:
    """A linear classifier on 2 x 6 x 5 inputs, 3 classes: ParM with a bias-scaled copy, and COIN's plain
    average, decode it exactly."""
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 5, 3))


def quadrant_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(n, 32, 32, 3)`` noise with a bright 12 px square in quadrant y (0..3) of a random colour."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 90, (n, 32, 32, 3)).astype(np.uint8)
    for i, label in enumerate(y):
        r, c = 2 + 16 * (label // 2) + rng.integers(0, 3), 2 + 16 * (label % 2) + rng.integers(0, 3)
        x[i, r : r + 12, c : c + 12] = rng.integers(160, 256, 3)
    return x, y


def write_image_folder(root: Path, n: int = 240, seed: int = 0) -> Path:
    from PIL import Image

    x, y = quadrant_images(n, seed)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / f"class_{'abcd'[label]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def band_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``(n, 20, 24, 1)``: a bright band in the top, middle or bottom third (class 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 80, (n, 20, 24, 1)).astype(np.uint8)
    for i, label in enumerate(y):
        top = 7 * label + rng.integers(0, 2)
        x[i, top : top + 5] = rng.integers(170, 256)
    return x, y


def write_npz(path: Path, n: int = 300, seed: int = 0) -> Path:
    x, y = band_images(n, seed)
    np.savez(path, x=x, y=y)
    return path


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30, seed: int = 0) -> nn.Module:
    """A few seconds of Adam on preprocessed inputs ``x`` (N, C, H, W): a deployed model to serve."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(yt)).split(32):
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
