"""python -m bench.testbed.sweep A.json B.json ... --tag TAG: one profile's runs at several rates, side by side.

Reads testbed reports (``python -m bench.testbed``'s JSON) of the same profile at different utilisations and
writes ``<out>/<tag>.md`` (p99 and p99.9 of every scheme the runs share, with intervals, a column per
utilisation) and ``<out>/<tag>.png`` (p99 and p99.9 against utilisation, one line per scheme, intervals as
bars): how each scheme's tail grows with the load.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from bench import plots
from bench.stack import REPO_ROOT
from bench.stats import Estimate

QUANTILES = ("p99", "p99.9")


@dataclass(frozen=True)
class Run:
    """One report: its utilisation, rate, command, and each scheme's tail figures."""

    utilisation: float
    rate_qps: float
    command: str
    started_utc: str
    figures: dict[str, dict[str, Estimate]]  # scheme -> quantile -> estimate


def read(path: Path) -> Run:
    report = json.loads(path.read_text())
    bed = report["testbed"]
    figures = {s["name"]: {q: Estimate(**s["figures"][q]) for q in QUANTILES} for s in report["schemes"]}
    return Run(bed["utilisation"], bed["rate_qps"], report["command"], report["started_utc"], figures)


def shared_schemes(runs: list[Run]) -> list[str]:
    """The schemes every run has, in the first run's order."""
    return [name for name in runs[0].figures if all(name in r.figures for r in runs[1:])]


def markdown(tag: str, runs: list[Run]) -> str:
    runs = sorted(runs, key=lambda r: r.utilisation)
    head = " | ".join(f"{q} at {r.utilisation:.2f} ({r.rate_qps:.1f} q/s)" for q in QUANTILES for r in runs)
    lines = [f"# {tag}: the tail against the load", "", *(f"- `{r.command}`, {r.started_utc} UTC" for r in runs), ""]
    lines += [f"| scheme | {head} |", "|---|" + "---|" * (len(runs) * len(QUANTILES))]
    for name in shared_schemes(runs):
        cells = [_cell(r.figures[name][q]) for q in QUANTILES for r in runs]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines += ["", "ms, 95% bootstrap intervals; n>q: samples beyond the quantile (thin: fewer than 30)."]
    return "\n".join(lines) + "\n"


def _cell(e: Estimate) -> str:
    thin = ", thin" if e.thin else ""
    return f"{e.value:.0f} [{e.low:.0f}, {e.high:.0f}] (n>q={e.beyond}{thin})"


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(prog="python -m bench.testbed.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="testbed JSON reports of one profile")
    parser.add_argument("--tag", required=True, help="output file stem")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    runs = [read(p) for p in args.reports]
    md = args.out / f"{args.tag}.md"
    md.write_text(markdown(args.tag, runs))
    names = shared_schemes(runs)
    series = {n: [(r.utilisation, r.figures[n]["p99"], r.figures[n]["p99.9"]) for r in runs] for n in names}
    png = plots.load_sweep(args.out, args.tag, series)
    print(md.read_text())
    print(f"wrote {md}, {png}")
    return [md, png]


if __name__ == "__main__":
    main()
