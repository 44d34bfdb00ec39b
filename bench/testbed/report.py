"""A testbed run's report: one row per scheme (tail latency with intervals, extra inference load, instance
utilisation, CPU share), the CPU flag, as Markdown and JSON, and the cost frontier as a PNG."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import plots, stats
from bench.testbed.measure import CPU_FLAG_SHARE, CpuShare, share_over
from bench.testbed.profiles import Testbed
from bench.testbed.run import Tally

BASELINE = "none"
CODED = ("parm", "collage", "approxifer")  # name prefixes of the coded schemes
HEDGED = "hedge"  # name prefix of hedging and its sweep
DRAIN_NOTE_S = 2.0  # per round: a scheme whose instances worked longer than this after its load is named


@dataclass(frozen=True)
class Versus:
    """A coded scheme against a baseline: the baseline's p99 and p99.9 over the scheme's (above 1: the
    scheme is faster), each run resampled independently."""

    scheme: str
    baseline: str
    baseline_extra_load: float
    p99: stats.Estimate
    p999: stats.Estimate

    def line(self) -> str:
        return (
            f"- `{self.scheme}` against `{self.baseline}` ({self.baseline_extra_load:+.1%} extra load): "
            f"{self.baseline}'s p99 over the scheme's {self.p99.format(2, 'x')}, p99.9 {self.p999.format(2, 'x')}"
        )


@dataclass(frozen=True)
class RunInfo:
    """When and how a run was made, and the machine's CPU over all its load windows."""

    tag: str
    command: str
    started_utc: str
    finished_utc: str
    commit: str
    cpu: CpuShare
    load_average: tuple[float, float]  # the machine's 1-minute load average at the start and at the end


@dataclass(frozen=True)
class SchemeResult:
    name: str
    route: str
    instances: int
    sent: int
    answered: int
    errors: dict[str, int]
    reconstructed: int
    figures: dict[str, stats.Estimate]  # p50, p99, p99.9, gap (p99.9 - p50), ms
    calls_per_query: float  # rows Triton ran per query sent
    extra_load: float  # calls per query over the uncoded baseline's, minus 1
    utilisation: dict[int, float]  # instance -> busy share of the load windows
    cpu: CpuShare
    stall_events: int
    drain_s: float = 0.0  # summed over its windows: until its instances stopped after the load (a backlog)
    shuffle_events: int = 0  # whole shuffle transfers during its load windows

    @property
    def mean_utilisation(self) -> float:
        return float(np.mean(list(self.utilisation.values())))

    def as_dict(self) -> dict:
        out = asdict(self)
        out["cpu"] = {**asdict(self.cpu), "flagged": self.cpu.flagged}
        out["utilisation"] = {str(i): u for i, u in self.utilisation.items()}
        out["mean_utilisation"] = self.mean_utilisation
        return out


def results(tallies: list[Tally]) -> list[SchemeResult]:
    """Each tally's figures; extra load is calls per query minus one (:func:`_extra_load`): the uncoded
    routes make one call per query by construction, and rows counted in their windows beyond that are
    another scheme's backlog spilling over (an execution of a large batch outlasts the settling check's
    quiet time)."""
    per_query = {t.scheme.name: t.rows / max(1, len(t.records)) for t in tallies}
    out = []
    for seed, t in enumerate(tallies):
        codes = Counter(r.code for r in t.records)
        latencies_ms = 1e3 * np.array([r.latency_s for r in t.records])
        out.append(
            SchemeResult(
                name=t.scheme.name,
                route=t.scheme.route,
                instances=len(t.scheme.instances),
                sent=len(t.records),
                answered=codes.pop("OK", 0),
                errors=dict(codes),
                reconstructed=sum(r.reconstructed for r in t.records),
                figures=stats.figures(latencies_ms, seed=seed),
                calls_per_query=per_query[t.scheme.name],
                extra_load=_extra_load(t.scheme.route, per_query[t.scheme.name]),
                utilisation=t.utilisation(),
                cpu=t.cpu_share,
                stall_events=t.stall_events,
                drain_s=t.drain_s,
                shuffle_events=t.shuffle_events,
            )
        )
    return out


