"""Offline accuracy of ApproxIFER (Soleymani et al., AAAI 2022) with the deployed ONNX models, on CPU.

The paper's protocol: each trial draws K random test images, encodes them to N Berrut-coded queries, runs the
deployed model on every coded query (onnxruntime, batched over all trials), drops S random workers
(stragglers), optionally corrupts A random arrived workers (sign flip or Gaussian noise), and decodes. Reported:
decoded accuracy against the true labels; the uncoded ("centralized") accuracy on the same images; the
systematic variant (originals served, S of them straggle, Berrut fills in only those); and for Byzantine runs
the locator's found-rate (share of planted workers among those it drops) next to chance, and the accuracy with
the locator, without it, and with the attackers known (oracle).

    python -m export.eval_approxifer --out docs/approxifer_results

``--models fashion_resnet fashion_cnn_mixup ...`` evaluates other deployed models (gpu15's variants; the dataset
is the name's prefix) on the same trials as their dataset's ``*_cnn`` (the draws depend on the dataset alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coding import berrut
from coding.approxifer import ApproxiferScheme
from export import datasets, spec

log = logging.getLogger(__name__)

# The ApproxIFER paper's published accuracies (its authors' Bar_plots.py); their base models: ResNet-18,
# MNIST .99, Fashion-MNIST .97/.93.
PUBLISHED_STRAGGLER = {
    "mnist": {(8, 1): 0.872, (10, 1): 0.872, (12, 1): 0.868, (12, 2): 0.8256, (12, 3): 0.7747},
    "fashion": {(8, 1): 0.74, (10, 1): 0.73, (12, 1): 0.72, (12, 2): 0.6554, (12, 3): 0.64},
}
PUBLISHED_BYZANTINE = {"mnist": {1: 0.97, 2: 0.95, 3: 0.93}, "fashion": {1: 0.79, 2: 0.805, 3: 0.82}}
STRAGGLER_SETTINGS = ((8, 1), (10, 1), (12, 1), (12, 2), (12, 3))  # (K, S), N = K + S
BYZANTINE_SETTINGS = ((12, 1), (12, 2), (12, 3))  # (K, A) with S = 1, N = 2K + 2A + S - 1
BYZANTINE_S = 1
_BATCH = 4096


@dataclass(frozen=True)
class Config:
    datasets: tuple[str, ...]
    trials: int
    seed: int
    model_repository: Path
    data_root: Path
    out: Path | None
    attacks: tuple[str, ...]
    sigma: float
    wait_s: float
    threads: int
    models: tuple[str, ...] = ()  # deployed model names; () = every dataset's spec name
    byzantine: bool = True
    merge: tuple[Path, ...] = ()  # earlier --out JSON files to write one table from, instead of evaluating

    def model_names(self) -> tuple[str, ...]:
        return self.models or tuple(spec.deployed_model_name(ds) for ds in self.datasets)

    def model_path(self, name: str) -> Path:
        return self.model_repository / name / "1" / "model.onnx"


def dataset_of(name: str) -> str:
    """``fashion_resnet`` -> ``fashion``: a deployed model's dataset is its name's first part."""
    dataset = name.split("_", 1)[0]
    if dataset not in spec.DATASETS:
        raise ValueError(f"model {name!r} does not start with a dataset ({', '.join(spec.DATASETS)})")
    return dataset


def result_key(name: str) -> str:
    """Results are keyed by dataset for spec's models (as committed) and by model name for the others."""
    dataset = dataset_of(name)
    return dataset if name == spec.deployed_model_name(dataset) else name


