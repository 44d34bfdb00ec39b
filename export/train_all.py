"""Train, evaluate and export every model Triton serves: per dataset, the deployed CNN and the ParM parity models
(add k=2,3,4; concat k=2,4), then write ``<out>/manifest.json`` and ``export/results/<profile>.json``.

Profiles: ``tiny`` (a smoke test, seconds), ``cpu`` (what is committed without a GPU: both datasets in about
25 minutes on a 2-core CPU), ``full`` (the GPU recipe: long schedules bounded by ``--time-budget-s``, which is
shared out evenly over the models in turn; also runs on CPU with a small budget).

    python -m export.train_all --profile cpu --datasets mnist,fashion --device auto --out model_repository
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coding.spec import DATASETS, PARM_K, deployed_model_name, parity_model_name
from export import train
from export.manifest import RunInfo, model_entry, update_manifest
from export.models import ARCHS
from export.onnx_export import write_model
from export.train import TrainConfig

log = logging.getLogger("export.train_all")

CODES = tuple((encoder, k) for encoder, ks in PARM_K.items() for k in ks)


@dataclass(frozen=True)
class Profile:
    deployed: TrainConfig
    parity: TrainConfig  # epochs as for k=2; scaled by k/2 so every parity model gets the same number of steps
    time_budget_s: float | None = None  # training seconds for all models of the run, shared out evenly
    test_rounds: int = 4  # random partitions of the test split into coding groups
    limit: int | None = None  # use only the first `limit` images of each split (smoke tests)

    def parity_for(self, k: int) -> TrainConfig:
        return dataclasses.replace(self.parity, epochs=max(1, self.parity.epochs * k // 2))


PROFILES = {
    "tiny": Profile(
        deployed=TrainConfig(epochs=2, batch_size=64),
        parity=TrainConfig(epochs=2, batch_size=32, decode_ce_weight=2.0, warm_start=True),
        test_rounds=1,
        limit=1000,
    ),
    "cpu": Profile(
        deployed=TrainConfig(epochs=3, batch_size=128),
        parity=TrainConfig(epochs=6, batch_size=64, decode_ce_weight=2.0, warm_start=True),
        time_budget_s=1200.0,  # a cap for a busy machine; on an idle 2-core CPU the epochs bind first
    ),
    # As run on an H200 for the committed models (`--time-budget-s 390`: 397 s for both datasets).
    "full": Profile(
        deployed=TrainConfig(epochs=60, batch_size=256),
        parity=TrainConfig(epochs=400, batch_size=256, decode_ce_weight=0.5, warm_start=True),
        time_budget_s=360.0,
    ),
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def _training_facts(result: train.Trained, cfg: TrainConfig) -> dict:
    return {
        "config": cfg.as_dict(),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "val_metric": result.val_metric,
        "seconds": round(result.seconds, 1),
    }


def _check_batch(split: train.Split, encoder: str | None = None, k: int = 1) -> np.ndarray:
    """A few real inputs (or parity queries) for the onnxruntime-vs-torch check."""
    idx = torch.arange(16 * k, device=split.images.device)
    x = train.parity_inputs(split.images, idx.view(-1, k), encoder) if encoder else train.pixels(split.images[idx])
    return x.cpu().numpy()


class _Run:
    """One ``train_all`` invocation: trains, exports and records models one after another."""

    def __init__(self, args: argparse.Namespace, profile: Profile, device: torch.device, run: RunInfo) -> None:
        self.args, self.profile, self.device, self.run = args, profile, device, run
        budget = args.time_budget_s if args.time_budget_s is not None else profile.time_budget_s
        self.budget_left = budget or None
        self.models_left = len(args.datasets) * (1 + len(args.codes))
        self.min_share = 0.1 * (budget or 0.0) / self.models_left  # what a model gets once others overspent
        self.entries: list[dict] = []

    def _cfg(self, cfg: TrainConfig, parity: bool) -> TrainConfig:
        """``cfg`` with the CLI overrides and an even share of the training time left (unused time goes on)."""
        if self.args.arch:
            cfg = dataclasses.replace(cfg, arch=self.args.arch)
        if parity and self.args.decode_ce_weight is not None:
            cfg = dataclasses.replace(cfg, decode_ce_weight=self.args.decode_ce_weight)
        if self.budget_left is None:
            return cfg
        share = max(self.budget_left / self.models_left, self.min_share)
        return dataclasses.replace(cfg, time_budget_s=share)

    def _record(self, result: train.Trained, cfg: TrainConfig, facts: dict, metrics: dict, **ids) -> None:
        entry = model_entry(
            **ids, run=self.run, onnx_facts=facts, training=_training_facts(result, cfg), metrics=metrics
        )
        update_manifest(self.args.out, [entry])
        self.models_left -= 1
        if self.budget_left is not None:
            self.budget_left -= result.seconds
        self.entries.append({**entry, "history": result.history})
        log.info("%s: %s (%.0f s, %d epochs)", ids["name"], metrics, result.seconds, result.epochs)

    def dataset(self, dataset: str) -> None:
        data = train.load_data(dataset, self.args.data, self.device, limit=self.profile.limit)
        cfg = self._cfg(self.profile.deployed, parity=False)
        deployed = train.train_deployed(data, cfg, desc=f"{dataset} deployed")
        name = deployed_model_name(dataset)
        facts = write_model(deployed.model, name, self.args.out, _check_batch(data.test))
        metrics = train.evaluate_deployed(deployed.model, data.test)
        self._record(deployed, cfg, facts, metrics, name=name, dataset=dataset, role="deployed", encoder=None, k=None)
        teacher = train.Teacher.of(deployed.model, data)
        for encoder, k in self.args.codes:
            self.parity(data, teacher, deployed.model, dataset, encoder, k)

    def parity(
        self, data: train.Data, teacher: train.Teacher, deployed: torch.nn.Module, dataset: str, encoder: str, k: int
    ) -> None:
        cfg = self._cfg(self.profile.parity_for(k), parity=True)
        result = train.train_parity(data, teacher, encoder, k, cfg, deployed, f"{dataset} parity {encoder} k={k}")
        name = parity_model_name(dataset, encoder, k)
        facts = write_model(result.model, name, self.args.out, _check_batch(data.test, encoder, k))
        metrics = train.evaluate_parity(result.model, teacher, encoder, k, data.test, self.profile.test_rounds)
        self._record(result, cfg, facts, metrics, name=name, dataset=dataset, role="parity", encoder=encoder, k=k)


def _write_results(path: Path, run: RunInfo, entries: list[dict], seconds: float) -> None:
    """``export/results/<profile>.json``: this run's models (with their validation curves), merged by name."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    models = {**old.get("models", {}), **{e["name"]: e for e in entries}}
    doc = {**dataclasses.asdict(run), "last_run_seconds": round(seconds, 1), "models": dict(sorted(models.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _parse_codes(text: str) -> list[tuple[str, int]]:
    """``add2,concat4``. The served set is spec.PARM_K; the addition encoder also takes any k >= 2 (e.g. add8,
    to compare ParM with ApproxIFER at the same K)."""
    codes = [(c.rstrip("0123456789"), int(c[len(c.rstrip("0123456789")) :] or 0)) for c in text.split(",") if c]
    unknown = [c for c in codes if c not in CODES and not (c[0] == "add" and c[1] >= 2)]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown codes {unknown}; known: {','.join(f'{e}{k}' for e, k in CODES)} and addK for any K >= 2"
        )
    return codes


def _parse_datasets(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    if not names or set(names) - set(DATASETS):
        raise argparse.ArgumentTypeError(f"datasets must be a comma-separated subset of {','.join(DATASETS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m export.train_all",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu", help="training recipe (default: %(default)s)")
    p.add_argument("--datasets", type=_parse_datasets, default=list(DATASETS), help="comma-separated (default: all)")
    p.add_argument(
        "--codes",
        type=_parse_codes,
        default=list(CODES),
        help="parity models to train, e.g. add2,concat4 (default: all of spec.PARM_K)",
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--out", type=Path, default=Path("model_repository"), help="Triton model repository to write")
    p.add_argument("--data", default="data", help="dataset root written by `make data` (default: %(default)s)")
    p.add_argument(
        "--time-budget-s",
        type=float,
        help="training seconds for the whole run, shared out evenly over "
        "the models in turn (default: the profile's: cpu 1200, full 360)",
    )
    p.add_argument("--arch", choices=sorted(ARCHS), help="override the profile's architecture (deployed and parity)")
    p.add_argument(
        "--decode-ce-weight",
        type=float,
        help="override the parity models' helping term (cross-entropy of the decoded outputs; 0 = pure ParM MSE)",
    )
    p.add_argument("--results", type=Path, help="results JSON (default: export/results/<profile>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device)
    run = RunInfo.current(args.profile, device, argv)
    runner = _Run(args, PROFILES[args.profile], device, run)
    log.info(
        "profile %s on %s (%s); training budget %s s for %d models",
        args.profile,
        device,
        run.device_name,
        runner.budget_left,
        runner.models_left,
    )
    start = time.monotonic()
    for dataset in args.datasets:
        runner.dataset(dataset)
        _write_results(
            args.results or Path("export/results") / f"{args.profile}.json",
            run,
            runner.entries,
            time.monotonic() - start,
        )
    log.info("done in %.0f s; manifest %s", time.monotonic() - start, args.out / "manifest.json")


if __name__ == "__main__":
    main()
