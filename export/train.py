"""Training and evaluation of the deployed model and of ParM parity models (Kosaian et al., SOSP 2019).

Every tensor of a dataset lives on the training device (uint8, 47 MB for 60k images), so a GPU run never waits
on a loader. The parity objective is ParM's: for random coding groups of k training images, the parity model's
output on ``coding.parm.ENCODERS[encoder](group)`` should equal ``coding.parm.parity_target`` of the deployed
model's logits (precomputed once on the un-augmented images); loss = MSE. Optionally a helping term adds the
cross-entropy of ``coding.parm.subtraction_decode``'s output, for every erasure position, against the deployed
model's prediction. The coding functions are the serving ones, so training and serving cannot drift apart.

The deployed model's options (``TrainConfig``): +-2 px shifts, left-right flips, mixup, label smoothing; the parity
models': the helping term's weight and (distillation) temperature, their own architecture, a warm start.

The learning rate follows one cosine over ``max(epochs done, seconds spent / time budget)``, so a run is bounded
by its epochs or by its time budget, whichever comes first, and still anneals; the epoch kept is the best one on
the 5,000 held-out training images (accuracy for the deployed model, degraded-mode accuracy for a parity model).

A parity model's ``recipe``: "ours" (the above: AdamW, warm-up and cosine, any helping term or warm start, best
epoch by degraded accuracy) or "parm", ParM's own (``parm_recipe``; Kosaian et al.'s ``train/``): MSE alone, from
scratch with their initialisation (``util.init_weights``), Adam at a constant learning rate, best epoch by
validation reconstruction top-1 (their ``best.pth``).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from coding import parm
from export import datasets
from export.models import build_model

VAL_SIZE = 5000
_PREDICT_BATCH = 2048
RECIPES = ("ours", "parm")  # a parity model's training recipe (TrainConfig.recipe)
CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}  # what a time budget counts (TrainConfig.clock)


@dataclass(frozen=True)
class TrainConfig:
    """One model's training run. ``batch_size`` counts images (deployed) or coding groups (parity)."""

    epochs: int
    batch_size: int
    lr: float = 2e-3
    weight_decay: float = 1e-4
    time_budget_s: float | None = None
    warmup: float = 0.03  # fraction of the run
    augment: bool = True  # random +-2 px shifts (deployed model only; parity targets stay un-augmented)
    decode_ce_weight: float = 0.0  # the helping term (parity only); 0 = pure ParM MSE
    warm_start: bool = False  # parity only: start from the deployed model's weights instead of from scratch
    arch: str = "cnn"  # a parity model's may differ from the deployed model's (e.g. wider), then without warm_start
    seed: int = 0
    # Deployed model only. Random left-right flips: Fashion-MNIST's garments are mirror-symmetric, digits are not.
    hflip: bool = False
    # Deployed model only. Mixup (Zhang et al., ICLR 2018): train on lam*x1 + (1-lam)*x2 against the same blend of
    # the two labels' cross-entropies, lam ~ Beta(alpha, alpha), one lam per batch; 0 = off. A model made linear
    # between inputs should suit ApproxIFER, whose coded queries are Berrut blends of the group's images.
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0  # deployed model only: softened one-hot targets (F.cross_entropy's)
    # Parity only. 0: the helping term's target is the deployed model's label (hard); T > 0: its softmax at
    # temperature T (distillation, Hinton et al. 2015, scaled by T^2), which also carries how sure it was.
    distill_temperature: float = 0.0
    # Parity only: "ours" or "parm" (see the module docstring; ``parm_recipe`` builds ParM's settings).
    recipe: str = "ours"
    # What ``time_budget_s`` counts: "wall" seconds, or this process's "cpu" seconds (every thread's; run one torch
    # thread), which other jobs on the machine do not eat into, so models trained at different times get the same.
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.clock not in CLOCKS:
            raise ValueError(f"clock must be one of {tuple(CLOCKS)}, got {self.clock!r}")
        if self.recipe == "parm" and (self.decode_ce_weight or self.warm_start or self.distill_temperature):
            raise ValueError("the parm recipe is MSE alone from scratch: no helping term, no warm start")

    def as_dict(self) -> dict:
        return asdict(self)


