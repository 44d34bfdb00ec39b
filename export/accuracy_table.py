"""python -m export.accuracy_table RESULTS.json: the ParM degraded-mode accuracy table in Markdown.

Reads what ``export.train_all`` wrote (``export/results/<profile>.json`` or a ``manifest.json``) and
prints, per dataset and code, the deployed model's test accuracy A_a, the degraded-mode accuracy A_d
(the decoded output's accuracy when the deployed answer is missing) and the gap between them.
``--with-models`` adds which deployed and parity model each row used, and a table of the deployed models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from export.spec import deployed_model_name


def _deployed_of(m: dict) -> str:
    return m.get("deployed_model") or deployed_model_name(m["dataset"])


def table(results: dict, with_models: bool = False) -> str:
    models = list(results["models"].values() if isinstance(results["models"], dict) else results["models"])
    parity = sorted(
        (m for m in models if m["role"] == "parity"),
        key=lambda m: (m["dataset"], _deployed_of(m) if with_models else "", m["encoder"], m["k"]),
    )
    named = "deployed model | parity model (arch) | " if with_models else ""
    rows = [
        f"| dataset | {named}encoder | k | deployed accuracy A_a | degraded accuracy A_d | A_a - A_d | "
        "reconstruction top-1 (agrees with deployed) |",
        "|---|---|---|---|---|---|---|" + ("---|---|" if with_models else ""),
    ]
    for m in parity:
        metrics = m["metrics"]
        a_a, a_d = metrics["deployed_accuracy"], metrics["degraded_accuracy"]
        names = f"{_deployed_of(m)} | {m['name']} ({m['training']['config']['arch']}) | " if with_models else ""
        rows.append(
            f"| {m['dataset']} | {names}{m['encoder']} | {m['k']} | {a_a:.2%} | {a_d:.2%} | "
            f"{(a_a - a_d) * 100:.2f} pts | {metrics['reconstruction_top1']:.2%} |"
        )
    if with_models:
        rows += ["", deployed_table(models)]
    return "\n".join(rows)


def deployed_table(models: list[dict]) -> str:
    """The deployed models trained in the run: test accuracy, architecture, recipe, training time, device."""
    rows = [
        "| deployed model | arch | test accuracy | options | epochs (best) | training s | device |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in sorted((m for m in models if m["role"] == "deployed"), key=lambda m: m["name"]):
        cfg, tr = m["training"].get("config", {}), m["training"]
        options = [f"{k}={cfg[k]}" for k in ("hflip", "mixup_alpha", "label_smoothing") if cfg.get(k)]
        # a model brought to `python -m export import` was trained elsewhere: its factory (or ONNX file)
        arch = cfg.get("arch") or m["onnx"].get("factory") or m["onnx"].get("source", "imported")
        epochs = f"{tr['epochs']} ({tr['best_epoch']})" if "epochs" in tr else "imported"
        accuracy = m["metrics"].get("test_accuracy")
        rows.append(
            f"| {m['name']} | {arch} | {'–' if accuracy is None else f'{accuracy:.2%}'} | {', '.join(options) or '–'}"
            f" | {epochs} | {tr.get('seconds', '–')} | {m.get('device_name', m.get('device'))} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m export.accuracy_table", description=__doc__)
    parser.add_argument("results", type=Path, help="export/results/<profile>.json or a manifest.json")
    parser.add_argument("--with-models", action="store_true", help="name each row's models; list the deployed ones")
    args = parser.parse_args()
    print(table(json.loads(args.results.read_text()), args.with_models))


if __name__ == "__main__":
    main()
