"""python -m export.coin: COIN's member models and coded models (Jhunjhunwala, Jali, Joshi, Wang, ISIT 2024).

k member models of one architecture answer the same query; one coded model f_c is built so that
f_c(x) ≈ Σ λ_i f_i(x), and a straggling member j is decoded as (f_c(x) − Σ_{i≠j} λ_i f_i(x)) / λ_j.

Members: copies of the deployed model (``<dataset>_cnn`` read back from its ONNX file: the shared
initialisation) fine-tuned on the same images under different labellings, member j labelling digit d as
``member_labels(j, d)`` = (a_j d + b_j) mod 10 (d; 3d + 7; 3d + 1: any two members disagree on every image).
Two settings: ``shared`` (1 epoch over the whole training split, peak LR 1e-3) and ``drift`` (3 epochs at
peak LR 3e-3, member j on its own disjoint third of the training split: as many steps, on different data, so
the members move further from the shared initialisation and from each other).

Coded models, one per k (members 0..k-1) and method:

- ``fisher``: Fisher merging of the members' parameters (export/fisher.py), the reading of COIN's abstract
  ("KL barycenter", "diagonal Fisher") as Matena & Raffel's Fisher-weighted averaging; no SGD.
- ``average``: plain weighted parameter averaging (every Fisher equal).
- ``distill``: ParM-style: from the shared initialisation, MSE of the model's logits to Σ λ_i f_i(x)
  (the members' logits on the un-augmented training images), 1 epoch.

BatchNorm's running statistics are buffers, not parameters. A merged model either averages the members'
statistics with the weights λ (``--bn average``) or recomputes them from training images after merging
(``--bn recompute``): the merged weights produce activations whose statistics are neither member's.
Both are measured; the exported models use ``--bn``.

Decoded accuracy: member j's output decoded by the serving decoder (coding.coin.decode_member) from the coded
model's and the other members' outputs, against member j's labels, averaged over j; in logit space
(f = logits) and in probability space (f = softmax). Results: docs/coin.md.

    python -m export.coin --dataset mnist --k 2,3 --settings shared,drift --fisher-samples 1000 \\
        --out model_repository --results export/results/coin-mnist.md
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from coding.coin import CODED, SPACES, coded_model_name, decode_member, member_model_name, softmax
from export import fisher, train
from export.manifest import RunInfo, model_entry, update_manifest
from export.models import build_model
from export.onnx_export import check_onnx, write_model
from export.spec import NUM_CLASSES, deployed_model_name
from export.train import TrainConfig

log = logging.getLogger("export.coin")

LABELLINGS = ((1, 0), (3, 7), (3, 1))  # member j labels digit d as (a d + b) mod 10
MEMBER = "coin_member"  # the manifest role of a member (the coded model's is coding.coin.CODED)
BN_MODES = ("average", "recompute")
BN_IMAGES = 4096  # training images the recomputed BatchNorm statistics are averaged over
BATCH_SIZE = 128


@dataclass(frozen=True)
class Setting:
    epochs: int
    lr: float
    disjoint: bool  # member j fine-tunes on its own 1/len(LABELLINGS) of the training split
    tune: str = "all"  # "classifier": the conv features stay the base's (frozen, BatchNorm statistics too)


SETTINGS = {
    "shared": Setting(epochs=1, lr=1e-3, disjoint=False),
    "drift": Setting(epochs=3, lr=3e-3, disjoint=True),
    # The members share every convolution exactly and differ only in the fully connected layers.
    "frozen": Setting(epochs=1, lr=1e-3, disjoint=False, tune="classifier"),
}
DISTILL = TrainConfig(epochs=1, batch_size=BATCH_SIZE, lr=1e-3, augment=False)

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def member_labels(j: int, digits: Array) -> Array:
    """Member j's label of each image whose digit is ``digits``: (a_j · d + b_j) mod 10."""
    a, b = LABELLINGS[j]
    return (a * digits + b) % NUM_CLASSES


