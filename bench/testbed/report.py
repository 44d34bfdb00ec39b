"""A testbed run's report: one row per scheme (tail latency with intervals, extra inference load, instance
utilisation, CPU share), the CPU flag, as Markdown and JSON, and the cost frontier as a PNG."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench import plots, stats
from bench.testbed.measure import CPU_FLAG_SHARE, CpuShare, share_over
from bench.testbed.profiles import Testbed
from bench.testbed.run import Tally

BASELINE = "none"


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
    """Each tally's figures; extra load is relative to ``none`` where it ran (else to one call per query)."""
    per_query = {t.scheme.name: t.rows / max(1, len(t.records)) for t in tallies}
    base = per_query.get(BASELINE, 1.0)
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
                extra_load=per_query[t.scheme.name] / base - 1.0,
                utilisation=t.utilisation(),
                cpu=t.cpu_share,
                stall_events=t.stall_events,
            )
        )
    return out


def cpu_overall(tallies: list[Tally]) -> CpuShare:
    return share_over([w for t in tallies for w in t.cpu])


def markdown(testbed: Testbed, rows: list[SchemeResult], info: RunInfo) -> str:
    lines = [
        f"# {info.tag}: the {testbed.profile} profile at {testbed.scale} scale",
        "",
        f"Command: `{info.command}`, {info.started_utc} to {info.finished_utc} UTC, commit {info.commit}; "
        f"load average {info.load_average[0]:.2f} at the start, {info.load_average[1]:.2f} at the end.",
        "",
        *_setup(testbed),
        "",
        _flag_line(info.cpu, rows),
        "",
        "| scheme | instances | sent | answered | errors | rebuilt | p50 ms | p99 ms | p99.9 ms | p99.9 − p50 ms "
        "| calls per query | extra load | utilisation mean / max | CPU machine / own | stalls |",
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
            f"| {r.cpu.machine:.0%}{' FLAG' if r.cpu.flagged else ''} / {r.cpu.own:.0%} | {r.stall_events} |"
        )
    lines += [
        "",
        "Intervals: 95% percentile bootstrap; n>q: the samples beyond the quantile (thin: fewer than "
        f"{stats.MIN_BEYOND}). Extra load: Triton rows per query over `{BASELINE}`'s. Utilisation: each instance's "
        "compute time (the emulated hold included) over the scheme's load windows.",
    ]
    return "\n".join(lines) + "\n"


def _setup(testbed: Testbed) -> list[str]:
    law = testbed.figures
    stalls = testbed.stalls
    return [
        f"- Law of every model: `{testbed.law}` (mean {law.mean_ms:.1f} ms, median {law.median_ms:.1f}, "
        f"p99 {law.p99_ms:.1f}); {testbed.law_source}.",
        f"- Time scale: emulated ms per paper ms = {testbed.time_scale:g} (rates divided, the frontends' timers and "
        "the stalls multiplied by it).",
        f"- Rate: {testbed.rate:.1f} q/s Poisson, {testbed.duration_s:g} s per scheme in {testbed.rounds} "
        f"interleaved round(s): utilisation {testbed.utilisation:.2f} of the {testbed.deployed} deployed instances "
        f"under `none` ({testbed.utilisation_source}).",
        "- Faults: "
        + (
            f"SIGSTOP stalls on every instance, each on its own schedule: {stalls.stall_ms[0]:g}-{stalls.stall_ms[1]:g}"
            f" ms, {stalls.every_s[0]:g}-{stalls.every_s[1]:g} s apart ({stalls.stalled_share:.1%} of the time "
            "stalled); the same schedule in every scheme's segment of a round."
            if stalls is not None
            else "none beyond the law's own stragglers."
        ),
    ]


def _flag_line(overall: CpuShare, rows: list[SchemeResult]) -> str:
    flagged = [r.name for r in rows if r.cpu.flagged]
    head = (
        f"**CPU**: the machine was {overall.machine:.0%} busy over the load windows (this testbed's own processes "
        f"{overall.own:.0%} of all cores; the rest is other work on the machine). "
    )
    if flagged:
        return head + (
            f"**FLAG: above {CPU_FLAG_SHARE:.0%} during {', '.join(flagged)}: there the cores, not the instances, "
            "may set the tail.**"
        )
    return head + f"No scheme's windows passed {CPU_FLAG_SHARE:.0%}: the instances, not the cores, set the tail."


def write(out: Path, testbed: Testbed, rows: list[SchemeResult], info: RunInfo) -> list[Path]:
    """``<tag>.md``, ``<tag>.json`` and ``<tag>-frontier.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{info.tag}.md", out / f"{info.tag}.json"
    md.write_text(markdown(testbed, rows, info))
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
            "stalls": asdict(testbed.stalls) if testbed.stalls else None,
            "duration_s": testbed.duration_s,
            "rounds": testbed.rounds,
            "instance_models": testbed.instance_models(),
            "frontend_flags": {s.name: testbed.frontend_flags(s) for s in testbed.schemes},
        },
        "cpu_flag_share": CPU_FLAG_SHARE,
        "schemes": [r.as_dict() for r in rows],
    }
    js.write_text(json.dumps(document, indent=2))
    points = {r.name: (r.extra_load, r.figures["p99"], r.figures["p99.9"]) for r in rows}
    return [md, js, plots.cost_frontier(out, info.tag, points)]
