"""Diagonal Fisher information of a classifier, and Fisher-weighted parameter averaging (Matena & Raffel, 2021).

COIN's coded model is read here as Fisher merging: the KL barycenter of the k members' predictive
distributions, with each KL replaced by its second-order expansion around member i, ½ (θ − θ_i)ᵀ F_i (θ − θ_i),
and F_i kept to its diagonal, is minimised element-wise by

    θ_c = Σ_i λ_i F_i θ_i / Σ_i λ_i F_i.

The Fisher of one input x is E_y[(∂ log p_θ(y|x) / ∂θ)²], element-wise:

- ``"true"``: the expectation over the model's own predictive distribution, y ~ p_θ(·|x), computed exactly
  (a weighted sum over the classes, no sampling noise); this is the Fisher of the KL expansion.
- ``"empirical"``: y is the input's training label (one gradient per input; cheaper, and biased where the
  model is unsure or wrong).

Both are averaged over a sample of inputs. Gradients are taken in eval mode, so BatchNorm normalises with its
running statistics and the Fisher is that of the function the model serves.

Layers: Linear (on ``(B, features)``), Conv2d of any kernel, stride, dilation, padding (mode) and groups, and
BatchNorm — what a torchvision-style ResNet or ResNeXt is made of; any other layer with parameters is refused
by name. BatchNorm, which the COIN paper as summarised does not treat: its affine γ and β are parameters, so
they are Fisher-merged like any weight; its running mean and variance are buffers with no Fisher, which the
caller merges (export/coin.py: averaged with the coding weights λ — plain averaging for uniform λ — or
recomputed on training images after merging, ``--bn``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

FISHER_KINDS = ("true", "empirical")
EPS = 1e-8  # added to every member's Fisher before merging (see merge)

State = Mapping[str, torch.Tensor]


def diagonal_fisher(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor | None = None, kind: str = "true", chunk: int = 256
) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of ``model`` on ``inputs``, one tensor per named parameter (same names and shapes).

    ``labels`` (needed for ``kind="empirical"`` only) are the inputs' training labels. The model is left in
    eval mode; in eval mode the examples of a batch are independent, so one batched backward pass gives every
    example's own gradient at each layer's output, from which :func:`_squared_grads` forms the per-example
    parameter gradients layer by layer (Goodfellow's trick) without storing them all at once.
    """
    if kind not in FISHER_KINDS:
        raise ValueError(f"unknown Fisher kind {kind!r}; known: {FISHER_KINDS}")
    if kind == "empirical" and labels is None:
        raise ValueError("the empirical Fisher needs the inputs' labels")
    model.eval()
    total = {name: torch.zeros_like(p) for name, p in model.named_parameters()}
    for start in range(0, len(inputs), chunk):
        x = inputs[start : start + chunk]
        with _LayerTaps(model) as taps:
            log_p = torch.log_softmax(model(x).float(), -1)
        if kind == "empirical":
            assert labels is not None
            targets = [(labels[start : start + chunk], torch.ones(len(x), device=x.device))]
        else:
            probs = log_p.detach().exp()
            targets = [(torch.full((len(x),), c, device=x.device), probs[:, c]) for c in range(log_p.shape[-1])]
        for i, (y, weight) in enumerate(targets):
            out_grads = torch.autograd.grad(
                log_p.gather(1, y[:, None]).sum(), taps.outputs, retain_graph=i < len(targets) - 1, allow_unused=True
            )
            for name, sq in taps.squared_grads(out_grads, weight).items():
                total[name] += sq
    return {name: t / len(inputs) for name, t in total.items()}


class _LayerTaps:
    """Forward hooks on each parameterised layer that keep its output and what its per-example gradients need
    of its input (:func:`_input_features`, computed once per batch for all classes). The output is handed on
    as a copy, so an in-place op after the layer, such as ``ReLU(inplace=True)``, leaves the kept one intact.

    Kept per layer, not in call order: a block may call its layers in another order than it declares them
    (a shortcut declared before the body it is added to). A layer must run exactly once per forward pass:
    a layer called twice (shared weights) has no per-example rule here."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [(name, m) for name, m in model.named_modules() if list(m.parameters(recurse=False))]
        self.kept: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> _LayerTaps:
        for name, module in self.layers:
            if not isinstance(module, _LAYERS):
                raise TypeError(f"no per-example gradient rule for {name} ({type(module).__name__})")
            self._handles.append(module.register_forward_hook(self._keep))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _keep(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if module in self.kept:
            raise TypeError(f"{type(module).__name__} ran twice in one forward pass: shared layers are not supported")
        self.kept[module] = (_input_features(module, args[0].detach()), output)
        return output.clone()

    @property
    def used(self) -> list[tuple[str, nn.Module]]:
        """The layers that ran (one whose output the model ignores still ran; one never called gets no Fisher)."""
        return [(name, m) for name, m in self.layers if m in self.kept]

    @property
    def outputs(self) -> list[torch.Tensor]:
        return [self.kept[m][1] for _, m in self.used]

    def squared_grads(self, out_grads: Sequence[torch.Tensor | None], weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """Σ_b weight_b (∂ℓ_b / ∂θ)² per parameter, from each layer's input and per-example output gradient
        (None: the output does not reach the loss, so every gradient is 0 and the layer is left out)."""
        result = {}
        for (prefix, module), delta in zip(self.used, out_grads, strict=True):
            if delta is None:
                continue
            for name, sq in _squared_grads(module, self.kept[module][0], delta, weight).items():
                result[f"{prefix}.{name}" if prefix else name] = sq
        return result


def _input_features(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Linear: the squared input; Conv2d: the unfolded input patches ``(B, C_in k_h k_w, L)``; BatchNorm: the
    input normalised by the running statistics."""
    if isinstance(module, nn.Linear):
        if a.dim() != 2:
            raise TypeError(f"a Linear layer on a {a.dim()}-D input: only (B, features) has a per-example rule here")
        return a.square()
    if isinstance(module, nn.Conv2d):
        return _patches(a, module)
    assert isinstance(module, nn.modules.batchnorm._BatchNorm)
    if module.running_mean is None or module.running_var is None:
        raise TypeError("a BatchNorm without running statistics (track_running_stats=False) depends on the batch")
    shape = (1, -1) + (1,) * (a.dim() - 2)
    return (a - module.running_mean.view(shape)) / (module.running_var.view(shape) + module.eps).sqrt()