def parm_recipe(
    k: int, epochs: int = 500, time_budget_s: float | None = None, arch: str = "cnn", seed: int = 0, clock: str = "wall"
) -> TrainConfig:
    """ParM's published parity-model recipe for MNIST and Fashion-MNIST (``train/config/*.json``): Adam, lr 1e-3,
    weight decay 1e-5, no schedule, 64 coding groups a batch at k = 2 and 32 at k >= 3, 500 epochs."""
    return TrainConfig(
        epochs=epochs,
        batch_size=64 if k == 2 else 32,
        lr=1e-3,
        weight_decay=1e-5,
        time_budget_s=time_budget_s,
        warmup=0.0,
        arch=arch,
        seed=seed,
        recipe="parm",
        clock=clock,
    )


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 (N, 1, 28, 28) on the training device
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Data:
    train: Split
    val: Split
    test: Split


@dataclass
class Trained:
    model: nn.Module
    epochs: int  # epochs run (the last one possibly cut short by the time budget)
    best_epoch: int
    val_metric: float
    seconds: float
    history: list[dict]


def load_data(dataset: str, root: str, device: torch.device, seed: int = 0, limit: int | None = None) -> Data:
    """Train (minus ``VAL_SIZE`` held-out images, chosen by ``seed``), val and test splits on ``device``.

    ``limit`` keeps only the first ``limit`` images of each split (smoke tests).
    """

    def split(images: np.ndarray, labels: np.ndarray) -> Split:
        images, labels = images[:limit], labels[:limit]
        return Split(torch.tensor(images).unsqueeze(1).to(device), torch.tensor(labels).to(device))

    x, y = datasets.load(dataset, "train", root)
    order = np.random.default_rng(seed).permutation(len(y))
    val, train = order[:VAL_SIZE], order[VAL_SIZE:]
    return Data(split(x[train], y[train]), split(x[val], y[val]), split(*datasets.load(dataset, "test", root)))


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]: the serving input convention (export.spec.INPUT_DTYPE). Float images
    are a user's model's inputs already (export.user_data preprocessed them) and pass through unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def random_shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Shift each image of ``(B, C, H, W)`` by its own random integer offset in [-max_shift, max_shift]."""
    b, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), device=x.device)
    rows = (torch.arange(h, device=x.device) + dy)[:, :, None]
    cols = (torch.arange(w, device=x.device) + dx)[:, None, :]
    return padded[torch.arange(b, device=x.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror each image of ``(B, C, H, W)`` left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(-1), x)


@torch.no_grad()
def predict(model: nn.Module, inputs: Iterable[torch.Tensor]) -> torch.Tensor:
    """float32 logits of ``model`` (eval mode, full precision) on each input batch, concatenated."""
    model.eval()
    return torch.cat([model(x).float() for x in inputs])


def image_batches(images: torch.Tensor) -> Iterator[torch.Tensor]:
    return (pixels(chunk) for chunk in images.split(_PREDICT_BATCH))


def parity_inputs(images: torch.Tensor, groups: torch.Tensor, encoder: str) -> torch.Tensor:
    """Parity queries ``(G, C, H, W)`` for coding groups ``(G, k)`` of indices into ``images`` ``(N, C, H, W)``."""
    return parm.ENCODERS[encoder](pixels(images[groups]))


def random_groups(n: int, k: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh random partition of ``range(n)`` into ``n // k`` coding groups of k (the remainder sits out)."""
    perm = torch.randperm(n, generator=generator, device="cpu" if generator is not None else device)
    return perm[: n // k * k].view(-1, k).to(device)


def decode_every_erasure(parity_out: torch.Tensor, slot_logits: torch.Tensor) -> torch.Tensor:
    """Decoded outputs ``(G, k, C)``: entry j rebuilds slot j from the parity output and the other k-1 outputs."""
    k = slot_logits.shape[-2]
    present = ~torch.eye(k, dtype=torch.bool, device=slot_logits.device)  # row j: slot j erased
    return parm.subtraction_decode(parity_out[:, None, :], slot_logits[:, None, :, :], present)


def _lr_factor(progress: float, warmup: float) -> float:
    return min(1.0, progress / warmup if warmup else 1.0) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay), or for the parm recipe Adam (weight decay as an L2 term in the gradient)."""
    adam = torch.optim.Adam if cfg.recipe == "parm" else torch.optim.AdamW
    return adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(cfg: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` (0..1) through the run: constant for the parm recipe, else warm-up + cosine."""
    return cfg.lr if cfg.recipe == "parm" else cfg.lr * _lr_factor(progress, cfg.warmup)


