"""python -m bench.compare: every scheme against the baselines, same machine, same faults, one run.

Starts 3 tritonservers (t0, t1, t2) serving the deployed and parity models, the coding services,
and one frontend per scheme:

  none       no redundancy, deployed model on t0, t1
  equal      no redundancy on t0, t1, t2: the instance coding adds serves as one more replica
  hedge2/3   hedged requests over t0, t1 (or t0..t2), delay = observed p95 (The Tail at Scale)
  replicate  every query to two of t0, t1 (+100% load): the upper bound on tail masking
  parm       ParM k=2: deployed model on t0, t1, parity model on t2 (+50% requests)
  parm_local the same ParM with --coding local: encode and decode inside the frontend, no hop
  collage2/3 Collage-CNN s = 2, 3: deployed model on t0, t1, collage model on t2 (+25% / +11%);
             on request (--schemes), as they need model_repository/<dataset>_collage_s<s>
  collage2_resend  collage2 with Collage's fallback: a query neither answered nor rebuildable after
             --resend-after-ms is sent once more, to the other deployed instance
  coin_*     COIN's set <dataset>_coin (on request): every query answered by members m0, m1 on t0, t1;
             coin = the Fisher-averaged coded model on t2 (+50%), against the same set uncoded
             (coin_none), hedged over t0, t1 or t0..t2 (coin_hedge2/3), replicated (coin_replicate)
  approxifer ApproxIFER K=2, S=1: N=3 Berrut-coded queries on the deployed model, t0..t2 (+50%);
             every answer is decoded (approximate), no parity model to train
  direct     the load generator straight to Triton t0, no frontend: the floor

Then, for each scheme in turn, an open-loop Poisson load with a fault profile injected from
outside (SIGSTOP stalls, a CPU tenant, SIGKILLed workers, held network links, ParM's shuffles),
or Collage-CNN's service-time recipe emulated in the Tritons (each execution holds its instance).
With --netns (forced by the network profiles) each tritonserver runs in its own network namespace
behind a shaped link.
Writes a Markdown table, JSON and PNG plots to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench import plots, stats
from bench.faults import PROFILES, SERVICE_TIMES
from bench.load import Record, Sender, frontend_sender, run_load, triton_sender
from bench.netns import WorkerNetwork, unavailable
from bench.report import Summary, markdown_table, summarize
from bench.schemes import (
    CODED,
    COIN_SCHEMES,
    DEFAULT_SCHEMES,
    FILL_TIMEOUT_MS,
    RESEND_AFTER_MS,
    SCHEMES,
    STRAGGLER_TIMEOUT_MS,
    coin_models,
    coin_set,
    collage_models,
    frontend_specs,
)
from bench.stack import REPO_ROOT, Stack, settled_triton_calls
from export import spec
from export.datasets import load
from service_common.logs import setup_logging

log = logging.getLogger("bench.compare")


@dataclass(frozen=True)
class RoundFigures:
    """One scheme in one round. A round in which every scheme's median and CPU rose was the machine
    (this VM's speed drifts), not a scheme: the report prints these so a reader can tell."""

    p50_ms: float
    p999_ms: float
    cpu_ms_per_query: float

    @classmethod
    def of(cls, records: list[Record], cpu_s: float) -> RoundFigures:
        latencies_ms = 1e3 * np.array([r.latency_s for r in records])
        p50, p999 = np.percentile(latencies_ms, [50, 99.9]) if len(latencies_ms) else (float("nan"),) * 2
        return cls(float(p50), float(p999), 1e3 * cpu_s / max(1, len(records)))


@dataclass(frozen=True)
class SchemeRun:
    summary: Summary
    triton_calls: int  # ModelInfer executions counted by the Tritons themselves, all models
    fault_events: int
    cpu_s: float = 0.0  # the whole machine's busy CPU time while this scheme's load ran (every process)
    calls_needed: int = 1  # Triton calls one query needs without redundancy (a COIN set: one per member)
    rounds: tuple[RoundFigures, ...] = ()  # in round order
    # every query's latency, for the headline's intervals (bench.stats)
    latencies_ms: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0), compare=False, repr=False)

    @property
    def cpu_ms_per_query(self) -> float:
        return 1e3 * self.cpu_s / self.summary.queries

    @property
    def extra_load(self) -> float:
        return self.triton_calls / (self.summary.queries * self.calls_needed) - 1.0


