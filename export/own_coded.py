"""``python -m export parity | collage | coin``: the coded models of an imported model, trained on the user's data.

Each builds on what ``import`` recorded (input shape, classes, preprocessing, data) and on the training code of
the built-in models: export.train's epoch loop (tqdm progress bars, best epoch on the validation split), ParM's
loss, the collage model (export.collage.CollageNet) and COIN's merge (export.coin / export.fisher). The
deployed model's outputs, ParM's and the distilled coded model's targets, are read off the *served* ONNX file
with onnxruntime, so a parity model learns what Triton answers, whether the user brought PyTorch or ONNX.

- parity: ParM (Kosaian et al., 2019). Architecture: the deployed model's factory (a fresh copy) by default, or
  any ``--parity-model`` factory; an ONNX import names one. Objective: MSE of the parity output to the sum of
  the deployed model's k outputs; ``--decode-ce-weight`` adds the decoded outputs' cross-entropy, ``--warm-start``
  starts from the deployed weights.
- collage: Collage-CNN (Narra et al., 2019), s x s cells, one shared CNN per cell, trained on true labels.
- coin: COIN's coded model from k member checkpoints (one factory): Fisher-weighted, plain average, or
  distilled (MSE to Σ λ_i f_i, starting from the average). The members are exported too. Or (``relabel``)
  export.coin's experiment on the imported model: members fine-tuned from it under relabellings, every variant
  measured, the set ``<prefix>_coin`` exported (how ``make models`` makes ``mnist_coin``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from coding import collage as collage_code
from coding import parm
from coding.coin import coded_model_name, member_model_name
from coding.scheme import name_prefix
from export import coin as coin_experiment
from export import fisher, train, user_model
from export.coin import merged_model
from export.collage import cell_accuracy, collages, train_collage
from export.manifest import RunInfo, model_entry, update_manifest
from export.onnx_export import write_model
from export.own_import import OnnxModel, Served, torch_data, user_fields
from export.train import TrainConfig, Trained
from export.user_data import UserData


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device here")
    return torch.device(name)


def teacher(served: OnnxModel, data: UserData, device: torch.device) -> train.Teacher:
    """The served model's logits on every split (ParM's targets)."""
    val = data.val if len(data.val) else data.train
    return train.Teacher(*(torch.from_numpy(served(s.x)).to(device) for s in (data.train, val, data.test)))


def _run(served: Served, device: torch.device, data_path: str | None) -> tuple[UserData, train.Data]:
    data = served.load_data(data_path)
    return data, torch_data(data, device)


# ---- ParM ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityArgs:
    name: str
    repository: Path
    encoder: str
    k: int
    cfg: TrainConfig
    device: str = "auto"
    parity_model: str | None = None  # a factory; None: the deployed model's
    checkpoint: Path | None = None  # the deployed model's, for --warm-start (default: the imported one)
    data: str | None = None
    rounds: int = 4  # random partitions of the test split into coding groups, for the metrics


def parity(args: ParityArgs, run: RunInfo) -> dict:
    served, device = Served.of(args.repository, args.name), device_of(args.device)
    factory = args.parity_model or served.factory
    if factory is None:
        raise user_model.ModelError(f"{args.name} was imported from ONNX: name the parity model's --parity-model")
    problem = parm.ParmScheme(args.encoder, args.k).rejects(served.shape)
    if problem:
        raise user_model.ModelError(f"no parity model for these inputs: {problem}")
    user, data = _run(served, device, args.data)
    targets = teacher(served.model(), user, device)
    deployed = _warm_start_from(served, args.checkpoint) if args.cfg.warm_start else None
    torch.manual_seed(args.cfg.seed)
    model = user_model.load_factory(factory)()
    name = parm.parity_model_name(name_prefix(args.name), args.encoder, args.k)
    name += "_recipe_parm" if args.cfg.recipe == "parm" else ""
    result = train.train_parity(data, targets, args.encoder, args.k, args.cfg, deployed, model=model)
    metrics = train.evaluate_parity(result.model, targets, args.encoder, args.k, data.test, args.rounds)
    check = train.parity_inputs(data.test.images, torch.arange(4 * args.k, device=device).view(4, -1), args.encoder)
    entry = _export(result, name, args.repository, check, (served.classes,), run, served, user)
    entry |= {"role": "parity", "encoder": args.encoder, "k": args.k, "metrics": metrics}
    entry["training"]["config"] = {**args.cfg.as_dict(), "arch": factory}
    update_manifest(args.repository, [entry])
    return entry


def _warm_start_from(served: Served, checkpoint: Path | None) -> nn.Module:
    """The deployed model in PyTorch: its factory with ``checkpoint``, or the one it was imported with."""
    checkpoint = checkpoint or served.checkpoint
    if served.factory is None or checkpoint is None:
        raise user_model.ModelError(
            f"--warm-start needs {served.name}'s PyTorch factory and weights; it was imported "
            + ("from ONNX" if served.factory is None else "without --checkpoint: pass --checkpoint")
        )
    return user_model.load_torch(served.factory, checkpoint)


def _export(
    result: Trained,
    name: str,
    repository: Path,
    check: torch.Tensor,
    output_dims: tuple[int, ...],
    run: RunInfo,
    served: Served,
    data: UserData,
) -> dict:
    facts = write_model(result.model, name, repository, check.cpu().numpy(), output_dims=output_dims)
    training = {
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "val_metric": result.val_metric,
        "seconds": round(result.seconds, 1),
        "history": result.history,
        "config": {},
    }
    entry = model_entry(
        name=name,
        dataset=served.data.path if served.data else "",
        role="",
        encoder=None,
        k=None,
        run=run,
        onnx_facts=facts,
        training=training,
        metrics={},
        deployed_model=served.name,
    )
    entry["user"] = user_fields(served.shape, served.classes, served.preprocessing, data)
    return entry


# ---- Collage ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollageArgs:
    name: str
    repository: Path
    s: int
    cfg: TrainConfig
    width: int = 64
    device: str = "auto"
    data: str | None = None


def collage(args: CollageArgs, run: RunInfo) -> dict:
    served, device = Served.of(args.repository, args.name), device_of(args.device)
    problem = collage_code.CollageScheme(args.s).rejects(served.shape)
    if problem:
        raise user_model.ModelError(problem)
    user, data = _run(served, device, args.data)
    result = train_collage(data, args.s, args.cfg, width=args.width, classes=served.classes)
    name = collage_code.collage_model_name(name_prefix(args.name), args.s)
    check = collages(data.test.images, torch.arange(4 * args.s**2, device=device).view(4, -1) % len(data.test), args.s)
    entry = _export(result, name, args.repository, check, (args.s**2, served.classes), run, served, user)
    metrics = {"cell_accuracy": cell_accuracy(result.model, data.test, args.s, rounds=4), "extra_load": 1 / args.s**2}
    entry |= {"role": "collage", "encoder": "tile", "k": args.s**2, "metrics": metrics}
    entry["training"]["config"] = {**args.cfg.as_dict(), "arch": "collage_cnn", "width": args.width}
    update_manifest(args.repository, [entry])
    return entry


# ---- COIN ------------------------------------------------------------------------------------------------


COIN_METHODS = ("fisher", "average", "distill")


def coded_model(
    members: Sequence[nn.Module],
    method: str,
    data: train.Data,
    fisher_samples: int,
    distill_cfg: TrainConfig,
    bn: str = "average",
) -> Trained:
    """COIN's coded model of ``members`` with λ = 1/k: Fisher-merged, averaged, or distilled from the average."""
    lambdas = [1.0 / len(members)] * len(members)
    x = data.train.images[:fisher_samples]
    fishers = [fisher.diagonal_fisher(m, x) for m in members] if method == "fisher" else None
    model = merged_model(members, lambdas, fishers, bn, data.train.images)
    if method != "distill":
        return Trained(model, 0, 0, float("nan"), 0.0, [])
    return distill(model, members, lambdas, data, distill_cfg)