def _patches(a: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``F.unfold``'s patches ``(B, C_in k_h k_w, L)`` of a conv's input (any stride, dilation, padding and
    padding mode), from strided slices of the padded input (CPU ``im2col`` is some 50x slower here)."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    pad = conv._reversed_padding_repeated_twice  # (left, right, top, bottom), also for padding="same"
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(a, list(pad), mode=mode) if any(pad) else a
    h = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    w = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    shifted = [
        padded[:, :, u * dh : u * dh + sh * (h - 1) + 1 : sh, v * dw : v * dw + sw * (w - 1) + 1 : sw]
        for u in range(kh)
        for v in range(kw)
    ]
    return torch.stack(shifted, 2).flatten(1, 2).flatten(2)


def _squared_grads(
    module: nn.Module, features: torch.Tensor, delta: torch.Tensor, w: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Σ_b w_b g_b² for ``module``'s parameters, g_b example b's gradient, from the layer's input features and
    its output gradient ``delta`` ``(B, ...)``."""
    if isinstance(module, nn.Linear):  # g_b = δ_b a_bᵀ, so Σ_b w_b g_b² = (w δ²)ᵀ a²: never (B, out, in)
        weighted = w[:, None] * delta.square()
        return {"weight": weighted.T @ features, **({"bias": weighted.sum(0)} if module.bias is not None else {})}
    if isinstance(module, nn.Conv2d):  # g_b = δ_b (C_out, L) times the patches (L, C_in k²), group by group
        g, b = module.groups, delta.shape[0]
        out_g = delta.flatten(2).view(b, g, -1, delta.shape[2] * delta.shape[3])  # (B, g, C_out/g, L)
        in_g = features.view(b, g, -1, features.shape[2])  # (B, g, C_in/g k², L): channel-major, as unfold
        per_example = torch.einsum("bgol,bgil->bgoi", out_g, in_g).reshape(-1, *module.weight.shape)
        grads = {"weight": per_example, **({"bias": delta.sum((2, 3))} if module.bias is not None else {})}
    else:  # eval-mode BatchNorm: the per-channel affine map γ x̂ + β
        per_channel = (delta * features).reshape(*delta.shape[:2], -1).sum(-1)
        grads = {"weight": per_channel, "bias": delta.reshape(*delta.shape[:2], -1).sum(-1)}
    return {name: torch.einsum("b,b...->...", w, g.square()) for name, g in grads.items()}


_LAYERS = (nn.Linear, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


def merge(
    states: Sequence[State], lambdas: Sequence[float], fishers: Sequence[State] | None = None, eps: float = EPS
) -> dict[str, torch.Tensor]:
    """θ_c = Σ_i λ_i (F_i + ε) θ_i / Σ_i λ_i (F_i + ε), element-wise, for every name in ``fishers[0]``.

    ``fishers=None`` is plain weighted averaging (every F_i = 0, so θ_c = Σ λ_i θ_i / Σ λ_i). The ε added to
    every Fisher keeps the division defined and sends a parameter no member's Fisher weighs (a dead unit)
    to the members' plain average instead of to 0; it is the formula Σ λ_i F_i θ_i / (Σ λ_i F_i + ε) with
    ε Σ λ_i θ_i added to the numerator (for Σ λ_i = 1). With equal Fishers the result is plain averaging.
    """
    if len(states) != len(lambdas) or (fishers is not None and len(fishers) != len(states)):
        raise ValueError(f"{len(states)} states need as many lambdas (got {len(lambdas)}) and Fishers")
    if min(lambdas) <= 0:
        raise ValueError(f"coding weights must be positive, got {list(lambdas)}")
    merged = {}
    for name in (fishers or states)[0]:
        zero = torch.zeros_like(states[0][name])
        fisher = [f[name] for f in fishers] if fishers is not None else [zero] * len(states)
        weights = [lam * (f + eps) for lam, f in zip(lambdas, fisher, strict=True)]
        merged[name] = sum(w * s[name] for w, s in zip(weights, states, strict=True)) / sum(weights)
    return merged  # type: ignore[return-value]