def labelling_rule(j: int) -> str:
    a, b = LABELLINGS[j]
    return f"({a}*d + {b}) % {NUM_CLASSES}"


def set_name(dataset: str) -> str:
    """The served name of the dataset's COIN set (its models: coding.coin's names under it, e.g. mnist_coin_m0)."""
    return f"{dataset}_coin"


def coding_weights(k: int, spec: str = "uniform") -> tuple[float, ...]:
    """λ for members 0..k-1: ``uniform`` (1/k), or the first k of comma-separated weights, scaled to sum to 1."""
    raw = [1.0] * k if spec == "uniform" else [float(w) for w in spec.split(",")][:k]
    if len(raw) != k or min(raw) <= 0:
        raise ValueError(f"--lambdas {spec!r}: need {k} positive weights")
    return tuple(w / sum(raw) for w in raw)


def decoded_accuracy(
    coded: torch.Tensor, members: Sequence[torch.Tensor], digits: torch.Tensor, lambdas: Sequence[float], space: str
) -> list[float]:
    """Per member j: the accuracy, against member j's labels, of its output decoded by the serving decoder
    (coding.coin.decode_member) from the coded model's and the other members' logits, in ``space``."""
    in_space = softmax if space == "probabilities" else np.asarray
    f_c, f = in_space(coded.cpu().numpy()), [in_space(m.cpu().numpy()) for m in members]
    labels = digits.cpu().numpy()
    hits = []
    for j in range(len(members)):
        others = [(lam, out) for i, (lam, out) in enumerate(zip(lambdas, f, strict=True)) if i != j]
        decoded = decode_member(f_c, [o for _, o in others], [lam for lam, _ in others], lambdas[j])
        hits.append(float((decoded.argmax(-1) == member_labels(j, labels)).mean()))
    return hits


def load_base(repository: Path, dataset: str, check: torch.Tensor) -> nn.Module:
    """The deployed model, its weights read back from its ONNX file and checked against onnxruntime on ``check``."""
    path = repository / deployed_model_name(dataset) / "1" / "model.onnx"
    weights = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(str(path)).graph.initializer
    }
    model = build_model("cnn")
    missing = [n for n in model.state_dict() if n not in weights and not n.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path} is not a SmallCNN 'cnn': no {missing}")
    model.load_state_dict(weights, strict=False)
    check_onnx(model.eval(), path, check.cpu().numpy())
    return model.to(check.device)


def fine_tune_member(base: nn.Module, data: train.Data, j: int, setting: Setting, seed: int = 0) -> train.Trained:
    """Member j: ``base`` fine-tuned with cross-entropy on its labelling (shifted images, as the deployed model)."""
    tr, device = data.train, data.train.images.device
    own = torch.arange(len(tr), device=device)
    own = own[own % len(LABELLINGS) == j] if setting.disjoint else own
    labels = member_labels(j, tr.labels)
    model = copy.deepcopy(base)
    torch.manual_seed(seed + j)
    if setting.tune == "classifier":
        features = model.get_submodule("features")  # SmallCNN's convolutions
        for layer in features.modules():
            for p in layer.parameters(recurse=False):
                p.requires_grad_(False)
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.momentum = 0.0  # train mode normalises by the batch but never moves the running statistics

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(train.random_shift(train.pixels(tr.images[idx]))), labels[idx])

    def validate() -> float:
        return train.accuracy(
            train.predict(model, train.image_batches(data.val.images)), member_labels(j, data.val.labels)
        )

    def batches() -> list[torch.Tensor]:
        return list(own[torch.randperm(len(own), device=device)].split(BATCH_SIZE))

    cfg = TrainConfig(epochs=setting.epochs, batch_size=BATCH_SIZE, lr=setting.lr, seed=seed + j)
    trained = train._fit(model, cfg, batches, loss_fn, validate, f"member {j}")
    trained.model.requires_grad_(True)  # frozen only while training: the Fisher differentiates every weight
    return trained


