"""python -m export.accuracy_table RESULTS.json: the ParM degraded-mode accuracy table in Markdown.

Reads what ``export.train_all`` wrote (``export/results/<profile>.json`` or a ``manifest.json``) and
prints, per dataset and code, the deployed model's test accuracy A_a, the degraded-mode accuracy A_d
(the decoded output's accuracy when the deployed answer is missing) and the gap between them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(results: dict) -> str:
    models = results["models"].values() if isinstance(results["models"], dict) else results["models"]
    parity = sorted((m for m in models if m["role"] == "parity"), key=lambda m: (m["dataset"], m["encoder"], m["k"]))
    rows = [
        "| dataset | encoder | k | deployed accuracy A_a | degraded accuracy A_d | A_a - A_d | "
        "reconstruction top-1 (agrees with deployed) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in parity:
        metrics = m["metrics"]
        a_a, a_d = metrics["deployed_accuracy"], metrics["degraded_accuracy"]
        rows.append(
            f"| {m['dataset']} | {m['encoder']} | {m['k']} | {a_a:.2%} | {a_d:.2%} | "
            f"{(a_a - a_d) * 100:.2f} pts | {metrics['reconstruction_top1']:.2%} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m export.accuracy_table", description=__doc__)
    parser.add_argument("results", type=Path, help="export/results/<profile>.json or a manifest.json")
    print(table(json.loads(parser.parse_args().results.read_text())))


if __name__ == "__main__":
    main()