def distill(
    start: nn.Module, members: Sequence[nn.Module], lambdas: Sequence[float], data: train.Data, cfg: TrainConfig
) -> Trained:
    """MSE of the coded model's logits to Σ λ_i f_i; best epoch by the decoded members' agreement (val)."""
    model = copy.deepcopy(start)
    tr = data.train
    outs = [train.predict(m, train.image_batches(tr.images)) for m in members]
    target = sum(lam * o for lam, o in zip(lambdas, outs, strict=True))
    val_outs = [train.predict(m, train.image_batches(data.val.images)) for m in members]

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(tr.images[idx]), target[idx])  # type: ignore[index]

    def validate() -> float:
        coded = train.predict(model, train.image_batches(data.val.images))
        return float(np.mean(decoded_agreement(coded, val_outs, lambdas)))

    def batches() -> list[torch.Tensor]:
        return list(torch.randperm(len(tr), device=tr.images.device).split(cfg.batch_size))

    return train._fit(model, cfg, batches, loss_fn, validate, f"distill k={len(members)}")


def decoded_agreement(coded: torch.Tensor, members: Sequence[torch.Tensor], lambdas: Sequence[float]) -> list[float]:
    """Per member j: how often its output decoded from the coded and the other members' logits has its argmax."""
    hits = []
    for j, own in enumerate(members):
        rest = sum((lam * m for i, (lam, m) in enumerate(zip(lambdas, members, strict=True)) if i != j))
        decoded = (coded - rest) / lambdas[j]
        hits.append((decoded.argmax(-1) == own.argmax(-1)).float().mean().item())
    return hits


