"""python -m bench.emulator_cost: the CPU the emulated accelerator time costs a local Triton per request.

Starts one tritonserver with no law and one per ``--law`` (``MODEL=LAW`` for ``--model``; see
``triton_local.service_time``), all at once, then sends ``--requests`` single-image ModelInfer calls, one
at a time, to each in turn, ``--rounds`` times interleaved. Prints, per server and round, the CPU seconds
per request of its whole process group (tritonserver and its backend stubs, from /proc, so the figure holds
on a shared machine better than a time does) and the difference from the server without a law. The default
law ``fixed:ms=0`` draws and compares a time on every execution but never sleeps: the emulator's own work.
Also prints each server's start-up time and the resident memory of its processes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from bench.proc import cpu_s
from export import spec
from service_common.logs import setup_logging
from triton_local import TritonConfig, TritonServer, shm
from triton_local.server import REPO_ROOT

log = logging.getLogger("bench.emulator_cost")
OFF = "off"


def group_cpu_s(server: TritonServer) -> float:
    """User + system CPU seconds of the server's process group (tritonserver and its stubs)."""
    assert server.pid is not None
    return sum(cpu_s(pid) for pid in shm.group(server.pid))


def group_rss_mb(server: TritonServer) -> list[float]:
    """Resident memory of each process of the group, tritonserver first, in MB."""
    assert server.pid is not None
    sizes = []
    for pid in sorted(shm.group(server.pid), key=lambda p: p != server.pid):
        status = Path(f"/proc/{pid}/status").read_text()
        sizes.append(int(status.split("VmRSS:", 1)[1].split()[0]) / 1024)
    return sizes


def cpu_per_request_s(server: TritonServer, model: str, requests: int) -> float:
    """Send ``requests`` single-image calls one at a time; the group's CPU seconds per call."""
    x = np.random.default_rng(0).standard_normal((1, *spec.IMAGE_SHAPE)).astype(np.float32)
    inputs = [grpcclient.InferInput(spec.INPUT_NAME, list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    with contextlib.closing(grpcclient.InferenceServerClient(server.grpc_url)) as client:
        client.infer(model, inputs)  # warm
        before = group_cpu_s(server)
        for _ in range(requests):
            client.infer(model, inputs)
        return (group_cpu_s(server) - before) / requests


def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """law -> CPU seconds per request in each round."""
    laws = [OFF, *args.law]
    servers = {
        law: TritonServer(
            TritonConfig(
                args.model_repository,
                models=(args.model,),
                log_path=args.log_dir / f"tritonserver-emulator-{i}.log",
                service_time="" if law == OFF else f"{args.model}={law}",
            )
        )
        for i, law in enumerate(laws)
    }
    with contextlib.ExitStack() as stack:
        for server in servers.values():
            stack.callback(server.stop)
            server.start()
        ready_s = {law: server.wait_ready() for law, server in servers.items()}
        results: dict[str, list[float]] = {law: [] for law in laws}
        for round_ in range(args.rounds):
            for law, server in servers.items():
                started = time.monotonic()
                results[law].append(cpu_per_request_s(server, args.model, args.requests))
                log.info("round %d %s: %.1f s", round_, law, time.monotonic() - started)
        for law, server in servers.items():
            rss = group_rss_mb(server)
            print(f"{law}: ready {ready_s[law]:.1f} s after start (all started at once); after the rounds, RSS "
                  f"tritonserver {rss[0]:.0f} MB, its stubs {', '.join(f'{mb:.0f}' for mb in rss[1:])} MB")  # fmt: skip
    return results


def markdown(results: dict[str, list[float]]) -> str:
    rounds = len(next(iter(results.values())))
    off = statistics.median(results[OFF])
    lines = [
        "| law | " + " | ".join(f"round {r + 1}" for r in range(rounds)) + " | median | minus off |",
        "|---|" + "---|" * (rounds + 2),
    ]
    for law, per_round in results.items():
        median = statistics.median(per_round)
        cells = " | ".join(f"{s * 1e6:.0f}" for s in per_round)
        lines.append(f"| {law} | {cells} | {median * 1e6:.0f} | {(median - off) * 1e6:+.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(
        prog="python -m bench.emulator_cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=spec.deployed_model_name("mnist"), help="model served (default %(default)s)")
    p.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    p.add_argument("--law", action="append", help="a law to measure against none (repeatable; default fixed:ms=0)")
    p.add_argument("--requests", type=int, default=2000, help="calls per server and round (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="(default %(default)s)")
    p.add_argument("--log-dir", type=Path, default=REPO_ROOT / ".logs")
    args = p.parse_args(argv)
    args.law = args.law or ["fixed:ms=0"]
    setup_logging()
    table = markdown(measure(args))
    print(f"CPU us per request of the Triton process group, {args.requests} sequential calls per round:\n\n{table}")
    return table


if __name__ == "__main__":
    main()
