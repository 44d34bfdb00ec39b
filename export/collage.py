"""python -m export.collage: train, evaluate and export the Collage-CNN collage models (one per dataset and s).

The collage model classifies every cell of an s x s collage (coding.collage.tile) in one pass: the cells
are cut out of the collage by reshapes (export-clean: no data-dependent control flow) and one shared
small CNN classifies each, so the output is ``(B, s², classes)``, row j the answer for cell j. It trains on
collages of random groups of training images (each image shifted by up to 2 px first, as the deployed
model's augmentation) against the true labels, keeping the epoch with the best per-cell validation
accuracy; it is exported to ONNX with its Triton config (output dims ``[s², classes]``), checked against
torch, and recorded in the manifest with its per-cell test accuracy next to the deployed model's.

Two variants, measured and not served (``--evaluate-only`` prints their per-cell test accuracy):
``--layout full`` tiles the queries at full resolution into an s·H x s·W collage (what the published
code does at 416 px, here without any resize), and ``--soft-weight W`` trains against
(1 − W) · true labels + W · the deployed model's softmax (its soft labels, computed once on the
unshifted training images by the exported deployed model).

    python -m export.collage --dataset mnist --s 2,3 --epochs 6 --out model_repository
    python -m export.collage --dataset mnist --s 2 --epochs 3 --layout full --evaluate-only
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from coding import collage
from export import train
from export.manifest import RunInfo, model_entry, update_manifest
from export.models import multiply_accumulates
from export.onnx_export import onnx_providers, write_model
from export.spec import DATASETS, IMAGE_SHAPE, INPUT_NAME, NUM_CLASSES, deployed_model_name
from export.train import TrainConfig

log = logging.getLogger("export.collage")

LAYOUTS = ("resized", "full")  # served: resized (coding.collage.tile); full: an experiment


class CollageNet(nn.Module):
    """``(B, C, H, W)`` collages -> ``(B, s², classes)`` logits, one shared CNN per ``th x tw`` cell
    (``th, tw = H // s, W // s`` for the served, resized layout, coding.collage's; the query's own H x W for the
    full-resolution one, whose collage is ``s H x s W``). ``shape`` is one query's (C, H, W)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        s: int,
        mean: float = 0.0,
        std: float = 1.0,
        width: int = 64,
        hidden: int = 128,
        layout: str = "resized",
        shape: tuple[int, ...] = IMAGE_SHAPE,
        classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        problem = collage.CollageScheme(s).rejects(shape)
        if problem:
            raise ValueError(problem)
        c, h, w = shape
        self.s, self.shape, self.classes = s, shape, classes
        self.cell = (h // s, w // s) if layout == "resized" else (h, w)
        if min(self.cell) < 2:
            raise ValueError(f"the per-cell CNN pools 2x2: cells of {self.cell[0]}x{self.cell[1]} px are too small")
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.features = nn.Sequential(
            nn.Conv2d(c, width // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        th, tw = self.cell
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * (th // 2) * (tw // 2), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, (th, tw), c = self.s, self.cell, self.shape[0]
        body = ((x - self.mean) / self.std)[:, :, : s * th, : s * tw]
        cells = body.reshape(-1, c, s, th, s, tw).permute(0, 2, 4, 1, 3, 5)
        logits = self.classifier(self.features(cells.reshape(-1, c, th, tw)))
        return logits.reshape(-1, s * s, self.classes)


def collages(
    images: torch.Tensor, groups: torch.Tensor, s: int, shift: bool = False, layout: str = "resized"
) -> torch.Tensor:
    """Collages ``(G, C, H, W)`` of coding groups ``(G, s²)`` of indices into uint8 ``images`` ``(N, C, H, W)``
    (``layout="full"``: ``(G, C, s H, s W)``, the queries unresized)."""
    x = train.pixels(images[groups])  # (G, s², C, H, W)
    c, h, w = x.shape[-3:]
    if shift:
        x = train.random_shift(x.reshape(-1, c, h, w)).reshape(x.shape)
    if layout == "resized":
        return collage.tile(x, s)
    return x.reshape(-1, s, s, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(-1, c, s * h, s * w)


def cell_accuracy(
    model: nn.Module, split: train.Split, s: int, rounds: int = 2, seed: int = 0, layout: str = "resized"
) -> float:
    """Per-cell accuracy over ``rounds`` random partitions of ``split`` into collages of s² images."""
    gen = torch.Generator().manual_seed(seed)
    hits = total = 0
    for _ in range(rounds):
        groups = train.random_groups(len(split), s * s, split.images.device, gen)
        logits = train.predict(model, (collages(split.images, g, s, layout=layout) for g in groups.split(1024)))
        hits += int((logits.argmax(-1) == split.labels[groups]).sum().item())
        total += groups.numel()
    return hits / total


def soft_labels(repository: Path, dataset: str, images: torch.Tensor, batch: int = 4096) -> torch.Tensor:
    """The exported deployed model's softmax ``(N, classes)`` on uint8 ``images`` (unshifted)."""
    path = repository / deployed_model_name(dataset) / "1" / "model.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"soft labels need the deployed model at {path}: run `make models` first")
    session = ort.InferenceSession(str(path), providers=onnx_providers())
    logits = [session.run(None, {INPUT_NAME: train.pixels(x).cpu().numpy()})[0] for x in images.split(batch)]
    return torch.softmax(torch.from_numpy(np.concatenate(logits)), -1).to(images.device)


def train_collage(
    data: train.Data,
    s: int,
    cfg: TrainConfig,
    layout: str = "resized",
    soft: torch.Tensor | None = None,
    soft_weight: float = 0.0,
    width: int = 64,
    classes: int = NUM_CLASSES,
) -> train.Trained:
    """Cross-entropy of every cell against its label — the true one, or mixed with ``soft_weight`` of the
    deployed model's soft label ``soft[i]`` —; best epoch by per-cell validation accuracy. Any images
    ``(N, C, H, W)`` (uint8 pixels, or a user's preprocessed floats) and ``classes`` outputs."""
    tr, device = data.train, data.train.images.device
    sample = train.pixels(tr.images[:4096])
    torch.manual_seed(cfg.seed)
    shape = tuple(tr.images.shape[1:])  # one query's (C, H, W)
    model = CollageNet(
        s, sample.mean().item(), sample.std().item(), width, layout=layout, shape=shape, classes=classes
    ).to(device)
    hard = F.one_hot(tr.labels, classes).float()
    targets = hard if soft is None or not soft_weight else (1 - soft_weight) * hard + soft_weight * soft

    def loss_fn(groups: torch.Tensor) -> torch.Tensor:
        logits = model(collages(tr.images, groups, s, shift=cfg.augment, layout=layout))
        return F.cross_entropy(logits.reshape(-1, classes), targets[groups].reshape(-1, classes))

    def batches() -> list[torch.Tensor]:
        return list(train.random_groups(len(tr), s * s, device).split(cfg.batch_size))

    def validate() -> float:
        return cell_accuracy(model, data.val, s, rounds=1, layout=layout)

    return train._fit(
        model, cfg, batches, loss_fn, validate, f"collage s={s}" + ("" if layout == "resized" else f" {layout}")
    )


def _deployed_accuracy(repository: Path, dataset: str) -> float | None:
    manifest = repository / "manifest.json"
    if not manifest.is_file():
        return None
    entry = json.loads(manifest.read_text())["models"].get(deployed_model_name(dataset), {})
    return entry.get("metrics", {}).get("test_accuracy")


def export_collage(
    data: train.Data,
    dataset: str,
    s: int,
    cfg: TrainConfig,
    out: Path,
    run: RunInfo,
    soft_weight: float = 0.0,
    width: int = 64,
) -> dict:
    soft = soft_labels(out, dataset, data.train.images) if soft_weight else None
    result = train_collage(data, s, cfg, soft=soft, soft_weight=soft_weight, width=width)
    name = collage.collage_model_name(dataset, s)
    check = collages(data.test.images, torch.arange(8 * s * s, device=data.test.images.device).view(8, -1), s)
    facts = write_model(result.model, name, out, check.cpu().numpy(), output_dims=(s * s, NUM_CLASSES))
    metrics = {
        "cell_accuracy": cell_accuracy(result.model, data.test, s, rounds=4),
        "deployed_test_accuracy": _deployed_accuracy(out, dataset),
        "extra_load": 1 / (s * s),
        "macs": collage_macs(result.model, s),
    }
    log.info(
        "%s: per-cell test accuracy %.4f (deployed %s)",
        name,
        metrics["cell_accuracy"],
        metrics["deployed_test_accuracy"],
    )
    training = {
        "config": cfg.as_dict(),
        "soft_weight": soft_weight,
        "width": width,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "val_metric": result.val_metric,
        "seconds": round(result.seconds, 1),
        "history": result.history,
    }
    return model_entry(
        name=name,
        dataset=dataset,
        role="collage",
        encoder="tile",
        k=s * s,
        run=run,
        onnx_facts=facts,
        training=training,
        metrics=metrics,
    )


def collage_macs(model: nn.Module, s: int, layout: str = "resized") -> int:
    """One collage's multiply-accumulates on ``model`` (the deployed model's: models.multiply_accumulates)."""
    assert isinstance(model, CollageNet)
    c, h, w = model.shape
    scale = s if layout == "full" else 1
    return multiply_accumulates(model, torch.zeros(1, c, h * scale, w * scale, device=next(model.parameters()).device))


def _collage_pixels(shape: tuple[int, ...], s: int, layout: str) -> int:
    """Pixels per channel of one collage, the bottom and right rows left 0 not counted."""
    h, w = shape[-2:]
    return s * h * s * w if layout == "full" else s * (h // s) * s * (w // s)


def evaluate_variant(
    data: train.Data,
    dataset: str,
    s: int,
    cfg: TrainConfig,
    repository: Path,
    layout: str,
    soft_weight: float,
    width: int = 64,
) -> dict:
    """Train one variant and measure it as export_collage does, without exporting it."""
    soft = soft_labels(repository, dataset, data.train.images) if soft_weight else None
    result = train_collage(data, s, cfg, layout=layout, soft=soft, soft_weight=soft_weight, width=width)
    return {
        "dataset": dataset,
        "s": s,
        "layout": layout,
        "soft_weight": soft_weight,
        "width": width,
        "macs": collage_macs(result.model, s, layout),
        "epochs": cfg.epochs,
        "best_epoch": result.best_epoch,
        "cell_accuracy": round(cell_accuracy(result.model, data.test, s, rounds=4, layout=layout), 4),
        "collage_pixels": _collage_pixels(tuple(data.test.images.shape[1:]), s, layout),
        "train_seconds": round(result.seconds, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m export.collage", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    p.add_argument("--s", default="2,3", help=f"comma-separated collage sides, of {collage.SIDES}")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64, help="collages per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--limit", type=int, default=None, help="images per split (smoke tests)")
    p.add_argument("--layout", choices=LAYOUTS, default="resized", help="full: an s·H x s·W collage (evaluate only)")
    p.add_argument("--soft-weight", type=float, default=0.0, help="share of the deployed model's soft labels")
    p.add_argument("--width", type=int, default=64, help="channels of the per-cell CNN's second conv")
    p.add_argument(
        "--evaluate-only", action="store_true", help="train and print the per-cell test accuracy; export nothing"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="data")
    p.add_argument("--out", type=Path, default=Path("model_repository"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    data = train.load_data(args.dataset, args.data, device, limit=args.limit)
    run = RunInfo.current(f"collage-e{args.epochs}", device, argv, module="export.collage")
    began = time.perf_counter()
    cfg = TrainConfig(args.epochs, args.batch_size, lr=args.lr)
    sides = [int(s) for s in args.s.split(",")]
    if args.evaluate_only or args.layout != "resized":
        for s in sides:
            variant = evaluate_variant(data, args.dataset, s, cfg, args.out, args.layout, args.soft_weight, args.width)
            print(json.dumps(variant))
        return
    entries = [export_collage(data, args.dataset, s, cfg, args.out, run, args.soft_weight, args.width) for s in sides]
    update_manifest(args.out, entries)
    log.info("exported %s in %.0f s", ", ".join(e["name"] for e in entries), time.perf_counter() - began)


if __name__ == "__main__":
    main()