def _bar(iterable: Iterable, inner: bool = False, **kwargs) -> tqdm:
    # In a log file (no TTY): the epoch bar at most every 10 s, and no step bars.
    tty = sys.stderr.isatty()
    return tqdm(iterable, mininterval=0.1 if tty else 10.0, disable=inner and not tty, dynamic_ncols=True, **kwargs)


def _fit(
    model: nn.Module,
    cfg: TrainConfig,
    epoch_batches: Callable[[], list[torch.Tensor]],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    validate: Callable[[], float],
    desc: str,
) -> Trained:
    """Run epochs of ``loss_fn`` over ``epoch_batches()`` (index tensors) under one cosine LR schedule."""
    opt = make_optimizer(model, cfg)
    total_steps = cfg.epochs * len(epoch_batches())
    budget = math.inf if cfg.time_budget_s is None else max(cfg.time_budget_s, 1e-9)
    clock = CLOCKS[cfg.clock]
    start, step, history = time.monotonic(), 0, []
    clock_start = clock()
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    epochs = _bar(range(1, cfg.epochs + 1), desc=desc, unit="epoch")
    for epoch in epochs:
        model.train()
        losses = []
        for idx in _bar(epoch_batches(), inner=True, desc=f"epoch {epoch}", unit="step", leave=False):
            progress = max(step / total_steps, (clock() - clock_start) / budget)
            if progress >= 1.0:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, progress)
            loss = loss_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            step += 1
        metric = validate()
        train_loss = torch.stack(losses).mean().item() if losses else float("nan")
        seconds = round(time.monotonic() - start, 2)
        history.append({"epoch": epoch, "seconds": seconds, "train_loss": train_loss, "val": metric, "steps": step})
        if cfg.clock != "wall":
            history[-1]["budget_seconds"] = round(clock() - clock_start, 2)
        epochs.set_postfix(loss=f"{train_loss:.4f}", val=f"{metric:.4f}", best=f"{max(best[0], metric):.4f}")
        if metric > best[0]:
            best = (metric, epoch, copy.deepcopy(model.state_dict()))
        if step / total_steps >= 1.0 or (clock() - clock_start) >= budget:
            break
    model.load_state_dict(best[2])
    model.eval()
    return Trained(model, len(history), best[1], best[0], time.monotonic() - start, history)


