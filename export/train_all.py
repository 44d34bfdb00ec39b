"""Train, evaluate and export every model Triton serves: per dataset, the deployed CNN and the ParM parity models
(add k=2,3,4; concat k=2,4), then write ``<out>/manifest.json`` and ``export/results/<profile>.json``.

Profiles: ``tiny`` (a smoke test, seconds), ``cpu`` (what is committed without a GPU: both datasets in about
25 minutes on a 2-core CPU), ``full`` (the GPU recipe: long schedules bounded by ``--time-budget-s``, which is
shared out evenly over the models in turn; also runs on CPU with a small budget), ``gpu15`` (the stronger models' GPU
recipe, run by export/gpu_train_evaluate.sh: a ResNet deployed model, mixup variants, ResNet parity models
for the committed CNNs and for the ResNet; every model under its own name, none replaces a committed deployed model),
``tiny15`` (gpu15's variants at the tiny profile's size, a smoke test), ``cpu15`` (the same on a 2-core CPU, as run:
the Fashion-MNIST CNN with mixup beside its standard twin, and CNN parity models for the committed fashion_cnn),
``cpu15b`` (its follow-up, as run: the CNN with label smoothing 0.1, and the CNN trained for 10 epochs),
``cpu15c`` (ParM at the ApproxIFER K = 8, 10, 12 on a 2-core CPU, as run: wide CNN parity models for the committed
CNNs of both datasets, helping term 2.0), ``cpu15d`` (the 10-epoch deployed CNN's neighbours, as run: 8 and 12
epochs, and the 10-epoch recipe with seeds 1, 2 and 3), ``recipes_cpu`` (ParM's own parity recipe against ours, on a
2-core CPU: parity models for the committed CNNs, each recipe with the same CPU seconds per model; with ``--recipe
ours,parm``).

``--recipe parm`` trains the parity models with ParM's published recipe (``train.parm_recipe``: MSE alone, from
scratch, Adam at a constant rate, ParM's batch sizes) instead of the profile's, under the profile's time budget and
names ending ``_recipe_parm``; ``--recipe ours,parm`` trains each code under both, one after the other.

    python -m export.train_all --profile cpu --datasets mnist,fashion --device auto --out model_repository
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from coding.parm import CONCAT_GRIDS, parity_model_name
from export import train
from export.manifest import RunInfo, model_entry, update_manifest
from export.models import ARCHS
from export.onnx_export import write_model
from export.spec import DATASETS, PARM_K, deployed_model_name
from export.train import TrainConfig

log = logging.getLogger("export.train_all")

CODES = tuple((encoder, k) for encoder, ks in PARM_K.items() for k in ks)


@dataclass(frozen=True)
class Variant:
    """One deployed model of a profile and the parity models made for it.

    ``name`` "cnn" keeps spec's model names (``fashion_cnn``, ``fashion_parm_add_k2``); any other name makes its own
    (``fashion_resnet``, ``fashion_resnet_parm_add_k2``), so a variant never replaces a committed model.
    """

    name: str = "cnn"
    deployed: TrainConfig | None = None  # None: the profile's
    parity: TrainConfig | None = None  # None: the profile's
    codes: tuple[tuple[str, int], ...] | None = None  # None: the run's --codes; () = the deployed model alone
    datasets: tuple[str, ...] | None = None  # None: every dataset of the run
    # Train no deployed model: read the committed one (spec's name, arch "cnn") from --base-repository, so the
    # parity models pair with the model the stack serves.
    committed: bool = False

    def __post_init__(self) -> None:
        if self.committed and self.name != "cnn":
            raise ValueError("a committed deployed model is spec's CNN: name it 'cnn'")

    def deployed_name(self, dataset: str) -> str:
        return deployed_model_name(dataset) if self.name == "cnn" else f"{dataset}_{self.name}"

    def parity_name(self, dataset: str, encoder: str, k: int) -> str:
        return (
            parity_model_name(dataset, encoder, k)
            if self.name == "cnn"
            else f"{dataset}_{self.name}_parm_{encoder}_k{k}"
        )


def _fashion_deployed(name: str, deployed: TrainConfig | None = None) -> Variant:
    """A deployed Fashion-MNIST model alone (no parity models): the ApproxIFER comparison's variants."""
    return Variant(name, deployed, codes=(), datasets=("fashion",))