class Model:
    """The deployed model in onnxruntime on CPU: ``(..., 1, 28, 28)`` float32 pixels/255 -> float64 logits."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        data = path.read_bytes()  # hash the bytes actually evaluated, even if the file is replaced later
        self.facts = {"path": str(path), "sha256": hashlib.sha256(data).hexdigest()}
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(-1, *spec.IMAGE_SHAPE).astype(np.float32, copy=False)
        parts = [
            self.session.run([spec.OUTPUT_NAME], {spec.INPUT_NAME: flat[i : i + _BATCH]})[0]
            for i in range(0, len(flat), _BATCH)
        ]
        return np.concatenate(parts).astype(np.float64).reshape(*x.shape[:-3], -1)


@dataclass(frozen=True)
class Trials:
    """T groups of K test images: their labels ``(T, K)``, queries ``(T, K, 1, 28, 28)``, uncoded logits."""

    labels: np.ndarray
    queries: np.ndarray
    central: np.ndarray

    @classmethod
    def draw(cls, model: Model, images: np.ndarray, labels: np.ndarray, trials: int, k: int, rng) -> Trials:
        idx = np.stack([rng.choice(len(images), k, replace=False) for _ in range(trials)])
        queries = images[idx][:, :, None].astype(np.float32) / 255.0
        return cls(labels[idx], queries, model(queries))

    def coded_outputs(self, model: Model, scheme: ApproxiferScheme) -> np.ndarray:
        return model(np.stack([scheme.encode(q) for q in self.queries]))


def _hits(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(-1) == labels).mean())


def straggler_row(model: Model, data: tuple[np.ndarray, np.ndarray], k: int, s: int, trials: int, rng) -> dict:
    """Non-systematic: N = K+S coded workers, S random ones straggle. Systematic: S random originals of K
    straggle and are decoded from the others plus the parities, either S Berrut parities (N = K+S) or the
    K+S non-systematic coded queries served beside the originals (N = 2K+S; its parity nodes are theirs)."""
    tr = Trials.draw(model, *data, trials, k, rng)
    coded = ApproxiferScheme(k, s=s)
    lean, beside = ApproxiferScheme(k, s=s, systematic=True), ApproxiferScheme(k, n=2 * k + s, s=s, systematic=True)
    outputs = tr.coded_outputs(model, coded)
    parities = model(np.stack([lean.encode(q)[k:] for q in tr.queries]))
    decoded: list[np.ndarray] = []
    lean_hits: list[np.ndarray] = []
    beside_hits: list[np.ndarray] = []
    for t in range(trials):
        arrived = np.sort(rng.choice(coded.workers, coded.needed, replace=False))
        decoded.append(coded.decode(outputs[t, arrived], arrived))
        missing = np.sort(rng.choice(k, s, replace=False))
        for scheme, extra, hits in ((lean, parities[t], lean_hits), (beside, outputs[t], beside_hits)):
            served = np.setdiff1d(np.arange(scheme.workers), missing)
            answers = scheme.decode(np.concatenate([tr.central[t], extra])[served], served)[missing]
            hits.append(answers.argmax(-1) == tr.labels[t, missing])
    return {
        "k": k, "s": s, "n": coded.workers,
        "centralized": _hits(tr.central, tr.labels),
        "approxifer": _hits(np.stack(decoded), tr.labels),
        "systematic_missing": float(np.mean(lean_hits)),
        "beside_originals_missing": float(np.mean(beside_hits)),
    }  # fmt: skip


def _corrupt(y: np.ndarray, bad: np.ndarray, attack: str, sigma: float, rng) -> np.ndarray:
    y = y.copy()
    if attack == "flip":
        y[bad] = -y[bad]
    elif attack == "gaussian":
        y[bad] += rng.normal(0.0, sigma, y[bad].shape)
    return y


def published_locator(y: np.ndarray, nodes: np.ndarray, k: int, a: int) -> np.ndarray:
    """The authors' polynomial Berlekamp-Welch locator (``welch_decoder``), as a baseline: per class, P and Q of
    degree <= K+A-1 with Q(0) = 1 and P(beta) = y Q(beta) by pseudo-inverse; each class flags the A smallest
    |Q(beta)|; the A most-flagged positions win."""
    vander = np.vander(nodes, k + a, increasing=True)
    flags = []
    for c in range(y.shape[1]):
        system = np.hstack([vander, -y[:, c : c + 1] * vander[:, 1:]])
        q = np.concatenate([[1.0], (np.linalg.pinv(system) @ y[:, c])[k + a :]])
        flags.append(np.argsort(np.abs(vander @ q))[:a])
    return np.argsort(-np.bincount(np.concatenate(flags), minlength=len(y)), kind="stable")[:a]


def byzantine_rows(model: Model, data: tuple[np.ndarray, np.ndarray], k: int, a: int, cfg: Config, rng) -> list:
    """N = 2K+2A+S-1 workers, S straggle, A random arrived ones are corrupted, one row per attack."""
    tr = Trials.draw(model, *data, cfg.trials, k, rng)
    scheme = ApproxiferScheme(k, s=BYZANTINE_S, a=a)
    n, nodes = scheme.workers, berrut.worker_nodes(scheme.workers)
    outputs = tr.coded_outputs(model, scheme)
    rows = []
    for attack in cfg.attacks:
        answers: dict[str, list] = {"gated": [], "forced": [], "plain": [], "oracle": []}
        found: dict[str, list] = {"gated": [], "gated_honest": [], "forced": [], "published": []}
        for t in range(cfg.trials):
            arrived = np.sort(rng.choice(n, scheme.needed, replace=False))
            bad = rng.choice(len(arrived), a, replace=False) if attack != "none" else np.empty(0, np.int64)
            y = _corrupt(outputs[t, arrived], bad, attack, cfg.sigma, rng)
            flagged = {
                "gated": scheme.locate(y, arrived),  # what ApproxiferScheme.decode drops
                "forced": berrut.locate(y, arrived, k, n, a, min_evidence=0.0),
                "oracle": arrived[bad],
                "plain": [],
            }
            for name, drop in flagged.items():
                keep = ~np.isin(arrived, drop)
                answers[name].append(berrut.decode(y[keep], arrived[keep], k, n))
            found["gated"].append(len(np.intersect1d(flagged["gated"], arrived[bad])))
            found["gated_honest"].append(len(flagged["gated"]) - found["gated"][-1])
            found["forced"].append(len(np.intersect1d(flagged["forced"], arrived[bad])) / a)
            found["published"].append(len(np.intersect1d(published_locator(y, nodes[arrived], k, a), bad)) / a)
        rows.append(_byzantine_row(k, a, n, attack, cfg, tr, answers, found))
    return rows


def _byzantine_row(k: int, a: int, n: int, attack: str, cfg: Config, tr: Trials, answers: dict, found: dict) -> dict:
    attacked = attack != "none"
    return {
        "k": k, "a": a, "s": BYZANTINE_S, "n": n,
        "attack": {"none": "none", "flip": "sign flip"}.get(attack, f"gaussian sigma={cfg.sigma:g}"),
        "centralized": _hits(tr.central, tr.labels),
        "with_locator": _hits(np.stack(answers["gated"]), tr.labels),
        "with_locator_always_a": _hits(np.stack(answers["forced"]), tr.labels),
        "without_locator": _hits(np.stack(answers["plain"]), tr.labels),
        "oracle": _hits(np.stack(answers["oracle"]), tr.labels),
        "found_rate": float(np.mean(found["forced"])) if attacked else None,
        "found_rate_published_locator": float(np.mean(found["published"])) if attacked else None,
        "chance": a / (n - BYZANTINE_S) if attacked else None,
        "gated_found_rate": float(np.mean(found["gated"])) / a if attacked else None,
        "gated_honest_dropped": float(np.mean(found["gated_honest"])),
    }  # fmt: skip


def evaluate(name: str, cfg: Config) -> dict:
    dataset = dataset_of(name)
    images, labels = datasets.load(dataset, "test", cfg.data_root)
    model = Model(cfg.model_path(name), cfg.threads)
    rng = np.random.default_rng([cfg.seed, spec.DATASETS.index(dataset)])
    result: dict = {
        "model": model.facts,
        "base_accuracy": _hits(model(images[:, None].astype(np.float32) / 255.0), labels),
    }
    result["straggler"], result["byzantine"] = [], []
    for k, s in STRAGGLER_SETTINGS:
        started = time.monotonic()
        row = straggler_row(model, (images, labels), k, s, cfg.trials, rng)
        row["published"] = PUBLISHED_STRAGGLER[dataset].get((k, s))
        result["straggler"].append(row)
        log.info("%s K=%d S=%d: %.4f (%.1f s)", name, k, s, row["approxifer"], time.monotonic() - started)
    for k, a in BYZANTINE_SETTINGS if cfg.byzantine else ():
        started = time.monotonic()
        for row in byzantine_rows(model, (images, labels), k, a, cfg, rng):
            row["published"] = PUBLISHED_BYZANTINE[dataset].get(a) if row["attack"] != "none" else None
            result["byzantine"].append(row)
        log.info("%s K=%d A=%d done (%.1f s)", name, k, a, time.monotonic() - started)
    return result


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def to_markdown(results: dict, cfg: Config, command: str) -> str:
    lines = [
        "# ApproxIFER accuracy with the deployed models (offline, onnxruntime CPU)",
        "",
        f"Command: `{command}`",
        "",
        f"{cfg.trials} trials per row, seed {cfg.seed}; each trial draws K random test images. Published: the "
        "ApproxIFER authors' values (Soleymani et al., AAAI 2022, as plotted by `Bar_plots.py` in their code; "
        "ResNet-18 base models); ours: "
        + (
            "the deployed `*_cnn` models." if not cfg.models else "the deployed models below (same trials per dataset)."
        ),
        "",
        *(f"- {ds}: `{r['model']['path']}` sha256 `{r['model']['sha256']}`" for ds, r in results.items()),
        "",
        "## Stragglers (N = K + S)",
        "",
        "| dataset | base acc | K | S | N | centralized | ApproxIFER | published | systematic (N = K+S),"
        " missing only | originals + ApproxIFER (N = 2K+S), missing only |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, r in results.items():
        for row in r["straggler"]:
            lines.append(
                f"| {ds} | {_f(r['base_accuracy'])} | {row['k']} | {row['s']} | {row['n']} | {_f(row['centralized'])}"
                f" | **{_f(row['approxifer'])}** | {_f(row['published'])} | {_f(row['systematic_missing'])}"
                f" | {_f(row['beside_originals_missing'])} |"
            )
    lines += [
        "",
        "Non-systematic: S of the N coded workers straggle; accuracy over all K answers. Systematic: S of the K",
        "originals straggle, every parity answers; accuracy over the S missing answers only (degraded mode). With",
        "S Berrut parities (N = K+S) each parity is mostly a blend of the one or two originals nearest its node,",
        "so a missing original elsewhere is interpolated from other images' answers: near chance. Serving the K+S",
        "coded queries beside the originals (N = 2K+S) decodes the missing ones better than ApproxIFER alone.",
        "",
    ]
    if not cfg.byzantine:
        return "\n".join([*lines, "Byzantine rows: not run (`--no-byzantine`).", ""])
    lines += [
        "## Byzantine workers (K = 12, S = 1, N = 2K + 2A + S - 1; the A attackers are among the N - S arrived)",
        "",
        "| dataset | A | N | attack | centralized | **with locator** | locator, always A | no locator"
        " | attackers known | published | found-rate, always A | published locator | chance A/(N-S)"
        " | with locator: planted found | honest dropped / group |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, r in results.items():
        for row in r["byzantine"]:
            lines.append(
                f"| {ds} | {row['a']} | {row['n']} | {row['attack']} | {_f(row['centralized'])}"
                f" | **{_f(row['with_locator'])}** | {_f(row['with_locator_always_a'])} | {_f(row['without_locator'])}"
                f" | {_f(row['oracle'])} | {_f(row['published'])} | **{_f(row['found_rate'])}**"
                f" | {_f(row['found_rate_published_locator'])} | {_f(row['chance'])}"
                f" | {_f(row['gated_found_rate'])} | {row['gated_honest_dropped']:.3f} |"
            )
    lines += [
        "",
        "With locator: `ApproxiferScheme.decode`, which drops the workers `coding.berrut.locate` judges faulty:",
        "least-squares syndrome decoding in the Berrut basis, then a partial-F outlier test (`min_evidence` 6) so",
        "that up to A workers are dropped. Locator, always A: the same search dropping exactly A (`min_evidence=0`);",
        "its found-rate (share of the planted workers among the A dropped) sits next to the authors' polynomial",
        "Berlekamp-Welch locator on the same outputs and next to chance. Published Byzantine numbers are the",
        "authors' `error_123` plot (attack not stated there); their Gaussian runs (`error_sig`) give MNIST / F-MNIST",
        ".9434 / .7723 at sigma = 10, with ResNet-18 logits on another scale than these CNNs'.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> Config:
    p = argparse.ArgumentParser(prog="python -m export.eval_approxifer", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(spec.DATASETS), choices=spec.DATASETS)
    p.add_argument("--trials", type=int, default=800, help="trials (coding groups) per row (default 800)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    p.add_argument("--data-root", type=Path, default=Path(datasets.DEFAULT_ROOT))
    p.add_argument("--out", type=Path, help="write OUT.md and OUT.json (the Markdown also goes to stdout)")
    p.add_argument("--attacks", nargs="+", default=["none", "flip", "gaussian"], choices=["none", "flip", "gaussian"])
    p.add_argument("--sigma", type=float, default=10.0, help="std of the Gaussian attack (default 10)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the model files to appear")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    p.add_argument("--models", nargs="+", default=[], help="deployed model names (default: each dataset's *_cnn)")
    p.add_argument(
        "--byzantine", action=argparse.BooleanOptionalAction, default=True, help="the Byzantine rows (default: on)"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        help="write one table from earlier --out JSON files (no evaluation)",
    )
    a = p.parse_args(argv)
    if a.trials < 1:
        p.error("--trials must be >= 1")
    try:
        model_datasets = [dataset_of(m) for m in a.models]
    except ValueError as exc:
        p.error(str(exc))
    return Config(
        tuple(a.datasets if not a.models else dict.fromkeys(model_datasets)), a.trials, a.seed, a.model_repository,
        a.data_root, a.out, tuple(a.attacks), a.sigma, a.wait, a.threads, tuple(a.models), a.byzantine, tuple(a.merge),
    )  # fmt: skip


def wait_for_models(cfg: Config) -> None:
    """Poll (every 10 s, up to ``--wait`` seconds) until every model is in place; raise naming the missing ones.

    A model counts once its ``config.pbtxt`` exists too: the exporter writes it after the checked ONNX file.
    """
    deadline = time.monotonic() + cfg.wait_s
    ready = lambda p: p.is_file() and (p.parent.parent / "config.pbtxt").is_file()  # noqa: E731
    missing = [p for p in map(cfg.model_path, cfg.model_names()) if not ready(p)]
    while missing and time.monotonic() < deadline:
        log.info("waiting for %s", ", ".join(map(str, missing)))
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        missing = [p for p in missing if not ready(p)]
    if missing:
        raise SystemExit(f"model(s) not ready: {', '.join(map(str, missing))} (train and export them first)")


def merged(cfg: Config) -> tuple[dict, Config, str]:
    """The results of several earlier runs (same trials and seed), their config and their commands, as one."""
    docs = [json.loads(path.read_text()) for path in cfg.merge]
    if len({(d["trials"], d["seed"]) for d in docs}) != 1:
        raise SystemExit(f"--merge: the runs differ in trials or seed: {[(d['trials'], d['seed']) for d in docs]}")
    name = lambda r: Path(r["model"]["path"]).parent.parent.name  # noqa: E731  # <repo>/<name>/1/model.onnx
    results = {key: r for d in docs for key, r in d["results"].items()}
    results = dict(
        sorted(results.items(), key=lambda kv: (dataset_of(name(kv[1])), kv[0] != dataset_of(name(kv[1])), kv[0]))
    )
    byzantine = any(r["byzantine"] for r in results.values())
    models = tuple(name(r) for r in results.values())
    cfg = dataclasses.replace(cfg, trials=docs[0]["trials"], seed=docs[0]["seed"], models=models, byzantine=byzantine)
    return results, cfg, "; ".join(d["command"] for d in docs)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = parse_args(argv)
    command = shlex.join(["python", "-m", "export.eval_approxifer", *argv])
    if cfg.merge:
        results, cfg, command = merged(cfg)
    else:
        wait_for_models(cfg)
        started = time.monotonic()
        results = {result_key(name): evaluate(name, cfg) for name in cfg.model_names()}
        log.info("evaluated in %.1f s", time.monotonic() - started)
    markdown = to_markdown(results, cfg, command)
    print(markdown)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.with_suffix(".md").write_text(markdown)
        meta = {"command": command, "trials": cfg.trials, "seed": cfg.seed, "sigma": cfg.sigma}
        cfg.out.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