def cpu_busy_s() -> float:
    """Seconds of CPU time the whole machine has spent busy since boot (all cores; /proc/stat's first line
    minus idle and iowait). On a machine this run has to itself, a difference of two readings is what the
    scheme under test cost: its frontend, the coding services, the Tritons, the load generator, the faults."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def _run_scheme(
    name: str, stack: Stack, model: str, images: np.ndarray, rate: float, desc: str, seed: int = 0
) -> list[Record]:
    if name == "direct":
        client = triton_aio.InferenceServerClient(stack.tritons[0].grpc_url)
        try:
            return await run_load(triton_sender(client, model, images, 10.0), len(images), rate, seed=seed, desc=desc)
        finally:
            await client.close()
    async with grpc.aio.insecure_channel(stack.address(name)) as channel:
        send: Sender = frontend_sender(pb_grpc.FrontendStub(channel), model, images, 10.0)
        return await run_load(send, len(images), rate, seed=seed, desc=desc)


def run_all(args: argparse.Namespace) -> list[SchemeRun]:
    model = args.model or spec.deployed_model_name(args.dataset)
    parity = args.parity_model or spec.parity_model_name(args.dataset, args.encoder, args.k)
    images, labels = load(args.dataset, "test")
    n = int(args.rate * args.duration)
    picks = np.resize(np.arange(len(images)), n)
    queries, truth = images[picks, None].astype(np.float32) / 255.0, labels[picks]
    all_specs = frontend_specs(
        model,
        parity,
        k=args.k,
        encoder=args.encoder,
        straggler_timeout_ms=args.straggler_timeout_ms,
        fill_timeout_ms=args.fill_timeout_ms,
        straggler_quantile=args.straggler_quantile or None,
        adaptive_fill=args.adaptive_fill,
        coding=args.coding,
        batch_inflight=args.batch_inflight,
        resend_after_ms=args.resend_after_ms,
    )
    specs = {name: s for name, s in all_specs.items() if name in args.schemes}
    served = {name: coin_set(model) if name in COIN_SCHEMES else model for name in args.schemes}
    extra = coin_models(coin_set(model)) if set(args.schemes) & set(COIN_SCHEMES) else []
    runs = []
    with contextlib.ExitStack() as resources:
        network = resources.enter_context(WorkerNetwork(3)) if args.netns else None
        stack = resources.enter_context(
            Stack(
                [model, parity, *collage_models(args.dataset, args.schemes), *extra],
                specs,
                model_repository=args.model_repository,
                triton_count=3,
                log_dir=REPO_ROOT / ".logs" / "compare",
                network=network,
                service_time=SERVICE_TIMES.get(args.profile, ""),
                service_time_seed=args.seed,
            )
        )
        calls = dict.fromkeys(args.schemes, 0)
        cpu = dict.fromkeys(args.schemes, 0.0)
        events = dict.fromkeys(args.schemes, 0)
        records: dict[str, list[Record]] = {name: [] for name in args.schemes}
        rounds: dict[str, list[RoundFigures]] = {name: [] for name in args.schemes}
        for r, segment in enumerate(np.array_split(np.arange(n), args.rounds)):
            for name in _rotated(args.schemes, r):
                if r == 0:
                    # An unmeasured second of load first: connections, Triton's first inferences, the hedge window.
                    warm = queries[: int(args.rate)]
                    asyncio.run(_run_scheme(name, stack, served[name], warm, args.rate, f"{name} warm-up"))
                before, cpu_before = settled_triton_calls(stack), cpu_busy_s()
                # Round r replays the same fault schedule (seed) and arrival times for every scheme.
                with PROFILES[args.profile](stack.tritons, seed=args.seed + r, network=network) as faults:
                    desc = name if args.rounds == 1 else f"{name} {r + 1}/{args.rounds}"
                    got = asyncio.run(_run_scheme(name, stack, served[name], queries[segment], args.rate, desc, seed=r))
                # A killed worker's counter restarts at 0: add what it had counted when it was killed.
                calls[name] += settled_triton_calls(stack) - before + faults.calls_lost_to_kills
                round_cpu = cpu_busy_s() - cpu_before  # after settling: the losers' work counts too
                cpu[name] += round_cpu
                rounds[name].append(RoundFigures.of(got, round_cpu))
                events[name] += faults.events
                records[name] += [dataclasses.replace(rec, index=int(segment[rec.index])) for rec in got]
        for name in args.schemes:
            summary = summarize(name, records[name], truth)
            needed = len(coin_models(coin_set(model))) - 1 if name in COIN_SCHEMES else 1
            latencies_ms = 1e3 * np.array([r.latency_s for r in records[name]])
            run = SchemeRun(summary, calls[name], events[name], cpu[name], needed, tuple(rounds[name]), latencies_ms)
            runs.append(run)
            log.info(
                "%s: p50 %.2f ms, p99.9 %.2f ms, %d reconstructed, %d fault events",
                name,
                summary.p50_ms,
                summary.p999_ms,
                summary.reconstructed,
                events[name],
            )
            _keep_latencies(args, name, records[name])
    return runs


def _rotated(names: list[str], r: int) -> list[str]:
    """Round r starts at scheme r: slow drifts of the machine do not always hit the same scheme last."""
    shift = r % len(names)
    return names[shift:] + names[:shift]


def _keep_latencies(args: argparse.Namespace, name: str, records: list[Record]) -> None:
    np.save(args.out / f"{args.tag}-{name}-latency.npy", np.array([r.latency_s for r in records]))


def write_report(args: argparse.Namespace, runs: list[SchemeRun]) -> Path:
    by = {r.summary.name: r for r in runs}
    lines = [
        f"# {args.tag}: {args.dataset}, {args.rate:.0f} q/s Poisson for {args.duration:.0f} s per scheme"
        + (f" in {args.rounds} interleaved rounds" if args.rounds > 1 else "")
        + f", fault profile `{args.profile}`",
        "",
        f"Command: `{args.command}`",
        "",
        markdown_table([r.summary for r in runs]),
        "",
        "| scheme | Triton calls per query | extra load | CPU ms per query (whole machine) | fault events "
        "| p99.9 - p50 (ms) [95% interval] |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        s = r.summary
        gap = s.intervals[stats.GAP].format(2) if stats.GAP in s.intervals else f"{s.p999_ms - s.p50_ms:.2f}"
        lines.append(
            f"| {s.name} | {r.triton_calls / s.queries:.3f} | {r.extra_load:+.1%} | {r.cpu_ms_per_query:.2f} "
            f"| {r.fault_events} | {gap} |"
        )
    lines += ["", *_per_round(runs), "", *_headline(by)]
    path = args.out / f"{args.tag}.md"
    path.write_text("\n".join(lines) + "\n")
    (args.out / f"{args.tag}.json").write_text(
        json.dumps(
            {
                "command": args.command,
                "runs": [
                    {
                        **r.summary.as_dict(),
                        "triton_calls": r.triton_calls,
                        "extra_load": r.extra_load,
                        "cpu_ms_per_query": r.cpu_ms_per_query,
                        "fault_events": r.fault_events,
                        "rounds": [dataclasses.asdict(f) for f in r.rounds],
                    }
                    for r in runs
                ],
            },
            indent=2,
        )
    )
    return path


def _per_round(runs: list[SchemeRun]) -> list[str]:
    """p50 / p99.9 ms and the machine's CPU ms per query of each scheme in each round (empty for one round)."""
    count = max((len(r.rounds) for r in runs), default=0)
    if count < 2:
        return []
    lines = [
        "Per round (p50 / p99.9 ms, whole-machine CPU ms per query). Every scheme ran in every round, with the same "
        "arrivals and fault schedule; a round where every scheme's median and CPU rose was the machine, not a scheme:",
        "",
        "| scheme | " + " | ".join(f"round {i + 1}" for i in range(count)) + " |",
        "|---" * (count + 1) + "|",
    ]
    for r in runs:
        cells = [f"{f.p50_ms:.1f} / {f.p999_ms:.1f}, {f.cpu_ms_per_query:.2f}" for f in r.rounds]
        lines.append(f"| {r.summary.name} | " + " | ".join(cells) + " |")
    return lines