@dataclass(frozen=True)
class Profile:
    deployed: TrainConfig
    parity: TrainConfig  # epochs as for k=2; scaled by k/2 so every parity model gets the same number of steps
    time_budget_s: float | None = None  # training seconds for all models of the run, shared out evenly
    test_rounds: int = 4  # random partitions of the test split into coding groups
    limit: int | None = None  # use only the first `limit` images of each split (smoke tests)
    variants: tuple[Variant, ...] = (Variant(),)
    # The collage models' recipe (`python -m export collage --profile`; `make models` used export.collage's defaults)
    collage: TrainConfig = TrainConfig(epochs=6, batch_size=64)

    def parity_for(self, k: int, variant: Variant | None = None) -> TrainConfig:
        cfg = (variant.parity if variant else None) or self.parity
        return dataclasses.replace(cfg, epochs=max(1, cfg.epochs * k // 2))


def _gpu15(deployed: TrainConfig, parity: TrainConfig, **profile) -> Profile:
    """The variants around a deployed and a parity recipe (the GPU's or, for the smoke test, the tiny's).

    Fashion-MNIST: the mixup models beside the standard ones (ApproxIFER rows), a ResNet deployed model with ResNet
    parity models warm-started from it (k = 3, 4 and the ApproxIFER K = 8, 10, 12), and ResNet parity models for
    the committed fashion_cnn (k = 3, 4); MNIST: ResNet parity models for the committed mnist_cnn (K = 8, 10, 12).
    Parity models get the helping term at weight 2.0 (a CPU run: 82.7% against the committed 77.9%, concat k=4).
    """
    resnet = dataclasses.replace(deployed, arch="resnet", hflip=True)
    gap, large = (("add", 3), ("add", 4), ("concat", 4)), (("add", 8), ("add", 10), ("add", 12))
    fashion = ("fashion",)
    return Profile(
        deployed=deployed,
        parity=dataclasses.replace(parity, arch="resnet", warm_start=False, decode_ce_weight=2.0),
        variants=(
            # mixup weight Beta(1, 1): uniform blends, the kind a Berrut query is (mostly its two nearest images)
            _fashion_deployed("cnn_mixup", dataclasses.replace(deployed, mixup_alpha=1.0)),
            _fashion_deployed("resnet_mixup", dataclasses.replace(resnet, mixup_alpha=1.0)),
            Variant(
                "resnet",
                resnet,
                dataclasses.replace(parity, arch="resnet", warm_start=True, decode_ce_weight=2.0),
                codes=gap + large,
                datasets=fashion,
            ),
            Variant(committed=True, codes=gap, datasets=fashion),
            Variant(committed=True, codes=large, datasets=("mnist",)),
        ),
        **profile,
    )


def _cpu15(deployed: TrainConfig, parity: TrainConfig, **profile) -> Profile:
    """On a 2-core CPU: ``fashion_cnn_mixup`` (mixup, alpha 1) beside ``fashion_cnn_std``, its standard
    twin on the same CPU recipe and budget (ApproxIFER rows), and CNN parity models warm-started from the committed
    ``fashion_cnn`` with the helping term at weight 2.0 (k = 3, 4; under spec's names, so a winner can replace a
    served model). As run: two invocations side by side, one torch thread each (``--variants cnn_mixup,cnn_std``
    and ``--variants cnn``), so each shares the profile's budget over its own models (1650 s and 1100 s a model;
    what one model overruns, the next ones lose).
    """
    fashion = ("fashion",)
    return Profile(
        deployed=deployed,
        parity=parity,
        variants=(
            _fashion_deployed("cnn_mixup", dataclasses.replace(deployed, mixup_alpha=1.0)),
            _fashion_deployed("cnn_std"),
            Variant(committed=True, codes=(("add", 3), ("add", 4), ("concat", 4)), datasets=fashion),
        ),
        **profile,
    )


def _cpu15b(deployed: TrainConfig, **profile) -> Profile:
    """On a 2-core CPU, the follow-up to ``cpu15`` (as run): does a less over-confident deployed CNN
    decode better under ApproxIFER? Deployed Fashion-MNIST models only, the committed CNN's architecture and
    recipe: ``fashion_cnn_ls`` (label smoothing 0.1) and ``fashion_cnn_short`` (a fixed 10 epochs, the cosine
    over those). As run: two invocations side by side, one torch thread each (``--variants cnn_ls`` and
    ``--variants cnn_short``), so each model has the whole budget (1300 s; one invocation of both would share it,
    650 s each); the short model's 10 epochs end before its budget.
    """
    return Profile(
        deployed=deployed,
        parity=deployed,  # unused: no variant has parity models
        variants=(
            _fashion_deployed("cnn_ls", dataclasses.replace(deployed, label_smoothing=0.1)),
            _fashion_deployed("cnn_short", dataclasses.replace(deployed, epochs=10)),
        ),
        **profile,
    )


def _cpu15c(parity: TrainConfig, **profile) -> Profile:
    """ParM at the ApproxIFER authors' K = 8, 10, 12 (one parity per K queries, addition encoder) on a 2-core CPU,
    as run: parity models for the committed ``mnist_cnn`` and ``fashion_cnn`` (spec's names,
    ``{mnist,fashion}_parm_add_k{8,10,12}``; none is served, so none replaces a model), with the ``cnn_wide``
    architecture (twice the CNN's widths: more capacity, since the GPU-trained CNN parity models of
    ``export/results/parm_large_k.json`` stopped improving after ~8 s) trained from scratch (a warm start needs
    the deployed model's shapes) and the helping term at weight 2.0. As run: one invocation, one torch thread,
    ``nice -n 19``, into a scratch repository (``--out /tmp/repo15c``), the profile's 4,320 s shared over the six
    models in turn (720 s each; what one overruns, the next ones lose)::

        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 19 python -m export.train_all --profile cpu15c --device cpu \
          --out /tmp/repo15c --results export/results/cpu15c.json

    4,397 s wall, 693-750 s a model, SIGSTOP pauses included; every row fell below the GPU-trained CNN parity
    models (docs/approxifer_results.md), so none is committed.
    """
    return Profile(
        deployed=parity,  # unused: the deployed models are the committed ones
        parity=parity,
        variants=(Variant(committed=True, codes=(("add", 8), ("add", 10), ("add", 12))),),
        **profile,
    )


def _recipes_cpu(parity: TrainConfig, **profile) -> Profile:
    """ParM's own recipe against ours on a 2-core CPU, as run: parity models for the committed ``mnist_cnn`` and
    ``fashion_cnn`` (add and concat, k = 2, 3, 4), ``parity`` being the committed models' recipe (the ``full``
    profile's: AdamW, cosine, helping term 0.5, warm start) and ``--recipe ours,parm`` training every code under
    both in turn. Every model gets the same fixed budget of this process's CPU seconds (``clock="cpu"``, one torch
    thread), so a job sharing the machine takes wall time from a model but not training. As run: one invocation a
    dataset, side by side (see docs/parm_accuracy.md)."""
    return Profile(
        deployed=parity,  # unused: the deployed models are the committed ones
        parity=parity,
        variants=(Variant(committed=True),),
        **profile,
    )


def _cpu15d(deployed: TrainConfig, **profile) -> Profile:
    """On a 2-core CPU, after ``cpu15b`` (as run): is ``fashion_cnn_short``'s 10 epochs the best length, and
    how much of its ApproxIFER row is its seed? Deployed Fashion-MNIST CNNs only, the committed architecture and
    recipe with a fixed number of epochs (the cosine over them): ``fashion_cnn_e8`` (8), ``fashion_cnn_e12`` (12)
    and ``fashion_cnn_short_s1`` (10, seed 1: another initialisation, batch order and validation split), then
    ``fashion_cnn_short_s2`` and ``_s3`` (seeds 2 and 3). As run: two invocations side by side, one torch thread
    each (``--variants cnn_e12`` and ``--variants cnn_e8,cnn_short_s1``), then two more (``--variants cnn_short_s2``
    and ``--variants cnn_short_s3``); the epochs end before the budget.
    """
    return Profile(
        deployed=deployed,
        parity=deployed,  # unused: no variant has parity models
        variants=(
            _fashion_deployed("cnn_e8", dataclasses.replace(deployed, epochs=8)),
            _fashion_deployed("cnn_e12", dataclasses.replace(deployed, epochs=12)),
            _fashion_deployed("cnn_short_s1", dataclasses.replace(deployed, epochs=10, seed=1)),
            # two more seeds of the same recipe, run after: is seed 1's row the recipe or the draw?
            _fashion_deployed("cnn_short_s2", dataclasses.replace(deployed, epochs=10, seed=2)),
            _fashion_deployed("cnn_short_s3", dataclasses.replace(deployed, epochs=10, seed=3)),
        ),
        **profile,
    )


PROFILES = {
    "tiny": Profile(
        deployed=TrainConfig(epochs=2, batch_size=64),
        parity=TrainConfig(epochs=2, batch_size=32, decode_ce_weight=2.0, warm_start=True),
        test_rounds=1,
        limit=1000,
        collage=TrainConfig(epochs=1, batch_size=64),
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
    # 15 models in 400 s of training on an H200, 27 s each (the `full` run: 33 s per model, 7 s of other work for
    # 12); with start-up, exports and the ApproxIFER evaluation beside it (CPU), export/gpu_train_evaluate.sh ends
    # inside one 560 s command.
    "gpu15": _gpu15(
        TrainConfig(epochs=60, batch_size=256),
        TrainConfig(epochs=400, batch_size=256),
        time_budget_s=400.0,
    ),
    # The committed fashion_cnn's recipe (batch 256, 60 / 400·k/2 epochs as upper bounds), bounded by time.
    "cpu15": _cpu15(
        TrainConfig(epochs=60, batch_size=256),
        TrainConfig(epochs=400, batch_size=256, decode_ce_weight=2.0, warm_start=True),
        time_budget_s=3300.0,
    ),
    # cpu15's deployed recipe (batch 256, 60 epochs as an upper bound), 1300 s a model when run side by side.
    "cpu15b": _cpu15b(TrainConfig(epochs=60, batch_size=256), time_budget_s=1300.0),
    # The GPU rows' batch and epochs (256, 400·k/2 as an upper bound: the time binds), cnn_wide, helping term 2.0.
    "cpu15c": _cpu15c(
        TrainConfig(epochs=400, batch_size=256, arch="cnn_wide", decode_ce_weight=2.0),
        time_budget_s=4320.0,
    ),
    # cpu15b's short recipe around its 10 epochs; the budget is a cap only (the epochs bind first).
    "cpu15d": _cpu15d(TrainConfig(epochs=10, batch_size=256), time_budget_s=1300.0),
    # The committed parity recipe (full's) and ParM's, 100 CPU seconds a model (not shared: no profile budget),
    # epochs as upper bounds only: 24 models in 40 CPU minutes.
    "recipes_cpu": _recipes_cpu(
        TrainConfig(
            epochs=400, batch_size=256, decode_ce_weight=0.5, warm_start=True, time_budget_s=100.0, clock="cpu"
        ),
    ),
    "tiny15": _gpu15(
        TrainConfig(epochs=1, batch_size=64),
        TrainConfig(epochs=1, batch_size=32),
        test_rounds=1,
        limit=1000,
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
        self.variants = [v for v in profile.variants if args.variants is None or v.name in args.variants]
        budget = args.time_budget_s if args.time_budget_s is not None else profile.time_budget_s
        self.budget_left = budget or None
        self.models_left = sum(
            (not v.committed) + len(self.codes(v)) * len(args.recipe)
            for d in args.datasets
            for v in self.variants
            if self.has(v, d)
        )
        self.min_share = 0.1 * (budget or 0.0) / max(self.models_left, 1)  # what a model gets once others overspent
        self.entries: list[dict] = []
        self.results = args.results or Path("export/results") / f"{args.profile}.json"
        self.start = time.monotonic()

    def codes(self, variant: Variant) -> list[tuple[str, int]]:
        return list(self.args.codes if variant.codes is None else variant.codes)

    @staticmethod
    def has(variant: Variant, dataset: str) -> bool:
        return variant.datasets is None or dataset in variant.datasets

    def _cfg(self, cfg: TrainConfig, parity: bool) -> TrainConfig:
        """``cfg`` with the CLI overrides and an even share of the training time left (unused time goes on)."""
        if self.args.arch:
            cfg = dataclasses.replace(cfg, arch=self.args.arch)
        if parity and self.args.decode_ce_weight is not None:
            cfg = dataclasses.replace(cfg, decode_ce_weight=self.args.decode_ce_weight)
        if self.budget_left is None:
            return cfg
        share = max(self.budget_left / max(self.models_left, 1), self.min_share)
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
        # after every model, so that a run stopped part-way still leaves what it finished
        _write_results(self.results, self.run, self.entries, time.monotonic() - self.start)

    def dataset(self, dataset: str) -> None:
        variants = [v for v in self.variants if self.has(v, dataset)]
        if not variants:
            return
        data = train.load_data(dataset, self.args.data, self.device, limit=self.profile.limit)
        for variant in variants:
            deployed = self.committed(data, dataset) if variant.committed else self.deployed(data, dataset, variant)
            teacher = train.Teacher.of(deployed, data)
            for encoder, k in self.codes(variant):
                for recipe in self.args.recipe:
                    self.parity(data, teacher, deployed, dataset, variant, encoder, k, recipe)

    def deployed(self, data: train.Data, dataset: str, variant: Variant) -> torch.nn.Module:
        cfg = self._cfg(variant.deployed or self.profile.deployed, parity=False)
        name = variant.deployed_name(dataset)
        deployed = train.train_deployed(data, cfg, desc=name)
        facts = write_model(deployed.model, name, self.args.out, _check_batch(data.test))
        metrics = train.evaluate_deployed(deployed.model, data.test)
        self._record(deployed, cfg, facts, metrics, name=name, dataset=dataset, role="deployed", encoder=None, k=None)
        return deployed.model

    def committed(self, data: train.Data, dataset: str) -> torch.nn.Module:
        """The committed deployed model (its weights read back from its ONNX file, checked against onnxruntime),
        copied into the output repository so that it serves beside its new parity models."""
        from export.coin import load_base  # reads a SmallCNN "cnn" back from ONNX

        name = deployed_model_name(dataset)
        model = load_base(self.args.base_repository, dataset, train.pixels(data.test.images[:16]))
        model = model.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        if (self.args.base_repository / name).resolve() != (self.args.out / name).resolve():
            shutil.copytree(self.args.base_repository / name, self.args.out / name, dirs_exist_ok=True)
        log.info(
            "%s: committed, from %s: %s", name, self.args.base_repository, train.evaluate_deployed(model, data.test)
        )
        return model

    def parity(
        self,
        data: train.Data,
        teacher: train.Teacher,
        deployed: torch.nn.Module,
        dataset: str,
        variant: Variant,
        encoder: str,
        k: int,
        recipe: str = "ours",
    ) -> None:
        cfg = self._cfg(self.profile.parity_for(k, variant), parity=True)
        name = variant.parity_name(dataset, encoder, k)
        if recipe == "parm":  # ParM's settings, under the budget, architecture and clock ours got
            cfg = train.parm_recipe(k, time_budget_s=cfg.time_budget_s, arch=cfg.arch, seed=cfg.seed, clock=cfg.clock)
            name += "_recipe_parm"
        result = train.train_parity(data, teacher, encoder, k, cfg, deployed, name)
        facts = write_model(result.model, name, self.args.out, _check_batch(data.test, encoder, k))
        metrics = train.evaluate_parity(result.model, teacher, encoder, k, data.test, self.profile.test_rounds)
        ids = {"name": name, "dataset": dataset, "role": "parity", "encoder": encoder, "k": k}
        deployed_name = variant.deployed_name(dataset) if variant.name != "cnn" else None
        self._record(result, cfg, facts, metrics, **ids, deployed_model=deployed_name)


def _write_results(path: Path, run: RunInfo, entries: list[dict], seconds: float) -> None:
    """``export/results/<profile>.json``: this run's models (with their validation curves), merged by name."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    models = {**old.get("models", {}), **{e["name"]: e for e in entries}}
    doc = {**dataclasses.asdict(run), "last_run_seconds": round(seconds, 1), "models": dict(sorted(models.items()))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _parse_codes(text: str) -> list[tuple[str, int]]:
    """``add2,concat4``. The served set is spec.PARM_K; the addition encoder also takes any k >= 2 (e.g. add8,
    to compare ParM with ApproxIFER at the same K), the concatenation encoder k = 3 (a 2x2 grid, one tile empty)."""
    codes = [(c.rstrip("0123456789"), int(c[len(c.rstrip("0123456789")) :] or 0)) for c in text.split(",") if c]
    unknown = [
        c
        for c in codes
        if c not in CODES and not (c[0] == "add" and c[1] >= 2) and not (c[0] == "concat" and c[1] in CONCAT_GRIDS)
    ]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown codes {unknown}; known: {','.join(f'{e}{k}' for e, k in CODES)}, addK for any K >= 2 and "
            f"concatK for K in {','.join(map(str, CONCAT_GRIDS))}"
        )
    return codes


def _parse_datasets(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    if not names or set(names) - set(DATASETS):
        raise argparse.ArgumentTypeError(f"datasets must be a comma-separated subset of {','.join(DATASETS)}")
    return names


def _parse_recipes(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    if not names or set(names) - set(train.RECIPES) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"recipes must be distinct names among {','.join(train.RECIPES)}")
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
    p.add_argument(
        "--recipe",
        type=_parse_recipes,
        default=["ours"],
        help="parity recipes, comma-separated: ours (the profile's) and/or parm (ParM's published one; models named "
        "..._recipe_parm); several: each code under each in turn (default: ours)",
    )
    p.add_argument("--results", type=Path, help="results JSON (default: export/results/<profile>.json)")
    p.add_argument(
        "--variants",
        type=lambda text: [n for n in text.split(",") if n],
        help="comma-separated names of the profile's variants to train (default: all; gpu15: cnn_mixup,"
        "resnet_mixup,resnet,cnn; cpu15: cnn_mixup,cnn_std,cnn; cpu15b: cnn_ls,cnn_short; cpu15d: cnn_e8,cnn_e12,"
        "cnn_short_s1,cnn_short_s2,cnn_short_s3; the others have one, cnn)",
    )
    p.add_argument(
        "--base-repository",
        type=Path,
        default=Path("model_repository"),
        help="where a variant built on the committed deployed model reads it (default: %(default)s)",
    )
    args = p.parse_args(argv)
    known = {v.name for v in PROFILES[args.profile].variants}
    if args.variants is not None and not set(args.variants) <= known:
        p.error(f"--variants: profile {args.profile} has {','.join(sorted(known))}")
    return args


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
    for dataset in args.datasets:
        runner.dataset(dataset)
    log.info("done in %.0f s; manifest %s", time.monotonic() - runner.start, args.out / "manifest.json")


if __name__ == "__main__":
    main()