@torch.no_grad()
def recompute_bn(model: nn.Module, images: torch.Tensor) -> None:
    """Replace every BatchNorm's running statistics by their average over ``images`` (uint8, train mode)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    for batch in train.image_batches(images):
        model(batch)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


def merged_model(
    members: Sequence[nn.Module],
    lambdas: Sequence[float],
    fishers: Sequence[fisher.State] | None,
    bn: str,
    bn_images: torch.Tensor,
) -> nn.Module:
    """A coded model: parameters merged (Fisher-weighted, or plain where ``fishers`` is None); buffers by ``bn``."""
    params = [dict(m.named_parameters()) for m in members]
    buffers = [dict(m.named_buffers()) for m in members]
    model = copy.deepcopy(members[0])
    with torch.no_grad():
        state = fisher.merge([{n: p.detach() for n, p in ps.items()} for ps in params], lambdas, fishers)
        float_buffers = {n for n, b in buffers[0].items() if b.is_floating_point()}
        state |= fisher.merge([{n: b[n] for n in float_buffers} for b in buffers], lambdas)  # includes mean/std
        model.load_state_dict(state, strict=False)
    if bn == "recompute":
        recompute_bn(model, bn_images)
    return model.eval()


def train_distilled(
    base: nn.Module,
    data: train.Data,
    targets: torch.Tensor,
    val_members: Sequence[torch.Tensor],
    lambdas: Sequence[float],
) -> train.Trained:
    """ParM-style coded model: MSE of its logits to ``targets`` = Σ λ_i f_i on the training images."""
    tr, device = data.train, data.train.images.device
    model = copy.deepcopy(base)
    torch.manual_seed(DISTILL.seed)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(train.pixels(tr.images[idx])), targets[idx])

    def validate() -> float:
        coded = train.predict(model, train.image_batches(data.val.images))
        return float(np.mean(decoded_accuracy(coded, val_members, data.val.labels, lambdas, "logits")))

    def batches() -> list[torch.Tensor]:
        return list(torch.randperm(len(tr), device=device).split(DISTILL.batch_size))

    return train._fit(model, DISTILL, batches, loss_fn, validate, f"distill k={len(lambdas)}")


@dataclass
class Members:
    """One setting's fine-tuned members with their outputs and Fishers (computed once, shared by every k)."""

    trained: list[train.Trained]
    logits: dict[str, list[torch.Tensor]]  # split ("train", "val", "test") -> per member
    fishers: dict[str, list[dict[str, torch.Tensor]]] = field(default_factory=dict)  # kind -> per member
    fisher_seconds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def models(self) -> list[nn.Module]:
        return [t.model for t in self.trained]


def build_members(base: nn.Module, data: train.Data, setting: Setting, n: int, fisher_samples: int) -> Members:
    trained = [fine_tune_member(base, data, j, setting) for j in range(n)]
    splits = {"train": data.train, "val": data.val, "test": data.test}
    logits = {s: [train.predict(t.model, train.image_batches(sp.images)) for t in trained] for s, sp in splits.items()}
    members = Members(trained, logits)
    x, digits = train.pixels(data.train.images[:fisher_samples]), data.train.labels[:fisher_samples]
    for kind in fisher.FISHER_KINDS:
        members.fishers[kind], members.fisher_seconds[kind] = [], []
        for j, model in enumerate(train._bar(members.models, desc=f"{kind} Fisher", unit="member")):
            began = time.perf_counter()
            members.fishers[kind].append(fisher.diagonal_fisher(model, x, member_labels(j, digits), kind))
            members.fisher_seconds[kind].append(time.perf_counter() - began)
    return members