def _headline(by: dict[str, SchemeRun]) -> list[str]:
    """(p99.9 - p50) of each coded scheme against each baseline, and the medians side by side. Each ratio
    has a 95% bootstrap interval, both runs resampled independently (bench.stats)."""
    gap = {n: r.summary.p999_ms - r.summary.p50_ms for n, r in by.items()}
    boots = {
        n: stats.Bootstrap.of(r.latencies_ms, seed=i) for i, (n, r) in enumerate(by.items()) if len(r.latencies_ms)
    }
    out = []
    for coded in (c for c in CODED if c in by and gap[c] > 0):
        out += [
            "",
            f"Headline for {coded} (ratios of p99.9 - p50, 95% interval; > 1 means {coded}'s tail is tighter):",
            "",
        ]
        bases = ("none", "equal", "hedge2", "hedge3", "replicate", "direct")
        for base in (f"coin_{b}" for b in bases) if coded == "coin" else bases:  # a set against the set
            if base in gap:
                ratio = f"{gap[base] / gap[coded]:.2f}x"
                if base in boots and coded in boots:
                    ratio = boots[base].ratio(boots[coded]).format(2, unit="x")
                out.append(
                    f"- {base}: {gap[base]:.2f} ms vs {coded} {gap[coded]:.2f} ms -> {ratio}; "
                    f"median {by[base].summary.p50_ms:.2f} vs {by[coded].summary.p50_ms:.2f} ms"
                )
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="mnist", choices=spec.DATASETS)
    p.add_argument("--encoder", default="concat", choices=spec.PARM_ENCODERS)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--rate", type=float, default=150.0, help="Poisson arrivals per second")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per scheme")
    p.add_argument("--profile", default="stalls", choices=sorted(PROFILES))
    p.add_argument("--schemes", default=",".join(DEFAULT_SCHEMES), help=f"comma-separated subset of {SCHEMES}")
    p.add_argument("--straggler-timeout-ms", type=float, default=STRAGGLER_TIMEOUT_MS, help="coded schemes' (cap)")
    p.add_argument("--fill-timeout-ms", type=float, default=FILL_TIMEOUT_MS, help="coded schemes' (cap)")
    p.add_argument("--straggler-quantile", type=float, default=0.95, help="coded schemes: adaptive deadline (0: fixed)")
    p.add_argument("--adaptive-fill", action="store_true", help="coded schemes: adaptive fill timeout")
    p.add_argument("--coding", choices=("services", "local"), default="services", help="parm and approxifer")
    p.add_argument("--batch-inflight", type=int, default=1, help="every frontend's calls in flight per instance")
    p.add_argument(
        "--resend-after-ms",
        type=float,
        default=RESEND_AFTER_MS,
        help="collage2_resend: Collage's fallback deadline (a query neither answered nor rebuildable is resent)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="split each scheme's duration into this many segments, run round-robin over the schemes "
        "(interleaved: every scheme sees the machine at every stage of the run)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--netns",
        action="store_true",
        help="run each tritonserver in its own network namespace behind a shaped link (root only; "
        "forced by the network profiles netdelay and shuffles)",
    )
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    p.add_argument("--model", default=None, help="deployed model (default: <dataset>_cnn)")
    p.add_argument("--parity-model", default=None, help="parity model (default: from dataset, encoder, k)")
    p.add_argument("--tag", default=None, help="result file name stem (default: <profile>-<rate>qps)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    return p


def main(argv: list[str] | None = None) -> list[SchemeRun]:
    args = _parser().parse_args(argv)
    args.schemes = [s for s in args.schemes.split(",") if s]
    unknown = set(args.schemes) - set(SCHEMES)
    if unknown:
        raise SystemExit(f"unknown schemes {sorted(unknown)}; known: {SCHEMES}")
    if args.rounds < 1 or args.rounds > args.rate * args.duration:
        raise SystemExit(f"--rounds must be between 1 and the number of queries, got {args.rounds}")
    args.tag = args.tag or f"{args.profile}-{args.rate:.0f}qps"
    if PROFILES[args.profile].needs_network:
        args.netns = True
    if args.netns and (reason := unavailable()):
        raise SystemExit(f"--netns / profile {args.profile!r}: {reason}")
    args.command = "python -m bench.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    began = time.perf_counter()
    runs = run_all(args)
    report = write_report(args, runs)
    plots.latency_plots(args.out, args.tag, [r.summary.name for r in runs])
    print(report.read_text())
    print(f"wrote {report} and plots in {time.perf_counter() - began:.0f} s")
    return runs


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so every process, namespace and injected fault is cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    main()