@dataclass(frozen=True)
class CoinArgs:
    name: str  # the set's served name: members are NAME_m0.., the coded model NAME_k{k}_{method}
    repository: Path
    like: str  # an imported model whose input shape, preprocessing and data the members share
    factory: str
    checkpoints: tuple[Path, ...]
    method: str
    cfg: TrainConfig
    fisher_samples: int = 512
    bn: str = "average"
    device: str = "auto"
    data: str | None = None


def coin(args: CoinArgs, run: RunInfo) -> list[dict]:
    """Export the k members and their coded model; return their manifest entries."""
    if len(args.checkpoints) < 2:
        raise user_model.ModelError(f"COIN codes k >= 2 member models; got {len(args.checkpoints)} checkpoint")
    if args.method not in COIN_METHODS:
        raise user_model.ModelError(f"--method must be one of {COIN_METHODS}, got {args.method!r}")
    served, device = Served.of(args.repository, args.like), device_of(args.device)
    user, data = _run(served, device, args.data)
    members = [user_model.load_torch(args.factory, c).to(device) for c in args.checkpoints]
    entries = []
    check = data.test.images[:8]
    for i, member in enumerate(members):
        name = member_model_name(args.name, i)
        entry = _export(
            Trained(member, 0, 0, float("nan"), 0.0, []),
            name,
            args.repository,
            check,
            (served.classes,),
            run,
            served,
            user,
        )
        accuracy = train.accuracy(train.predict(member, train.image_batches(data.test.images)), data.test.labels)
        entry |= {"role": "coin_member", "k": len(members), "metrics": {"test_accuracy": accuracy}}
        entry["onnx"]["checkpoint"] = str(args.checkpoints[i])
        entry["user"]["factory"] = args.factory
        entries.append(entry)
    result = coded_model(members, args.method, data, args.fisher_samples, args.cfg, args.bn)
    name = coded_model_name(args.name, len(members), args.method)
    entry = _export(result, name, args.repository, check, (served.classes,), run, served, user)
    test_outs = [train.predict(m, train.image_batches(data.test.images)) for m in members]
    coded_out = train.predict(result.model, train.image_batches(data.test.images))
    agreement = decoded_agreement(coded_out, test_outs, [1.0 / len(members)] * len(members))
    metrics = {"decoded_agrees_with_member": agreement}
    entry |= {"role": "coin_coded", "encoder": args.method, "k": len(members), "metrics": metrics}
    entry["members"] = [e["name"] for e in entries]
    for e in (*entries, entry):
        e["coin_set"] = args.name
    entry["training"]["config"] = {"method": args.method, "bn": args.bn, "fisher_samples": args.fisher_samples}
    entries.append(entry)
    update_manifest(args.repository, entries)
    return entries


@dataclass(frozen=True)
class RelabelArgs:
    like: str  # the imported model the members are fine-tuned from (its factory and weights)
    repository: Path
    plan: coin_experiment.Plan
    results: Path | None = None
    device: str = "auto"
    data: str | None = None


def relabel_set_name(like: str) -> str:
    return coin_experiment.set_name(name_prefix(like))


def coin_relabelled(args: RelabelArgs, run: RunInfo) -> list[dict]:
    """export.coin's members and coded models, built on the imported model ``args.like``."""
    served, device = Served.of(args.repository, args.like), device_of(args.device)
    if served.classes != coin_experiment.NUM_CLASSES:
        raise user_model.ModelError(
            f"the relabelled members permute {coin_experiment.NUM_CLASSES} classes; {served.name} answers "
            f"{served.classes}: bring member --checkpoints instead"
        )
    _, data = _run(served, device, args.data)
    base = _warm_start_from(served, None).to(device)
    return coin_experiment.make_sets(name_prefix(args.like), base, data, args.plan, args.repository, run, args.results)