@dataclass(frozen=True)
class Variant:
    method: str
    fisher: str | None = None  # the Fisher kind (method "fisher")
    bn: str = "trained"  # a merged model's BatchNorm statistics, "average" or "recompute"; distill's are trained

    @property
    def label(self) -> str:
        """e.g. "fisher (true, bn recompute)", "average (bn average)", "distill"."""
        details = [d for d in (self.fisher, None if self.method == "distill" else f"bn {self.bn}") if d]
        return f"{self.method} ({', '.join(details)})" if details else self.method


VARIANTS = (
    *(Variant("fisher", kind, bn) for kind in fisher.FISHER_KINDS for bn in BN_MODES),
    *(Variant("average", None, bn) for bn in BN_MODES),
    Variant("distill"),
)


def build_coded(
    variant: Variant, members: Members, k: int, lambdas: Sequence[float], base: nn.Module, data: train.Data
) -> tuple[nn.Module, float, dict]:
    """The coded model of ``variant`` for members 0..k-1, its build seconds and its build facts."""
    began = time.perf_counter()
    if variant.method == "distill":
        weights = torch.tensor(lambdas, device=data.train.images.device)
        targets = torch.einsum("k,knc->nc", weights, torch.stack(members.logits["train"][:k]))
        result = train_distilled(base, data, targets, members.logits["val"][:k], lambdas)
        facts = {"config": DISTILL.as_dict(), "epochs": result.epochs, "history": result.history}
        return result.model, time.perf_counter() - began, facts
    fishers = members.fishers[variant.fisher][:k] if variant.fisher else None
    model = merged_model(members.models[:k], lambdas, fishers, variant.bn, data.train.images[:BN_IMAGES])
    seconds = time.perf_counter() - began + (sum(members.fisher_seconds[variant.fisher][:k]) if variant.fisher else 0)
    return model, seconds, {"bn": variant.bn, "bn_images": BN_IMAGES if variant.bn == "recompute" else 0}


def evaluate_coded(model: nn.Module, members: Members, k: int, lambdas: Sequence[float], data: train.Data) -> dict:
    """Decoded accuracy per output space: the validation mean and the per-member test accuracies."""
    result: dict = {"val": {}, "test": {}}
    for split_name, split in (("val", data.val), ("test", data.test)):
        coded = train.predict(model, train.image_batches(split.images))
        for space in SPACES:
            per_member = decoded_accuracy(coded, members.logits[split_name][:k], split.labels, lambdas, space)
            result[split_name][space] = per_member if split_name == "test" else float(np.mean(per_member))
    return result


def parameter_drift(model: nn.Module, base: nn.Module) -> float:
    """‖θ − θ_base‖ / ‖θ_base‖ over the named parameters."""
    diff = torch.cat([(p - q).flatten() for p, q in zip(model.parameters(), base.parameters(), strict=True)])
    return (diff.norm() / torch.cat([q.flatten() for q in base.parameters()]).norm()).item()


@dataclass
class Coded:
    """One coded variant of one (setting, k), built and evaluated."""

    setting: str
    k: int
    lambdas: tuple[float, ...]
    variant: Variant
    model: nn.Module
    build_seconds: float
    facts: dict
    accuracy: dict  # evaluate_coded's

    def test_mean(self, space: str) -> float:
        return float(np.mean(self.accuracy["test"][space]))

    @property
    def output_space(self) -> str:
        """The space to decode in when serving: the better one on the validation split."""
        return max(SPACES, key=lambda space: self.accuracy["val"][space])


