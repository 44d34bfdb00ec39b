"""CPU inference cost of a model architecture (or of exported ONNX files) in onnxruntime, one intra-op thread.

One thread, as the local Triton runs each model instance (``intra_op_thread_count`` 1 in every config.pbtxt). The
weights do not change the cost, so an untrained export of an architecture measures it before any training.
Prints, per model: parameters, multiply-accumulates per image, ONNX bytes, and the median milliseconds of one
``session.run`` on 1 row and on a batch of ``MAX_BATCH_SIZE`` rows.

    python -m export.cpu_cost --archs cnn,resnet --iters 300
    python -m export.cpu_cost --onnx model_repository/fashion_cnn/1/model.onnx
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.models import ARCHS, build_model, multiply_accumulates
from export.onnx_export import export_onnx
from export.spec import IMAGE_SHAPE, INPUT_NAME, MAX_BATCH_SIZE, OUTPUT_NAME


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def median_ms(sess: ort.InferenceSession, rows: int, iters: int, warmup: int = 10) -> float:
    """Median wall time of one ``session.run`` on ``rows`` random images, after ``warmup`` runs."""
    x = np.random.default_rng(0).random((rows, *IMAGE_SHAPE), dtype=np.float32)
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def measure(path: Path, iters: int, threads: int = 1) -> dict:
    sess = session(path, threads)
    return {
        "onnx_bytes": path.stat().st_size,
        "ms_batch_1": round(median_ms(sess, 1, iters), 3),
        f"ms_batch_{MAX_BATCH_SIZE}": round(median_ms(sess, MAX_BATCH_SIZE, iters), 3),
    }


def arch_facts(arch: str) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    model = build_model(arch).eval()
    return model, {
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs_per_image": multiply_accumulates(model, torch.zeros(1, *IMAGE_SHAPE)),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m export.cpu_cost", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--archs", default="cnn,resnet", help=f"comma-separated, of {','.join(ARCHS)} (default: %(default)s)"
    )
    p.add_argument("--onnx", type=Path, nargs="*", default=[], help="exported model files to measure instead")
    p.add_argument("--iters", type=int, default=300, help="timed runs per batch size (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default: %(default)s)")
    args = p.parse_args(argv)
    rows: dict[str, dict] = {}
    if args.onnx:
        torch.set_num_threads(1)
        rows = {str(path): measure(path, args.iters, args.threads) for path in args.onnx}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for arch in (a for a in args.archs.split(",") if a):
                model, facts = arch_facts(arch)
                path = Path(tmp) / f"{arch}.onnx"
                export_onnx(model, path)
                rows[arch] = {**facts, **measure(path, args.iters, args.threads)}
    print(json.dumps({"threads": args.threads, "iters": args.iters, "models": rows}, indent=2))


if __name__ == "__main__":
    main()
