"""python -m bench.perf_compare: Triton's perf_analyzer against Triton directly and against the frontend.

Starts the stack (real tritonserver on CPU, encoder, decoder, a coded and an uncoded frontend, each also
serving Triton's KServe v2 protocol on its own port), then runs the same perf_analyzer command, changing
only ``-u``, against Triton's gRPC port and against each frontend's KServe port, one concurrency level
at a time with the targets alternating (so a change in background load hits all of them alike).
Prints each output and a table of throughput and median-latency ratios against Triton, and writes the
result into docs/kserve.md between markers, with the commands, the machine and a link to the raw outputs,
which go to bench/results/perf_compare/ (one ``<target>_c<concurrency>.txt`` and ``.csv`` each).
perf_analyzer comes from bench/perf_tools.sh (installed on first use).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.stack import REPO_ROOT, FrontendSpec, Stack, floor_proxy
from export import spec
from service_common.logs import setup_logging

log = logging.getLogger("bench.perf_compare")

PERF_TOOLS = REPO_ROOT / "bench" / "perf_tools.sh"
PERF_ANALYZER = REPO_ROOT / ".perf-venv" / "bin" / "perf_analyzer_run"
DOC = REPO_ROOT / "docs" / "kserve.md"
BEGIN, END = "<!-- PERF-COMPARE:BEGIN -->", "<!-- PERF-COMPARE:END -->"
# triton: Triton's own gRPC port; floor: bench.floor_proxy (raw-bytes passthrough to the same Triton);
# uncoded, coded, coded_local: the frontends' KServe ports (coded_local: --coding local, no coding hops).
TARGETS = ("triton", "floor", "uncoded", "coded", "coded_local")


@dataclass(frozen=True)
class Run:
    target: str
    concurrency: int
    command: list[str]
    output: str
    throughput: float  # inferences per second
    p50_us: float
    p99_us: float


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.perf_compare", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--models",
        choices=("auto", "mnist", "linear"),
        default="auto",
        help="mnist: the trained mnist_cnn + mnist_parm_concat_k2 from model_repository/; linear: the "
        "test suite's linear model + exact parity model; auto: mnist when present, else linear",
    )
    p.add_argument(
        "--wait-models-s",
        type=float,
        default=0.0,
        help="poll this long for model_repository/mnist_cnn/1/model.onnx before falling back",
    )
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated perf_analyzer concurrency levels")
    p.add_argument("--request-count", type=int, default=1000, help="requests per measurement window")
    p.add_argument(
        "--stability",
        type=float,
        default=25.0,
        help="perf_analyzer -s: windows agree on p50 latency and throughput within this percent",
    )
    p.add_argument("--max-trials", type=int, default=20, help="perf_analyzer --max-trials (windows per level)")
    p.add_argument("--fill-timeout-ms", type=float, default=5.0, help="the coded frontend's fill timeout")
    p.add_argument("--straggler-timeout-ms", type=float, default=20.0, help="the coded frontend's straggler timeout")
    p.add_argument(
        "--frontend-flags",
        default="",
        help="more flags for every frontend, e.g. '--batch-inflight 2'",
    )
    p.add_argument("--images", type=int, default=256, help="MNIST test images in perf_analyzer's input data")
    p.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results" / "perf_compare")
    p.add_argument("--doc", type=Path, default=DOC, help="Markdown file whose marked section gets the result")
    return p


def _mnist_ready() -> bool:
    names = (spec.deployed_model_name("mnist"), spec.parity_model_name("mnist", "concat", 2))
    folders = [REPO_ROOT / "model_repository" / n for n in names]
    return all((f / "1" / "model.onnx").exists() and (f / "config.pbtxt").exists() for f in folders)


def _choose_models(args: argparse.Namespace, scratch: Path) -> tuple[Path, list[str], str]:
    """(repository, models to load, the coded route)."""
    deadline = time.monotonic() + args.wait_models_s
    waited = False
    while args.models != "linear" and not _mnist_ready() and time.monotonic() < deadline:
        log.info("waiting for model_repository/mnist_cnn and mnist_parm_concat_k2 (training?)")
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))
        waited = True
    if waited and _mnist_ready():
        time.sleep(15.0)  # they just appeared: let the exporter finish writing
    if args.models == "mnist" or (args.models == "auto" and _mnist_ready()):
        if not _mnist_ready():
            raise SystemExit("perf_compare: model_repository has no mnist_cnn + mnist_parm_concat_k2 yet")
        deployed, parity = spec.deployed_model_name("mnist"), spec.parity_model_name("mnist", "concat", 2)
        return REPO_ROOT / "model_repository", [deployed, parity], f"{deployed}=parm:k=2,encoder=concat"
    from tests.integration import linear_models  # the test suite's exact linear models, only as a stand-in

    log.warning("using the linear test models (the MNIST models are not in model_repository/)")
    models = linear_models.write_repository(scratch / "repo")
    route = f"{linear_models.DEPLOYED}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}"
    return scratch / "repo", models, route


def _input_data(path: Path, count: int) -> Path:
    """Real MNIST test images as perf_analyzer JSON input data (random data would not be images)."""
    from export.datasets import load

    images = load("mnist", "test")[0][:count].astype(np.float32) / 255.0
    rows = [{spec.INPUT_NAME: {"content": img.ravel().tolist(), "shape": list(spec.IMAGE_SHAPE)}} for img in images]
    path.write_text(json.dumps({"data": rows}))
    return path


def _command(args: argparse.Namespace, model: str, url: str, concurrency: int, data: Path, csv_path: Path) -> list[str]:
    return [
        str(PERF_ANALYZER),
        "-m",
        model,
        "-i",
        "grpc",
        "-u",
        url,
        "-b",
        "1",
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(args.request_count),
        "-s",
        str(args.stability),
        "--percentile=50",
        "--max-trials",
        str(args.max_trials),
        "--input-data",
        str(data),
        "-f",
        str(csv_path),
    ]


def _perf_analyzer(target: str, concurrency: int, command: list[str], csv_path: Path) -> Run:
    log.info("perf_analyzer: %s at concurrency %d", target, concurrency)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"perf_analyzer failed against {target} (rc {done.returncode}):\n{output}")
    row = next(csv.DictReader(io.StringIO(csv_path.read_text())))
    return Run(
        target,
        concurrency,
        command,
        output,
        float(row["Inferences/Second"]),
        float(row["p50 latency"]),
        float(row["p99 latency"]),
    )


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
        "tritonserver 2.51.0 (CPU, Python-based onnxruntime backend), perf_analyzer 2.51.0; "
        f"load average before the run {os.getloadavg()[0]:.2f}"
    )


def _table(runs: list[Run]) -> str:
    lines = [
        "| concurrency | target | infer/s | p50 (ms) | p99 (ms) | throughput vs Triton | vs floor | p50 vs floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {r.concurrency: r for r in runs if r.target == "triton"}
    floor = {r.concurrency: r for r in runs if r.target == "floor"}
    for r in sorted(runs, key=lambda r: (r.concurrency, TARGETS.index(r.target))):
        b, f = base[r.concurrency], floor[r.concurrency]
        lines.append(
            f"| {r.concurrency} | {r.target} | {r.throughput:.1f} | {r.p50_us / 1e3:.2f} | {r.p99_us / 1e3:.2f} | "
            f"{r.throughput / b.throughput:.2f}x | {r.throughput / f.throughput:.2f}x | {r.p50_us / f.p50_us:.2f}x |"
        )
    return "\n".join(lines)


def _report(
    runs: list[Run], machine: str, models: list[str], route: str, argv: list[str], seconds: float, outputs: str
) -> str:
    """The doc's section; ``outputs`` is the raw outputs' folder relative to the doc."""
    example = {t: next(r for r in runs if r.target == t) for t in TARGETS}
    commands = "\n".join(f"# {t}\n{shlex.join(_portable(r.command))}" for t, r in example.items())
    return "\n".join(
        [
            BEGIN,
            f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} in {seconds:.0f} s on: {machine}.",
            "Triton, the encoder, the decoder, the floor proxy, the frontends and perf_analyzer all share these "
            "cores (the load "
            "average counts any other work on the machine too), so the ratios are what matters, not the absolutes.",
            "",
            f"Models: {', '.join(models)}; coded frontends' route `{route}` (coded: the encoder and decoder "
            f"services; coded_local: `--coding local`); uncoded frontend route `{models[0]}=none`. Input: real "
            "MNIST test images (`--input-data`), batch 1.",
            "",
            "```bash",
            f"python -m bench.perf_compare {shlex.join(argv)}".rstrip(),
            "```",
            "",
            "The perf_analyzer commands at concurrency 1 (the same for every level but `--concurrency-range`; "
            "only `-u` differs between targets: Triton's gRPC port, then each frontend's KServe port):",
            "",
            "```bash",
            commands,
            "```",
            "",
            _table(runs),
            "",
            f"perf_analyzer's full output for each target and concurrency: [{outputs}/]({outputs}/) "
            "(`<target>_c<concurrency>.txt`, and the `.csv` it wrote).",
            END,
        ]
    )


def _portable(command: list[str]) -> list[str]:
    """The command as a reader would type it (repository-relative paths, temp files named generically)."""
    out = []
    for part in command:
        part = part.replace(str(REPO_ROOT) + "/", "")
        out.append(re.sub(r"^/tmp/[^ ]*/", "/tmp/", part))
    return out


def _write_doc(doc: Path, block: str) -> None:
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def _measure(args: argparse.Namespace, model: str, urls: dict[str, str], data: Path) -> list[Run]:
    """Every concurrency level, the targets alternating within each level."""
    runs = []
    for c in (int(level) for level in args.concurrency.split(",") if level):
        for target in TARGETS:
            csv_path = args.results / f"{target}_c{c}.csv"
            run = _perf_analyzer(target, c, _command(args, model, urls[target], c, data, csv_path), csv_path)
            (args.results / f"{target}_c{c}.txt").write_text(run.output)
            print(run.output)
            runs.append(run)
    return runs


def main() -> None:
    args = _parser().parse_args()
    setup_logging()
    subprocess.run(["bash", str(PERF_TOOLS)], check=True)
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="perf_compare.") as tmp:
        scratch = Path(tmp)
        repository, models, route = _choose_models(args, scratch)
        machine, began = _machine(), time.perf_counter()  # after any wait for the models
        data = _input_data(scratch / "mnist_input.json", args.images)
        coded = [
            "--route",
            route,
            "--fill-timeout-ms",
            str(args.fill_timeout_ms),
            "--straggler-timeout-ms",
            str(args.straggler_timeout_ms),
        ]
        extra = shlex.split(args.frontend_flags)
        frontends = {
            "coded": FrontendSpec(flags=[*coded, *extra], kserve=True),
            "coded_local": FrontendSpec(flags=[*coded, *extra, "--coding", "local"], kserve=True),
            "uncoded": FrontendSpec(flags=["--route", f"{models[0]}=none", *extra], kserve=True),
        }
        with Stack(models, frontends, model_repository=repository, log_dir=scratch / "logs") as stack:
            assert stack.triton is not None
            with floor_proxy(stack.triton.grpc_url, scratch / "logs" / "floor.log") as (floor, _):
                urls = {
                    "triton": stack.triton.grpc_url,
                    "floor": floor,
                    **{n: stack.kserve_address(n) for n in frontends},
                }
                runs = _measure(args, models[0], urls, data)
    machine += f"; load average after {os.getloadavg()[0]:.2f}"
    outputs = os.path.relpath(args.results.resolve(), args.doc.resolve().parent)
    block = _report(runs, machine, models, route, sys.argv[1:], time.perf_counter() - began, outputs)
    print(_table(runs))
    _write_doc(args.doc, block)
    log.info("wrote %s and %s", args.doc, args.results)


if __name__ == "__main__":
    main()