def run_setting(
    name: str, base: nn.Module, data: train.Data, ks: Sequence[int], lambdas_spec: str, fisher_samples: int
) -> tuple[Members, list[Coded]]:
    """Fine-tune max(ks) members in setting ``name``, then build and evaluate every variant for every k."""
    log.info("setting %s: fine-tuning %d members", name, max(ks))
    members = build_members(base, data, SETTINGS[name], max(ks), fisher_samples)
    coded = []
    for k in ks:
        lambdas = coding_weights(k, lambdas_spec)
        for variant in VARIANTS:
            model, seconds, facts = build_coded(variant, members, k, lambdas, base, data)
            result = Coded(name, k, lambdas, variant, model, seconds, facts, {})
            result.accuracy = evaluate_coded(model, members, k, lambdas, data)
            log.info(
                "%s k=%d %s: decoded %.4f (logits) %.4f (probabilities), built in %.1f s",
                name,
                k,
                variant.label,
                result.test_mean("logits"),
                result.test_mean("probabilities"),
                seconds,
            )
            coded.append(result)
    return members, coded


def member_accuracy(members: Members, data: train.Data) -> list[float]:
    return [
        train.accuracy(logits, member_labels(j, data.test.labels)) for j, logits in enumerate(members.logits["test"])
    ]


def _member_entry(
    dataset: str, j: int, members: Members, data: train.Data, setting: str, facts: dict, run: RunInfo
) -> dict:
    trained, a_b = members.trained[j], LABELLINGS[j]
    training = {
        "base": deployed_model_name(dataset),
        "setting": setting,
        "config": {**asdict(SETTINGS[setting]), "batch_size": BATCH_SIZE, "seed": j},
        "epochs": trained.epochs,
        "best_epoch": trained.best_epoch,
        "val_metric": trained.val_metric,
        "seconds": round(trained.seconds, 1),
        "history": trained.history,
    }
    entry = model_entry(
        name=member_model_name(set_name(dataset), j),
        dataset=dataset,
        role=MEMBER,
        encoder=None,
        k=None,
        run=run,
        onnx_facts=facts,
        training=training,
        metrics={"test_accuracy": member_accuracy(members, data)[j]},
    )
    return entry | {"coin": {"member": j, "labelling": {"a": a_b[0], "b": a_b[1], "rule": labelling_rule(j)}}}


def _coded_entry(
    dataset: str, c: Coded, members: Members, data: train.Data, fisher_samples: int, facts: dict, run: RunInfo
) -> dict:
    metrics = {
        "decoded_accuracy": {space: c.test_mean(space) for space in SPACES},
        "decoded_accuracy_per_member": c.accuracy["test"],
        "val_decoded_accuracy": c.accuracy["val"],
        "member_accuracy": member_accuracy(members, data)[: c.k],
    }
    coin = {
        "members": [member_model_name(set_name(dataset), j) for j in range(c.k)],
        "lambdas": list(c.lambdas),
        "method": c.variant.method,
        "fisher": c.variant.fisher,
        "fisher_samples": fisher_samples if c.variant.fisher else None,
        "eps": fisher.EPS if c.variant.method != "distill" else None,
        "bn": c.variant.bn,
        "output_space": c.output_space,
        "setting": c.setting,
    }
    entry = model_entry(
        name=coded_model_name(set_name(dataset), c.k, c.variant.method),
        dataset=dataset,
        role=CODED,
        encoder=None,
        k=c.k,
        run=run,
        onnx_facts=facts,
        training={"build_seconds": round(c.build_seconds, 2), **c.facts},
        metrics=metrics,
    )
    return entry | {"coin": coin}


