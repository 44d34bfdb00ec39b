"""python -m bench.testbed --profile parm|collage|approxifer [--scale tiny|paper]: one interleaved run of every
scheme of a paper's layout, each Triton instance its own tritonserver with emulated accelerator time.
Writes ``<out>/<tag>.md``, ``.json``, ``-frontier.png`` and ``-latency.npz`` (tag: testbed-<profile>-<scale>)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.netns import unavailable
from bench.stack import REPO_ROOT
from bench.testbed import profiles
from bench.testbed.profiles import Testbed
from bench.testbed.report import RunInfo, SchemeResult, cpu_overall, results, versus, write
from bench.testbed.run import Workload, run
from export import spec
from export.datasets import load
from triton_local.service_time import ServiceTimeError, parse_law

log = logging.getLogger("bench.testbed")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.testbed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--profile", required=True, choices=profiles.PROFILES)
    p.add_argument("--scale", default="tiny", choices=profiles.SCALES, help="tiny: 4 deployed instances, for CI")
    p.add_argument(
        "--deployed",
        type=int,
        help="deployed instances m (default: the scale's, 12 or 4); the redundancy and the rate scale with it",
    )
    p.add_argument("--dataset", default="mnist", choices=spec.DATASETS)
    p.add_argument("--model", help="deployed model (default: <dataset>_cnn)")
    p.add_argument("--parity-model", help="ParM's parity model (default: from dataset, encoder, k)")
    p.add_argument("--encoder", default="concat", choices=spec.PARM_ENCODERS, help="ParM's encoder")
    p.add_argument("--k", type=int, default=2, help="ParM's queries per parity")
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    p.add_argument("--schemes", help="comma-separated subset of the profile's schemes (default: all)")
    p.add_argument("--duration", type=float, help="seconds of load per scheme (default: the scale's)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default: the scale's)")
    load_ = p.add_mutually_exclusive_group()
    load_.add_argument("--rate", type=float, help="Poisson q/s here (default: the profile's utilisation)")
    load_.add_argument("--utilisation", type=float, help="offered load per deployed instance under none")
    load_.add_argument(
        "--paper-rate",
        type=float,
        help=f"the utilisation of ParM's 12 instances at this q/s ({profiles.PARM_PAPER_RATES[0]:g}-"
        f"{profiles.PARM_PAPER_RATES[1]:g} in its fig9a) under the ResNet-18 law",
    )
    p.add_argument(
        "--law",
        help="every model's emulated law instead of the profile's, in emulated time (triton_local.service_time: "
        "e.g. samples:path=bench/results/law-resnet18-cpu.txt,scale=8,batch=linear:per_row=1); the rate follows "
        "its mean at the profile's utilisation",
    )
    p.add_argument("--law-source", help="where --law comes from, for the report (default: 'set by --law')")
    p.add_argument(
        "--faults",
        default="stalls",
        choices=profiles.FAULTS,
        help="SIGSTOP stalls; ParM's background shuffles (every instance in a network namespace behind a link at "
        "1 Gbit/s over the time scale; needs root); or both",
    )
    p.add_argument("--no-stalls", action="store_true", help="no SIGSTOP stalls (the law's own stragglers only)")
    p.add_argument("--seed", type=int, default=1, help="arrivals, stalls and emulated draws")
    p.add_argument("--tag", help="result file name stem (default: testbed-<profile>-<scale>)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    return p


def configure(args: argparse.Namespace) -> Testbed:
    """The profile at its scale, with the flags' overrides."""
    model = _model(args)
    parity = args.parity_model or spec.parity_model_name(args.dataset, args.encoder, args.k)
    more = {k: spec.parity_model_name(args.dataset, profiles.MORE_K_ENCODER, k) for k in profiles.MORE_K if k != args.k}
    bed = profiles.testbed(
        args.profile, args.scale, model, parity, args.encoder, args.k, more, args.deployed, args.faults
    )
    if args.schemes:
        wanted = args.schemes.split(",")
        if unknown := sorted(set(wanted) - {s.name for s in bed.schemes}):
            known = [s.name for s in bed.schemes]
            raise SystemExit(f"--schemes: {unknown} are not in the {args.profile} profile's {known}")
        bed = dataclasses.replace(bed, schemes=tuple(s for s in bed.schemes if s.name in wanted))
    if args.duration is not None:
        bed = dataclasses.replace(bed, duration_s=args.duration)
    if args.rounds is not None:
        bed = dataclasses.replace(bed, rounds=args.rounds)
    if args.no_stalls:
        bed = dataclasses.replace(bed, stalls=None)
    if args.law is not None:
        try:
            parse_law(args.law)
        except ServiceTimeError as exc:
            raise SystemExit(f"--law: {args.law!r}: {exc}") from None
        bed = dataclasses.replace(bed, law=args.law, law_source=args.law_source or "set by --law")
    if args.rate is not None:
        bed = bed.with_utilisation(args.rate * bed.figures.mean_ms / 1e3 / bed.deployed, f"set by --rate {args.rate:g}")
    elif args.utilisation is not None:
        bed = bed.with_utilisation(args.utilisation, "set by --utilisation")
    elif args.paper_rate is not None:
        bed = bed.with_utilisation(
            profiles.paper_utilisation(args.paper_rate), f"ParM's {args.paper_rate:g} q/s under the ResNet-18 law"
        )
    if not 1 <= bed.rounds <= bed.rate * bed.duration_s:
        raise SystemExit(f"--rounds must be between 1 and the number of queries, got {bed.rounds}")
    return bed


def _workload(args: argparse.Namespace, bed: Testbed) -> Workload:
    images, _ = load(args.dataset, "test")
    picks = np.resize(np.arange(len(images)), int(bed.rate * bed.duration_s))
    return Workload(images[picks, None].astype(np.float32) / 255.0, args.seed)


def _commit() -> str:
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    return described.stdout.strip() or "unknown"


def _utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def main(argv: list[str] | None = None) -> tuple[Testbed, list[SchemeResult]]:
    args = _parser().parse_args(argv)
    bed = configure(args)
    if bed.shuffles is not None and (why := unavailable()):
        raise SystemExit(f"--faults {args.faults}: shuffles need network namespaces, which cannot be made here: {why}")
    tag = args.tag or f"testbed-{args.profile}-{args.scale}"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("%s: %.1f q/s, law %s, %d instances", tag, bed.rate, bed.law, bed.instance_count)
    workload = _workload(args, bed)
    started, load_before, began = _utc(), os.getloadavg()[0], time.perf_counter()
    tallies = run(bed, workload, args.model_repository, REPO_ROOT / ".logs" / tag, _model(args))
    rows = results(tallies)
    command = "python -m bench.testbed " + " ".join(argv if argv is not None else sys.argv[1:])
    info = RunInfo(tag, command, started, _utc(), _commit(), cpu_overall(tallies), (load_before, os.getloadavg()[0]))
    latencies_s = {t.scheme.name: np.array([r.latency_s for r in t.records]) for t in tallies}
    paths = write(args.out, bed, rows, info, versus(rows, {n: 1e3 * v for n, v in latencies_s.items()}))
    np.savez_compressed(args.out / f"{tag}-latency.npz", **latencies_s)
    print(paths[0].read_text())
    print(f"wrote {', '.join(str(p) for p in paths)} in {time.perf_counter() - began:.0f} s")
    return bed, rows


def _model(args: argparse.Namespace) -> str:
    model: str = args.model or spec.deployed_model_name(args.dataset)
    return model


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so every process and stall is cleaned up (stalled instances SIGCONTed).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    main()
