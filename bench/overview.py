"""python -m bench.overview: one table across fault profiles, from the JSON files bench.compare wrote.

For each profile (row) and scheme (column): (p99.9 - p50) in ms, and how many times tighter that gap
is than equal-resource replication's in the same run (> 1: tighter). Reads bench/results/*.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.stack import REPO_ROOT

COLUMNS = ("none", "equal", "hedge2", "hedge3", "replicate", "parm", "approxifer")


def gap_table(reports: dict[str, dict]) -> str:
    """Markdown: a row per report (its tag), a column per scheme, cells ``gap ms (x vs equal)``."""
    lines = ["| profile (file) | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for tag, report in reports.items():
        gaps = {r["name"]: r["p999_ms"] - r["p50_ms"] for r in report["runs"]}
        equal = gaps.get("equal")
        cells = []
        for name in COLUMNS:
            if name not in gaps:
                cells.append("–")
            elif equal is None or name == "equal" or gaps[name] <= 0:
                cells.append(f"{gaps[name]:.1f}")
            else:
                cells.append(f"{gaps[name]:.1f} ({equal / gaps[name]:.2f}×)")
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m bench.overview", description=__doc__)
    p.add_argument("tags", nargs="*", help="result file stems (default: every JSON in --results)")
    p.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results")
    args = p.parse_args(argv)
    paths = [args.results / f"{t}.json" for t in args.tags] or sorted(args.results.glob("*.json"))
    reports = {path.stem: json.loads(path.read_text()) for path in paths}
    reports = {tag: r for tag, r in reports.items() if "runs" in r}  # skip other JSON (the demo's)
    table = gap_table(reports)
    print(table)
    return table


if __name__ == "__main__":
    main()
