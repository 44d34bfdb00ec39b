"""python -m bench.service_law: measure a model's service time on this machine, as a law the emulator draws from.

Builds one of the project's architectures (``export.models``, untrained: the time of a forward pass does not
depend on the weights), exports it to ONNX, and times ``--samples`` single-row runs in onnxruntime with
``--threads`` intra-op threads, after ``--warmup`` untimed ones. Writes one time in ms per line with a header
of ``#`` comments (command, date, machine, load average, model and its multiply-accumulates), the file
``samples:path=FILE`` reads (``triton_local.service_time``), and prints its median, p99, p99.9 and mean.

    python -m bench.service_law --arch resnet18 --shape 3,32,32 --samples 3000 \\
        --out bench/results/law-resnet18-cpu.txt

The time is the machine's as it was during the run: other work on its cores lengthens it, and is recorded as
the load average. A testbed uses the file with ``--law samples:path=FILE,scale=X``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from export.manifest import cpu_name
from export.models import ARCHS, build_model, multiply_accumulates
from export.onnx_export import export_onnx


def measure(session: ort.InferenceSession, x: np.ndarray, samples: int, warmup: int) -> np.ndarray:
    """Milliseconds of each of ``samples`` runs of ``x``, after ``warmup`` untimed ones."""
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: x})
    times = np.empty(samples)
    for i in tqdm(range(samples), desc="timed runs", unit="run"):
        started = time.perf_counter()
        session.run(None, {name: x})
        times[i] = (time.perf_counter() - started) * 1e3
    return times


def header(args: argparse.Namespace, macs: int, times: np.ndarray) -> str:
    q = np.quantile(times, [0.5, 0.99, 0.999])
    lines = [
        f"python -m bench.service_law {shlex.join(sys.argv[1:])}",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {cpu_name()}, onnxruntime {ort.__version__}, "
        f"{args.threads} intra-op thread(s); load average at the end {os.getloadavg()[0]:.2f}",
        f"model: export.models {args.arch!r} on {args.shape}, batch 1, {macs / 1e6:.0f} M multiply-accumulates",
        f"{len(times)} runs: median {q[0]:.2f} ms, p99 {q[1]:.2f}, p99.9 {q[2]:.2f}, mean {times.mean():.2f}",
    ]
    return "".join(f"# {line}\n" for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet18", help="export.models architecture")
    parser.add_argument("--shape", default="3,32,32", help="C,H,W of one input")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=3000, help="timed runs")
    parser.add_argument("--warmup", type=int, default=100, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--out", type=Path, required=True, help="the samples file to write")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    model = build_model(args.arch, shape=shape, classes=args.classes).eval()
    macs = multiply_accumulates(model, torch.zeros(1, *shape))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, path, shape)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
        times = measure(session, x, args.samples, args.warmup)
    text = header(args, macs, times)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "".join(f"{t:.3f}\n" for t in times))
    print(text, end="")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