def _new_model(cfg: TrainConfig, sample: torch.Tensor) -> nn.Module:
    """A fresh model of ``cfg.arch`` (seeded by ``cfg.seed``) for inputs shaped like ``sample``."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.arch, shape=tuple(sample.shape[1:]))


def _prepared(model: nn.Module, sample: torch.Tensor, device: torch.device) -> nn.Module:
    """``model`` on ``device`` (channels-last), its input normalization fitted on ``sample`` where it has one
    (``fit_normalization``, as export.models' models: constants exported inside the model)."""
    fit = getattr(model, "fit_normalization", None)
    if callable(fit):
        fit(sample)
    return model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


def train_deployed(data: Data, cfg: TrainConfig, desc: str = "deployed", model: nn.Module | None = None) -> Trained:
    """The deployed model: cross-entropy on (optionally shifted, flipped, mixed) training images; best epoch by
    val accuracy on the clean held-out images. ``model``: a fresh one built by the caller after
    ``torch.manual_seed(cfg.seed)`` (a user's factory); default ``cfg.arch``'s."""
    train, device = data.train, data.train.images.device
    sample = pixels(train.images)
    model = _prepared(model if model is not None else _new_model(cfg, sample), sample, device)
    mix = torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha) if cfg.mixup_alpha else None

    def ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=cfg.label_smoothing)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        x, y = pixels(train.images[idx]), train.labels[idx]
        x = random_shift(x) if cfg.augment else x
        x = random_hflip(x) if cfg.hflip else x
        if mix is None:
            return ce(model(x.contiguous(memory_format=torch.channels_last)), y)
        lam, partner = mix.sample().item(), torch.randperm(len(idx), device=device)
        out = model((lam * x + (1.0 - lam) * x[partner]).contiguous(memory_format=torch.channels_last))
        return lam * ce(out, y) + (1.0 - lam) * ce(out, y[partner])

    def validate() -> float:
        return accuracy(predict(model, image_batches(data.val.images)), data.val.labels)

    def batches() -> list[torch.Tensor]:
        return list(torch.randperm(len(train), device=device).split(cfg.batch_size))

    return _fit(model, cfg, batches, loss_fn, validate, desc)


def parity_loss(
    parity_out: torch.Tensor, slot_logits: torch.Tensor, decode_ce_weight: float = 0.0, temperature: float = 0.0
) -> torch.Tensor:
    """ParM's MSE to the summed deployed logits, plus (optional) CE of every decoded slot vs the deployed argmax,
    or with ``temperature`` > 0 vs the deployed softmax at that temperature (times T^2, so its gradients keep
    their scale as T changes)."""
    loss = F.mse_loss(parity_out, parm.parity_target(slot_logits))
    if decode_ce_weight:
        decoded = decode_every_erasure(parity_out, slot_logits).flatten(0, 1)
        if temperature:
            soft = F.softmax(slot_logits.flatten(0, 1) / temperature, dim=-1)
            helping = F.cross_entropy(decoded / temperature, soft) * temperature**2
        else:
            helping = F.cross_entropy(decoded, slot_logits.argmax(-1).flatten())
        loss = loss + decode_ce_weight * helping
    return loss


