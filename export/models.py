"""The small CNN used both as the deployed model and as the ParM parity model (ParM keeps the architecture), and
a small ResNet (a stronger deployed model, and parity models with more capacity than the CNN's).

Input: float32 pixels in [0, 1] (a parity model gets the encoder's output instead), shape ``(B, C, H, W)``
(the built-in models' ``(B, 1, 28, 28)``); the model normalizes inside with constants fitted on its training
inputs. Output: raw logits ``(B, classes)``.
``forward`` is export-clean (no data-dependent control flow) and device-agnostic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from export.spec import IMAGE_SHAPE, NUM_CLASSES


@dataclass(frozen=True)
class Arch:
    """Channel widths of the conv stages (3x3 convs with BatchNorm and ReLU, the last pooled 2x2) and the FC width."""

    stages: tuple[tuple[int, ...], ...] = ((32,), (64,))
    hidden: int = 128

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ResArch:
    """A CIFAR-style ResNet: a 3x3 stem, stages of basic blocks (the first of each later stage strided by 2), global
    average pooling, one linear layer. ``widths`` are the stages' channels, ``blocks`` the blocks per stage."""

    widths: tuple[int, ...] = (32, 64, 128)
    blocks: int = 2

    def as_dict(self) -> dict:
        return asdict(self)


ARCHS: dict[str, Arch | ResArch] = {
    # conv32-pool-conv64-pool-fc128: 0.42 M parameters, 1.7 MB of ONNX, 4.2 M multiply-accumulates per image
    "cnn": Arch(),
    # conv32-conv32-pool-conv64-conv64-pool-conv128-pool-fc128: 0.29 M parameters, ~4x the compute of "cnn"
    "cnn_deep": Arch(stages=((32, 32), (64, 64), (128,)), hidden=128),
    # conv64-pool-conv128-pool-fc256: twice the CNN's widths (a wider parity model than the deployed one);
    # 1.68 M parameters, 16.5 M multiply-accumulates
    "cnn_wide": Arch(stages=((64,), (128,)), hidden=256),
    # ResNet-14 at widths 32/64/128 (28, 14, 7 px): 0.70 M parameters, 80.5 M multiply-accumulates (19x the CNN's)
    "resnet": ResArch(),
    # the same at half the widths: 0.17 M parameters, 20.2 M multiply-accumulates
    "resnet_s": ResArch(widths=(16, 32, 64)),
    # ResNet-18's widths and depth (64-512, two basic blocks a stage) in the CIFAR layout: on 3 x 32 x 32,
    # 11.2 M parameters; bench.service_law times it as a real larger model's service time
    "resnet18": ResArch(widths=(64, 128, 256, 512), blocks=2),
}


def _conv_bn_relu(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    # Pooling right after the conv (before BatchNorm and ReLU) does the elementwise work at a quarter of the
    # size: about 2x faster training on a 2-core CPU than conv-BN-ReLU-pool, at the same accuracy.
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    return [conv, *([nn.MaxPool2d(2)] if pool else []), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class _Normalized(nn.Module):
    """Inputs normalized inside the model by two buffers (exported as constants), fitted on training inputs."""

    mean: torch.Tensor
    std: torch.Tensor

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Set the constants to the mean and standard deviation of ``x`` (export.train calls this)."""
        self.mean.fill_(x.mean().item())
        self.std.fill_(x.std().item())


class SmallCNN(_Normalized):
    def __init__(
        self,
        arch: Arch = Arch(),
        mean: float = 0.0,
        std: float = 1.0,
        shape: tuple[int, ...] = IMAGE_SHAPE,
        classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        layers: list[nn.Module] = []
        c_in, h, w = shape
        for stage in arch.stages:
            for i, c_out in enumerate(stage):
                layers += _conv_bn_relu(c_in, c_out, pool=i == len(stage) - 1)
                c_in = c_out
            h, w = h // 2, w // 2
        if not h or not w:
            raise ValueError(f"{len(arch.stages)} 2x2 poolings leave nothing of a {shape[1]}x{shape[2]} input")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * h * w, arch.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(arch.hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features((x - self.mean) / self.std))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (through a strided 1x1 conv + BN where the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(_Normalized):
    """Same contract as :class:`SmallCNN`: pixels in, normalized inside by fitted constants, logits out."""

    def __init__(
        self,
        arch: ResArch = ResArch(),
        mean: float = 0.0,
        std: float = 1.0,
        shape: tuple[int, ...] = IMAGE_SHAPE,
        classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        c_in = arch.widths[0]
        layers: list[nn.Module] = [
            nn.Conv2d(shape[0], c_in, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_in),
            nn.ReLU(inplace=True),
        ]
        for stage, c_out in enumerate(arch.widths):
            for block in range(arch.blocks):
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage and not block else 1))
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over H, W (ONNX ReduceMean) rather than AdaptiveAvgPool2d: the same op on every exporter
        return self.classifier(self.features((x - self.mean) / self.std).mean((2, 3)))


def multiply_accumulates(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of the convolutions and linear layers in one forward pass of ``example``:
    the compute a model costs per call, whatever machine runs it."""
    total = 0

    def count(layer: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            kh, kw = layer.kernel_size
            total += output.numel() * layer.in_channels * kh * kw // layer.groups
        elif isinstance(layer, nn.Linear):
            total += output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total


def build_model(
    arch: str = "cnn",
    mean: float = 0.0,
    std: float = 1.0,
    shape: tuple[int, ...] = IMAGE_SHAPE,
    classes: int = NUM_CLASSES,
) -> nn.Module:
    """Architecture ``arch`` of :data:`ARCHS` for inputs of ``shape`` (C, H, W) and ``classes`` outputs."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    spec = ARCHS[arch]
    if isinstance(spec, ResArch):
        return ResNet(spec, mean=mean, std=std, shape=shape, classes=classes)
    return SmallCNN(spec, mean=mean, std=std, shape=shape, classes=classes)


def cnn() -> nn.Module:
    """The built-in deployed model (and its parity models' architecture) as a factory, ``export.models:cnn``,
    for ``python -m export import --model`` like any user's: 1 x 28 x 28 pixels in [0, 1], 10 classes, the input
    normalization fitted when export.train trains it."""
    return build_model("cnn")