def versus(rows: list[SchemeResult], latencies_ms: dict[str, np.ndarray]) -> list[Versus]:
    """Each coded scheme against ``equal`` (the same resources) and against the hedge whose measured extra
    load is nearest its own (hedging at the same extra load)."""
    hedges = [r for r in rows if r.name.startswith(HEDGED)]
    by_name = {r.name: r for r in rows}
    out = []
    for r in rows:
        if not r.name.startswith(CODED):
            continue
        rivals = [by_name[n] for n in ("equal",) if n in by_name]
        if hedges:
            rivals.append(min(hedges, key=lambda h: abs(h.extra_load - r.extra_load)))
        for rival in rivals:
            a, b = latencies_ms[rival.name], latencies_ms[r.name]
            out.append(
                Versus(r.name, rival.name, rival.extra_load, stats.ratio(a, b, "p99"), stats.ratio(a, b, "p99.9"))
            )
    return out


def published(profile: str, rows: list[SchemeResult]) -> tuple[plots.Published, ...]:
    """The papers' figures, placed on this run's frontier where they are relative to one of its baselines."""
    by = {r.name: r for r in rows}
    marks = []
    if "none" in by:  # the public anchor for budgeted hedging: p99 60-74% lower for 5-9% extra requests
        p99 = by["none"].figures["p99"].value
        label = "p99 budgeted hedging, published: 60-74% below none, +5-9%"
        marks.append(plots.Published(label, 0.07, 0.26 * p99, 0.4 * p99))
    if profile == "parm" and {"equal", "parm"} <= set(by):
        equal, parm = by["equal"].figures, by["parm"].figures
        tightest = parm["p50"].value + equal[stats.GAP].value / 3.5
        marks.append(
            plots.Published(
                "p99.9 ParM, published: gap up to 3.5x tighter than equal",
                by["parm"].extra_load, tightest, equal["p99.9"].value,
            )
        )  # fmt: skip
    if profile == "collage" and {"replicate", "collage2"} <= set(by):
        p99 = by["replicate"].figures["p99"].value
        marks.append(
            plots.Published("p99 Collage, published: 1.2-2x below replication's", by["collage2"].extra_load,
                            p99 / 2.0, p99 / 1.2)
        )  # fmt: skip
    return tuple(marks)


def _extra_load(route: str, calls_per_query: float) -> float:
    """Calls per query minus one; an uncoded route's is nil (one call per query, never retried): rows seen
    in its windows beyond that are another scheme's backlog."""
    return 0.0 if route.endswith("=none") else calls_per_query - 1.0


def recompute(report: Path) -> Path:
    """A written ``<tag>.json`` with extra load as :func:`_extra_load` takes it (reports written before it
    took extra load over ``none``'s rows, which a spilled backlog inflated): its JSON rewritten, a note
    appended to its Markdown, its frontier redrawn."""
    document = json.loads(report.read_text())
    rows = [_row_of(s) for s in document["schemes"]]
    for scheme, row in zip(document["schemes"], rows, strict=True):
        scheme["extra_load"] = row.extra_load
    report.write_text(json.dumps(document, indent=2))
    md = report.with_suffix(".md")
    note = "Extra load recomputed as calls per query minus one, nil for the uncoded routes: " + ", ".join(
        f"`{r.name}` {r.extra_load:+.1%}" for r in rows
    )
    if note not in md.read_text():
        md.write_text(md.read_text() + "\n" + note + ".\n")
    points = {r.name: (r.extra_load, r.figures["p99"], r.figures["p99.9"]) for r in rows}
    sweep = tuple(r.name for r in rows if r.name.startswith(HEDGED) and "_b" not in r.name)
    marks = published(document["testbed"]["profile"], rows)
    return plots.cost_frontier(report.parent, document["tag"], points, sweep, marks)


def _row_of(scheme: dict) -> SchemeResult:
    figures = {k: stats.Estimate(**v) for k, v in scheme["figures"].items()}
    cpu = CpuShare(**{k: v for k, v in scheme["cpu"].items() if k != "flagged"})
    fields = {k: scheme[k] for k in ("name", "route", "instances", "sent", "answered", "errors", "reconstructed")}
    return SchemeResult(
        **fields, figures=figures, calls_per_query=scheme["calls_per_query"],
        extra_load=_extra_load(scheme["route"], scheme["calls_per_query"]),
        utilisation={int(i): u for i, u in scheme["utilisation"].items()},
        cpu=cpu, stall_events=scheme["stall_events"], drain_s=scheme.get("drain_s", 0.0),
        shuffle_events=scheme.get("shuffle_events", 0),
    )  # fmt: skip