def parity_objective(cfg: TrainConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss(parity_out, slot_logits)`` of a parity-model recipe: ParM's MSE alone for "parm", else ``parity_loss``
    with the config's helping term."""
    if cfg.recipe == "parm":
        return lambda parity_out, slot_logits: F.mse_loss(parity_out, parm.parity_target(slot_logits))
    return lambda parity_out, slot_logits: parity_loss(
        parity_out, slot_logits, cfg.decode_ce_weight, cfg.distill_temperature
    )


@torch.no_grad()
def parm_init(model: nn.Module) -> None:
    """ParM's ``util.init_weights``: conv weights Xavier-uniform (ReLU gain), linear weights N(0, 0.01), BatchNorm
    scale 1, every bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d):
            nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain("relu"))
        elif isinstance(m, nn.Linear):
            m.weight.normal_(0.0, 0.01)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.weight.fill_(1.0)
        else:
            continue
        if m.bias is not None:
            m.bias.zero_()


@dataclass(frozen=True)
class Teacher:
    """The deployed model's logits on every split, computed once per dataset (un-augmented): ParM's targets."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    @classmethod
    def of(cls, deployed: nn.Module, data: Data) -> Teacher:
        return cls(*(predict(deployed, image_batches(s.images)) for s in (data.train, data.val, data.test)))


def train_parity(
    data: Data,
    teacher: Teacher,
    encoder: str,
    k: int,
    cfg: TrainConfig,
    deployed: nn.Module | None = None,
    desc: str = "",
    model: nn.Module | None = None,
) -> Trained:
    """A ParM parity model for (encoder, k); best epoch by degraded-mode accuracy on the held-out images (the parm
    recipe: by reconstruction top-1, as ParM chose its ``best.pth``).

    ``model``: a fresh one built by the caller after ``torch.manual_seed(cfg.seed)`` (a user's factory); default
    ``cfg.arch``'s. With ``cfg.warm_start`` the weights start as ``deployed``'s (the input normalization, where the
    model has one, stays the parity's own: fitted on parity queries).
    """
    train, device = data.train, data.train.images.device
    problem = parm.ParmScheme(encoder, k).rejects(tuple(train.images.shape[1:]))
    if problem:
        raise ValueError(f"no parity model for these images: {problem}")
    val_groups = random_groups(len(data.val), k, device, torch.Generator().manual_seed(cfg.seed))
    sample_groups = random_groups(len(train), k, device, torch.Generator().manual_seed(cfg.seed))[:4096]
    sample = parity_inputs(train.images, sample_groups, encoder)
    model = model if model is not None else _new_model(cfg, sample)
    if cfg.recipe == "parm":
        parm_init(model)
    if cfg.warm_start:
        if deployed is None:
            raise ValueError("warm_start needs the deployed model")
        shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
        if shapes(deployed) != shapes(model):
            raise ValueError(f"warm_start needs the deployed model's architecture; the parity's is {cfg.arch!r}")
        model.load_state_dict(deployed.state_dict())
    model = _prepared(model, sample, device)

    objective = parity_objective(cfg)
    select_by = "reconstruction_top1" if cfg.recipe == "parm" else "degraded_accuracy"

    def loss_fn(groups: torch.Tensor) -> torch.Tensor:
        x = parity_inputs(train.images, groups, encoder).contiguous(memory_format=torch.channels_last)
        return objective(model(x), teacher.train[groups])

    def validate() -> float:
        return degraded_metrics(model, encoder, data.val, teacher.val, [val_groups])[select_by]

    def batches() -> list[torch.Tensor]:
        return list(random_groups(len(train), k, device).split(cfg.batch_size))

    return _fit(model, cfg, batches, loss_fn, validate, desc or f"parity {encoder} k={k}")


def degraded_metrics(
    parity_model: nn.Module, encoder: str, split: Split, deployed_logits: torch.Tensor, rounds: list[torch.Tensor]
) -> dict[str, float]:
    """Decode every slot of every coding group in ``rounds`` (each ``(G, k)`` indices into ``split``) in turn.

    degraded_accuracy: decoded argmax == true label (ParM's A_d, ``overall_top1``);
    reconstruction_top1: decoded argmax == the deployed model's argmax;
    deployed_accuracy: the deployed model's own accuracy on the same slots (A_a on these images).
    """
    hits = {"degraded_accuracy": 0.0, "reconstruction_top1": 0.0, "deployed_accuracy": 0.0}
    total = 0
    for groups in rounds:
        parity_out = predict(parity_model, (parity_inputs(split.images, g, encoder) for g in groups.split(1024)))
        slot_logits, labels = deployed_logits[groups], split.labels[groups]
        decoded = decode_every_erasure(parity_out, slot_logits).argmax(-1)  # (G, k)
        hits["degraded_accuracy"] += (decoded == labels).sum().item()
        hits["reconstruction_top1"] += (decoded == slot_logits.argmax(-1)).sum().item()
        hits["deployed_accuracy"] += (slot_logits.argmax(-1) == labels).sum().item()
        total += labels.numel()
    return {name: value / total for name, value in hits.items()}


def evaluate_deployed(model: nn.Module, test: Split) -> dict[str, float]:
    return {"test_accuracy": accuracy(predict(model, image_batches(test.images)), test.labels)}


def evaluate_parity(
    parity_model: nn.Module, teacher: Teacher, encoder: str, k: int, test: Split, rounds: int = 4, seed: int = 0
) -> dict[str, float]:
    """Degraded-mode metrics on the test split: ``rounds`` random partitions into coding groups, every slot erased."""
    gen = torch.Generator().manual_seed(seed)
    groups = [random_groups(len(test), k, test.images.device, gen) for _ in range(rounds)]
    metrics = degraded_metrics(parity_model, encoder, test, teacher.test, groups)
    return {**metrics, "decoded_slots": rounds * (len(test) // k * k)}
