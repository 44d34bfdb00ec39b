"""python -m export.accuracy_table RESULTS.json: the ParM degraded-mode accuracy table in Markdown.

Reads what ``export.train_all`` wrote (``export/results/<profile>.json`` or a ``manifest.json``) and
prints, per dataset and code, the deployed model's test accuracy A_a, the degraded-mode accuracy A_d
(the decoded output's accuracy when the deployed answer is missing) and the gap between them.
``--with-models`` adds which deployed and parity model each row used, and a table of the deployed models.
``--recipes`` sets the parity recipes side by side instead (``train_all --recipe ours,parm``): per dataset and code,
A_a, each recipe's A_d and which wins by how much. Several results files are read as one.
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


def _recipe_of(m: dict) -> str:
    return m["training"]["config"].get("recipe", "ours")


def recipe_table(results: dict) -> str:
    """Ours against ParM's recipe, a row per (dataset, deployed model, encoder, k) that has both."""
    models = list(results["models"].values() if isinstance(results["models"], dict) else results["models"])
    rows: dict[tuple, dict[str, dict]] = {}
    for m in (m for m in models if m["role"] == "parity"):
        rows.setdefault((m["dataset"], _deployed_of(m), m["encoder"], m["k"]), {})[_recipe_of(m)] = m
    lines = [
        "| dataset | encoder | k | A_a | A_d ours | A_d parm | winner (by) | epochs (best) ours / parm "
        "| steps ours / parm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, _, encoder, k), by in sorted(rows.items()):
        if not {"ours", "parm"} <= by.keys():
            continue
        ours, paper = by["ours"], by["parm"]
        a_a = ours["metrics"]["deployed_accuracy"]
        d_ours, d_parm = ours["metrics"]["degraded_accuracy"], paper["metrics"]["degraded_accuracy"]
        gap = round((d_ours - d_parm) * 100, 2)
        winner = "tie" if gap == 0 else f"{'ours' if gap > 0 else 'parm'} (+{abs(gap):.2f} pts)"
        tr_o, tr_p = ours["training"], paper["training"]
        steps = " / ".join(str(m.get("history", [{}])[-1].get("steps", "?")) for m in (ours, paper))
        lines.append(
            f"| {dataset} | {encoder} | {k} | {a_a:.2%} | {d_ours:.2%} | {d_parm:.2%} | {winner} | "
            f"{tr_o['epochs']} ({tr_o['best_epoch']}) / {tr_p['epochs']} ({tr_p['best_epoch']}) | {steps} |"
        )
    return "\n".join(lines)


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
    parser.add_argument("results", type=Path, nargs="+", help="export/results/<profile>.json or a manifest.json")
    parser.add_argument("--with-models", action="store_true", help="name each row's models; list the deployed ones")
    parser.add_argument("--recipes", action="store_true", help="each code's parity recipes side by side")
    args = parser.parse_args()
    results = {"models": [m for path in args.results for m in _models(json.loads(path.read_text()))]}
    print(recipe_table(results) if args.recipes else table(results, args.with_models))


def _models(results: dict) -> list[dict]:
    return list(results["models"].values() if isinstance(results["models"], dict) else results["models"])


if __name__ == "__main__":
    main()