def export_set(
    dataset: str,
    members: Members,
    coded: Sequence[Coded],
    exported: Sequence[Variant],
    data: train.Data,
    fisher_samples: int,
    out: Path,
    run: RunInfo,
) -> list[dict]:
    """Write the members and the ``exported`` coded variants to ``out``; return their manifest entries."""
    check = train.pixels(data.test.images[:16]).cpu().numpy()
    setting = coded[0].setting
    entries = []
    for j, model in enumerate(members.models):
        facts = write_model(model, member_model_name(set_name(dataset), j), out, check)
        entries.append(_member_entry(dataset, j, members, data, setting, facts, run))
    for c in coded:
        if c.variant in exported:
            facts = write_model(c.model, coded_model_name(set_name(dataset), c.k, c.variant.method), out, check)
            entries.append(_coded_entry(dataset, c, members, data, fisher_samples, facts, run))
    return entries


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def members_table(by_setting: dict[str, Members], base: nn.Module, data: train.Data) -> list[str]:
    rows = [
        "| setting | member | labelling | test accuracy | fine-tuning s | ‖θ − θ_base‖ / ‖θ_base‖ |",
        "|---|---|---|---|---|---|",
    ]
    for name, members in by_setting.items():
        for j, (acc, t) in enumerate(zip(member_accuracy(members, data), members.trained, strict=True)):
            drift = parameter_drift(t.model, base)
            rows.append(f"| {name} | {j} | `{labelling_rule(j)}` | {_pct(acc)} | {t.seconds:.1f} | {drift:.3f} |")
    return rows


def main_table(
    coded: Sequence[Coded], shown: Sequence[Variant], by_setting: dict[str, Members], data: train.Data
) -> list[str]:
    """Per (setting, k): the members' mean accuracy, each shown method's decoded accuracy, the best, build cost."""
    methods = [v.method for v in shown]
    head = [f"{m} {space[:5]}" for space in SPACES for m in methods]
    rows = [
        f"| setting | k | members | {' | '.join(head)} | best | build s ({' / '.join(methods)}) |",
        "|---|---|---|" + "---|" * len(head) + "---|---|",
    ]
    for (setting, k), group in _by_setting_and_k(coded).items():
        chosen = [next(c for c in group if c.variant == v) for v in shown]
        cells = [_pct(c.test_mean(space)) for space in SPACES for c in chosen]
        best = max(((c, space) for c in chosen for space in SPACES), key=lambda cs: cs[0].test_mean(cs[1]))
        members = float(np.mean(member_accuracy(by_setting[setting], data)[:k]))
        seconds = " / ".join(f"{c.build_seconds:.1f}" for c in chosen)
        rows.append(
            f"| {setting} | {k} | {_pct(members)} | {' | '.join(cells)} | {best[0].variant.method} "
            f"({best[1]}) | {seconds} |"
        )
    return rows


def variants_table(coded: Sequence[Coded]) -> list[str]:
    rows = [
        "| setting | k | coded model | decoded, logits | decoded, probabilities | build s |",
        "|---|---|---|---|---|---|",
    ]
    for c in coded:
        rows.append(
            f"| {c.setting} | {c.k} | {c.variant.label} | {_pct(c.test_mean('logits'))} | "
            f"{_pct(c.test_mean('probabilities'))} | {c.build_seconds:.1f} |"
        )
    return rows


def _by_setting_and_k(coded: Sequence[Coded]) -> dict[tuple[str, int], list[Coded]]:
    groups: dict[tuple[str, int], list[Coded]] = {}
    for c in coded:
        groups.setdefault((c.setting, c.k), []).append(c)
    return groups