def cpu_overall(tallies: list[Tally]) -> CpuShare:
    return share_over([w for t in tallies for w in t.cpu])


def markdown(testbed: Testbed, rows: list[SchemeResult], info: RunInfo, compared: Sequence[Versus] = ()) -> str:
    lines = [
        f"# {info.tag}: the {testbed.profile} profile at {testbed.scale} scale",
        "",
        f"Command: `{info.command}`, {info.started_utc} to {info.finished_utc} UTC, commit {info.commit}; "
        f"load average {info.load_average[0]:.2f} at the start, {info.load_average[1]:.2f} at the end.",
        "",
        *_setup(testbed, rows),
        "",
        _flag_line(info.cpu, rows),
        "",
        "| scheme | instances | sent | answered | errors | rebuilt | p50 ms | p99 ms | p99.9 ms | p99.9 − p50 ms "
        "| calls per query | extra load | utilisation mean / max | CPU machine / own / niced | stalls |",
        "|---" * 15 + "|",
    ]
    for r in rows:
        errors = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
        f = r.figures
        lines.append(
            f"| {r.name} | {r.instances} | {r.sent} | {r.answered} | {errors} | {r.reconstructed} "
            f"| {f['p50'].format(1)} | {f['p99'].format(1)} | {f['p99.9'].format(1)} | {f[stats.GAP].format(1)} "
            f"| {r.calls_per_query:.3f} | {r.extra_load:+.1%} "
            f"| {r.mean_utilisation:.0%} / {max(r.utilisation.values()):.0%} "
            f"| {r.cpu.machine:.0%}{' FLAG' if r.cpu.flagged else ''} / {r.cpu.own:.0%} / {r.cpu.niced:.0%} "
            f"| {r.stall_events} |"
        )
    lines += [
        "",
        "Intervals: 95% percentile bootstrap; n>q: the samples beyond the quantile (thin: fewer than "
        f"{stats.MIN_BEYOND}). Extra load: Triton rows per query minus one; nil for the uncoded routes (one call per "
        "query: more rows in their windows are another scheme's spilled backlog). Utilisation: each instance's "
        "compute time (the emulated hold included) over the scheme's load windows.",
    ]
    if backlog := [f"`{r.name}` {r.drain_s:.0f} s" for r in rows if r.drain_s > DRAIN_NOTE_S * testbed.rounds]:
        lines += ["", f"Backlogs: instances kept working after the load (over all rounds): {', '.join(backlog)}."]
    if compared:
        lines += ["", "Baselines' latency over the coded schemes' (95% bootstrap, each run resampled alone):", ""]
        lines += [v.line() for v in compared]
    return "\n".join(lines) + "\n"


def _setup(testbed: Testbed, rows: Sequence[SchemeResult]) -> list[str]:
    law = testbed.figures
    return [
        f"- Law of every model: `{testbed.law}` (mean {law.mean_ms:.1f} ms, median {law.median_ms:.1f}, "
        f"p99 {law.p99_ms:.1f}); {testbed.law_source}.",
        f"- Time scale: emulated ms per paper ms = {testbed.time_scale:g} (rates and links divided, the frontends' "
        "timers and the stalls multiplied by it).",
        f"- Rate: {testbed.rate:.1f} q/s Poisson, {testbed.duration_s:g} s per scheme in {testbed.rounds} "
        f"interleaved round(s): utilisation {testbed.utilisation:.2f} of the {testbed.deployed} deployed instances "
        f"under `none` ({testbed.utilisation_source}).",
        "- Faults: " + (" ".join(_fault_lines(testbed, rows)) or "none beyond the law's own stragglers."),
    ]


