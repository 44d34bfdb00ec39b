"""python -m bench.cpu_breakdown: where the CPU goes, per process, for each scheme under the same load.

Starts the comparison's stack (3 tritonservers, the coding services, one frontend per scheme), sends an
open-loop Poisson load through each scheme in turn with no faults, and reads every process's CPU time
(/proc/<pid>/stat, children included: Triton's backend stubs) before and after. Prints CPU ms per query
per process, so a scheme's extra cost can be traced to the process that pays it.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import numpy as np

from bench.load import load_frontend
from bench.proc import children, cpu_s
from bench.schemes import SCHEMES, frontend_specs
from bench.stack import REPO_ROOT, Stack, settled_triton_calls
from export import spec
from export.datasets import load
from service_common.logs import setup_logging


def processes(stack: Stack) -> dict[str, list[int]]:
    """Every process of the stack by role; a Triton's backend stubs count with it."""
    coding = ("encoder", "decoder")
    roles = {
        name if name in coding else f"frontend `{name}`": [service.proc.pid]
        for name, service in stack.services.items()
        if service.proc
    }
    for i, triton in enumerate(stack.tritons):
        assert triton.pid is not None
        roles[f"triton t{i}"] = [triton.pid, *children(triton.pid)]
    roles["load generator"] = [os.getpid()]
    return roles


def breakdown(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """scheme -> role -> CPU ms per query."""
    model = spec.deployed_model_name(args.dataset)
    parity = spec.parity_model_name(args.dataset, args.encoder, args.k)
    all_specs = frontend_specs(model, parity, k=args.k, encoder=args.encoder)
    specs = {name: s for name, s in all_specs.items() if name in args.schemes}
    images, _ = load(args.dataset, "test")
    n = int(args.rate * args.duration)
    queries = images[np.resize(np.arange(len(images)), n), None].astype(np.float32) / 255.0
    result: dict[str, dict[str, float]] = {}
    with Stack([model, parity], specs, triton_count=3, log_dir=REPO_ROOT / ".logs" / "cpu_breakdown") as stack:
        roles = processes(stack)
        for name in args.schemes:
            address = stack.address(name)
            asyncio.run(load_frontend(address, model, queries[: int(args.rate)], args.rate, desc=f"{name} warm-up"))
            before = {role: sum(map(cpu_s, pids)) for role, pids in roles.items()}
            asyncio.run(load_frontend(address, model, queries, args.rate, timeout_s=10.0, desc=name))
            settled_triton_calls(stack)  # losers and late parities finish inside this scheme's window
            result[name] = {role: 1e3 * (sum(map(cpu_s, pids)) - before[role]) / n for role, pids in roles.items()}
    return result


def markdown(result: dict[str, dict[str, float]]) -> str:
    schemes = list(result)
    roles = [r for r in next(iter(result.values())) if any(result[s][r] >= 0.01 for s in schemes)]
    lines = ["| process | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
    lines += [f"| {r} | " + " | ".join(f"{result[s][r]:.2f}" for s in schemes) + " |" for r in roles]
    lines.append("| total | " + " | ".join(f"{sum(result[s].values()):.2f}" for s in schemes) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(prog="python -m bench.cpu_breakdown", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--schemes", default="none,parm", help=f"comma-separated subset of {SCHEMES[1:]}")
    p.add_argument("--rate", type=float, default=150.0, help="Poisson arrivals per second")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load per scheme")
    p.add_argument("--dataset", default="mnist", choices=spec.DATASETS)
    p.add_argument("--encoder", default="concat", choices=spec.PARM_ENCODERS)
    p.add_argument("--k", type=int, default=2)
    args = p.parse_args(argv)
    args.schemes = [s for s in args.schemes.split(",") if s]
    unknown = set(args.schemes) - set(SCHEMES[1:])
    if unknown:
        raise SystemExit(f"unknown schemes {sorted(unknown)}; known: {SCHEMES[1:]}")
    setup_logging()
    table = markdown(breakdown(args))
    print(f"CPU ms per query, {args.rate:.0f} q/s for {args.duration:.0f} s per scheme, no faults:\n\n{table}")
    return table


if __name__ == "__main__":
    main()