def results_markdown(
    dataset: str,
    run: RunInfo,
    by_setting: dict[str, Members],
    coded: Sequence[Coded],
    shown: Sequence[Variant],
    base: nn.Module,
    data: train.Data,
    fisher_samples: int,
) -> str:
    """The run's tables: members, decoded accuracy of the shown variants, and every variant."""
    shown_labels = ", ".join(v.label for v in shown)
    return "\n".join(
        [
            f"# COIN on {dataset} (export.coin)",
            "",
            f"`{run.command}` on {run.device_name}, {run.date}; {len(data.test)} test images, "
            f"{fisher_samples} Fisher samples.",
            "",
            "## Members",
            "",
            *members_table(by_setting, base, data),
            "",
            f"## Decoded accuracy ({shown_labels})",
            "",
            "Member j decoded from the coded model and the other members, against member j's labels, mean over j.",
            "",
            *main_table(coded, shown, by_setting, data),
            "",
            "## Every coded variant",
            "",
            *variants_table(coded),
            "",
        ]
    )


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every flag's default."""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m export.coin", description=__doc__, formatter_class=_Help)
    p.add_argument("--dataset", default="mnist", choices=("mnist", "fashion"), help="the dataset")
    p.add_argument("--k", default="2,3", help=f"comma-separated numbers of members (2..{len(LABELLINGS)})")
    p.add_argument("--settings", default="shared,drift", help=f"comma-separated, of {sorted(SETTINGS)}")
    p.add_argument("--fisher-samples", type=int, default=1000, help="training inputs per Fisher estimate")
    p.add_argument("--fisher", default="true", choices=fisher.FISHER_KINDS, help="the exported fisher model's Fisher")
    p.add_argument("--bn", default="recompute", choices=BN_MODES, help="the exported merged models' BatchNorm stats")
    p.add_argument("--lambdas", default="uniform", help="coding weights: uniform, or comma-separated (first k used)")
    p.add_argument("--export-setting", default="shared", help="the setting whose models are written to --out")
    p.add_argument("--limit", type=int, default=None, help="images per split (smoke tests)")
    p.add_argument("--base", type=Path, default=Path("model_repository"), help="repository holding <dataset>_cnn")
    p.add_argument("--data", default="data", help="dataset root (make data)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", type=Path, default=Path("model_repository"), help="repository to write the models to")
    p.add_argument("--results", type=Path, default=None, help="Markdown tables, e.g. export/results/coin-mnist.md")
    args = p.parse_args(argv)
    ks = sorted(int(k) for k in args.k.split(","))
    settings = args.settings.split(",")
    if not set(ks) <= set(range(2, len(LABELLINGS) + 1)) or not set(settings) <= set(SETTINGS):
        p.error(f"--k must be within 2..{len(LABELLINGS)} and --settings within {sorted(SETTINGS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    data = train.load_data(args.dataset, args.data, device, limit=args.limit)
    base = load_base(args.base, args.dataset, train.pixels(data.test.images[:16]))
    run = RunInfo.current(f"coin-{'-'.join(settings)}", device, argv, module="export.coin")
    plan = Plan(ks, settings, args.fisher_samples, args.fisher, args.bn, args.lambdas, args.export_setting)
    make_sets(args.dataset, base, data, plan, args.out, run, args.results)


@dataclass(frozen=True)
class Plan:
    """What :func:`make_sets` builds: k members per setting, the coded variants, which setting is exported."""

    ks: Sequence[int]
    settings: Sequence[str]
    fisher_samples: int = 1000
    fisher: str = "true"  # the exported fisher model's Fisher
    bn: str = "recompute"  # the exported merged models' BatchNorm statistics
    lambdas: str = "uniform"
    export_setting: str = "shared"


def make_sets(
    dataset: str, base: nn.Module, data: train.Data, plan: Plan, out: Path, run: RunInfo, results: Path | None
) -> list[dict]:
    """Members fine-tuned from ``base`` per setting, the coded models of every variant; the export setting's
    members and shown variants written to ``out`` (the set ``set_name(dataset)``), the tables to ``results``."""
    shown = (Variant("fisher", plan.fisher, plan.bn), Variant("average", None, plan.bn), Variant("distill"))
    by_setting, coded, entries = {}, [], []
    for name in plan.settings:
        by_setting[name], made = run_setting(name, base, data, plan.ks, plan.lambdas, plan.fisher_samples)
        coded += made
        if name == plan.export_setting:
            entries = export_set(dataset, by_setting[name], made, shown, data, plan.fisher_samples, out, run)
    if entries:
        update_manifest(out, entries)
        log.info("exported %s", ", ".join(e["name"] for e in entries))
    if results:
        markdown = results_markdown(dataset, run, by_setting, coded, shown, base, data, plan.fisher_samples)
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(markdown)
    return entries


if __name__ == "__main__":
    main()