def _fault_lines(testbed: Testbed, rows: Sequence[SchemeResult]) -> list[str]:
    """A sentence per fault that ran, with its settings."""
    lines = []
    if (stalls := testbed.stalls) is not None:
        lines.append(
            f"SIGSTOP stalls on every instance, each on its own schedule: {stalls.stall_ms[0]:g}-{stalls.stall_ms[1]:g}"
            f" ms, {stalls.every_s[0]:g}-{stalls.every_s[1]:g} s apart ({stalls.stalled_share:.1%} of the time "
            "stalled); the same schedule in every scheme's segment of a round."
        )
    if (shuffles := testbed.shuffles) is not None:
        link = testbed.link
        counts = ", ".join(f"{r.name} {r.shuffle_events}" for r in rows)
        lines.append(
            f"ParM's background shuffles: {testbed.shuffle_loops} at a time (one per {shuffles.per_workers} of the "
            f"{testbed.deployed} deployed instances), each {shuffles.megabytes[0]}-{shuffles.megabytes[1]} MB between "
            f"two random instances of all {testbed.instance_count}, every instance in a network namespace behind an "
            f"inbound link of {link.rate} (tbf, queue {link.limit}; the paper's 1 Gbit/s over the time scale); the "
            f"same draws in every scheme's segment of a round. Whole transfers per scheme: {counts}."
        )
    return lines


def _shuffles(testbed: Testbed) -> dict | None:
    if testbed.shuffles is None:
        return None
    return {**asdict(testbed.shuffles), "concurrent": testbed.shuffle_loops, "link": asdict(testbed.link)}


def _flag_line(overall: CpuShare, rows: list[SchemeResult]) -> str:
    flagged = [r.name for r in rows if r.cpu.flagged]
    head = (
        f"**CPU**: the machine was {overall.machine:.0%} busy over the load windows (this testbed's own processes "
        f"{overall.own:.0%} of all cores; the rest is other work on the machine, {overall.niced:.0%} of all cores "
        "in niced processes, which yield the cores to this testbed's). "
    )
    if flagged:
        return head + (
            f"**FLAG: above {CPU_FLAG_SHARE:.0%} during {', '.join(flagged)}: there the cores, not the instances, "
            "may set the tail.**"
        )
    return head + f"No scheme's windows passed {CPU_FLAG_SHARE:.0%}: the instances, not the cores, set the tail."


def write(
    out: Path, testbed: Testbed, rows: list[SchemeResult], info: RunInfo, compared: Sequence[Versus] = ()
) -> list[Path]:
    """``<tag>.md``, ``<tag>.json`` and ``<tag>-frontier.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{info.tag}.md", out / f"{info.tag}.json"
    md.write_text(markdown(testbed, rows, info, compared))
    document = {
        **asdict(info),
        "cpu_flagged": info.cpu.flagged or any(r.cpu.flagged for r in rows),
        "testbed": {
            "profile": testbed.profile,
            "scale": testbed.scale,
            "deployed": testbed.deployed,
            "law": testbed.law,
            "law_source": testbed.law_source,
            "law_figures_ms": asdict(testbed.figures),
            "time_scale": testbed.time_scale,
            "rate_qps": testbed.rate,
            "utilisation": testbed.utilisation,
            "utilisation_source": testbed.utilisation_source,
            "faults": list(testbed.faults),
            "stalls": asdict(testbed.stalls) if testbed.stalls else None,
            "shuffles": _shuffles(testbed),
            "duration_s": testbed.duration_s,
            "rounds": testbed.rounds,
            "instance_models": testbed.instance_models(),
            "frontend_flags": {s.name: testbed.frontend_flags(s) for s in testbed.schemes},
        },
        "cpu_flag_share": CPU_FLAG_SHARE,
        "schemes": [r.as_dict() for r in rows],
        "versus": [asdict(v) for v in compared],
    }
    js.write_text(json.dumps(document, indent=2))
    points = {r.name: (r.extra_load, r.figures["p99"], r.figures["p99.9"]) for r in rows}
    sweep = tuple(r.name for r in rows if r.name.startswith(HEDGED) and "_b" not in r.name)
    frontier = plots.cost_frontier(out, info.tag, points, sweep, published(testbed.profile, rows))
    return [md, js, frontier]


if __name__ == "__main__":
    import sys

    for path in sys.argv[1:]:
        print(recompute(Path(path)))
