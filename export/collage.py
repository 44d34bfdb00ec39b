"""python -m export.collage: train, evaluate and export the Collage-CNN collage models (one per dataset and s).

The collage model classifies every cell of an s x s collage (coding.collage.tile) in one pass: the cells
are cut out of the collage by reshapes (export-clean: no data-dependent control flow) and one shared
small CNN classifies each, so the output is ``(B, s², classes)``, row j the answer for cell j. It trains on
collages of random groups of training images (each image shifted by up to 2 px first, as the deployed
model's augmentation) against the true labels, keeping the epoch with the best per-cell validation
accuracy; it is exported to ONNX with its Triton config (output dims ``[s², classes]``), checked against
torch, and recorded in the manifest with its per-cell test accuracy next to the deployed model's.

    python -m export.collage --dataset mnist --s 2,3 --epochs 6 --out model_repository
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from coding import collage
from coding.spec import IMAGE_SHAPE, NUM_CLASSES, deployed_model_name
from export import train
from export.manifest import RunInfo, model_entry, update_manifest
from export.onnx_export import write_model
from export.train import TrainConfig

log = logging.getLogger("export.collage")


class CollageNet(nn.Module):
    """``(B, 1, H, W)`` collages -> ``(B, s², classes)`` logits, one shared CNN per cell (t = H // s pixels)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, s: int, mean: float = 0.0, std: float = 1.0, width: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.s, self.t = s, collage.tile_side(IMAGE_SHAPE[1], s)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        c = IMAGE_SHAPE[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, width // 2, 3, padding=1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, width, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        side = self.t // 2
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, t = self.s, self.t
        body = ((x - self.mean) / self.std)[:, :, : s * t, : s * t]
        cells = body.reshape(-1, IMAGE_SHAPE[0], s, t, s, t).permute(0, 2, 4, 1, 3, 5)
        logits = self.classifier(self.features(cells.reshape(-1, IMAGE_SHAPE[0], t, t)))
        return logits.reshape(-1, s * s, NUM_CLASSES)


def collages(images: torch.Tensor, groups: torch.Tensor, s: int, shift: bool = False) -> torch.Tensor:
    """Collages ``(G, 1, H, W)`` of coding groups ``(G, s²)`` of indices into uint8 ``images``."""
    x = train.pixels(images[groups])  # (G, s², 1, H, W)
    if shift:
        x = train.random_shift(x.reshape(-1, *IMAGE_SHAPE)).reshape(x.shape)
    return collage.tile(x, s)


def cell_accuracy(model: nn.Module, split: train.Split, s: int, rounds: int = 2, seed: int = 0) -> float:
    """Per-cell accuracy over ``rounds`` random partitions of ``split`` into collages of s² images."""
    gen = torch.Generator().manual_seed(seed)
    hits = total = 0
    for _ in range(rounds):
        groups = train.random_groups(len(split), s * s, split.images.device, gen)
        logits = train.predict(model, (collages(split.images, g, s) for g in groups.split(1024)))
        hits += int((logits.argmax(-1) == split.labels[groups]).sum().item())
        total += groups.numel()
    return hits / total


def train_collage(data: train.Data, s: int, cfg: TrainConfig) -> train.Trained:
    """Cross-entropy of every cell against its true label; best epoch by per-cell validation accuracy."""
    tr, device = data.train, data.train.images.device
    sample = train.pixels(tr.images[:4096])
    torch.manual_seed(cfg.seed)
    model = CollageNet(s, mean=sample.mean().item(), std=sample.std().item()).to(device)

    def loss_fn(groups: torch.Tensor) -> torch.Tensor:
        logits = model(collages(tr.images, groups, s, shift=cfg.augment))
        return F.cross_entropy(logits.reshape(-1, NUM_CLASSES), tr.labels[groups].reshape(-1))

    def batches() -> list[torch.Tensor]:
        return list(train.random_groups(len(tr), s * s, device).split(cfg.batch_size))

    return train._fit(
        model, cfg, batches, loss_fn, lambda: cell_accuracy(model, data.val, s, rounds=1), f"collage s={s}"
    )


def _deployed_accuracy(repository: Path, dataset: str) -> float | None:
    manifest = repository / "manifest.json"
    if not manifest.is_file():
        return None
    entry = json.loads(manifest.read_text())["models"].get(deployed_model_name(dataset), {})
    return entry.get("metrics", {}).get("test_accuracy")


def export_collage(data: train.Data, dataset: str, s: int, cfg: TrainConfig, out: Path, run: RunInfo) -> dict:
    result = train_collage(data, s, cfg)
    name = collage.collage_model_name(dataset, s)
    check = collages(data.test.images, torch.arange(8 * s * s, device=data.test.images.device).view(8, -1), s)
    facts = write_model(result.model, name, out, check.cpu().numpy(), output_dims=(s * s, NUM_CLASSES))
    metrics = {
        "cell_accuracy": cell_accuracy(result.model, data.test, s, rounds=4),
        "deployed_test_accuracy": _deployed_accuracy(out, dataset),
        "extra_load": 1 / (s * s),
    }
    log.info(
        "%s: per-cell test accuracy %.4f (deployed %s)",
        name,
        metrics["cell_accuracy"],
        metrics["deployed_test_accuracy"],
    )
    training = {
        "config": cfg.as_dict(),
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m export.collage", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion"))
    p.add_argument("--s", default="2,3", help="comma-separated collage sides (2, 3)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=64, help="collages per step")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--limit", type=int, default=None, help="images per split (smoke tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data", default="data")
    p.add_argument("--out", type=Path, default=Path("model_repository"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    data = train.load_data(args.dataset, args.data, device, limit=args.limit)
    run = RunInfo.current(f"collage-e{args.epochs}", device, argv, module="export.collage")
    began = time.perf_counter()
    entries = [
        export_collage(data, args.dataset, int(s), TrainConfig(args.epochs, args.batch_size, lr=args.lr), args.out, run)
        for s in args.s.split(",")
    ]
    update_manifest(args.out, entries)
    log.info("exported %s in %.0f s", ", ".join(e["name"] for e in entries), time.perf_counter() - began)


if __name__ == "__main__":
    main()
