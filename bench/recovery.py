"""How long queries keep failing after a dependency comes back (the promise that "reconnects come back
within a second of the dependency").

For each dependency (Triton, the encoder, the decoder), in turn: stop it while queries keep coming
(every 10 ms: a channel with no calls does not back off, it reconnects at the next call), start it again
on the same port, wait until it is ready (Triton's /v2/health/ready, the service's grpc.health.v1), then time from
that moment to the first query the frontend answers as it should: for Triton any answer, for the
coding services a query whose own call fails and that comes back *reconstructed* (it needs both).
The frontend's health is timed too, from the dependency's readiness to SERVING: ``""`` for Triton,
``codedserve.coded/<model>`` for the coding services (without them the route is degraded, not down).

    python -m bench.recovery [--rounds 3] [--down-s 5] [--dependency triton]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.faults import Process, restart, wait_ready
from bench.stack import Stack
from frontend.app.health import CODED_HEALTH_PREFIX
from service_common.tensors import from_numpy
from tests.integration import linear_models

POLL_S = 0.01
ROUTE = f"{linear_models.DEPLOYED}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}"
FLAGS = ["--route", ROUTE, "--straggler-timeout-ms", "20", "--fill-timeout-ms", "50", "--allow-fault-metadata"]


def _ok(stub: pb_grpc.FrontendStub, needs_coding: bool) -> bool:
    x = from_numpy(np.zeros((1, 28, 28), np.float32))
    metadata = (("codedserve-fault", "fail"),) if needs_coding else None
    try:
        reply = stub.Classify(pb.ClassifyRequest(model=linear_models.DEPLOYED, input=x), timeout=1.0, metadata=metadata)
    except grpc.RpcError:
        return False
    return reply.reconstructed or not needs_coding


def _serving(health: health_pb2_grpc.HealthStub, name: str) -> bool:
    try:
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=1.0)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def _until(predicate, timeout_s: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            return float("inf")
        time.sleep(POLL_S)
    return time.monotonic() - start


def _load(stub: pb_grpc.FrontendStub, needs_coding: bool, stop: threading.Event) -> None:
    while not stop.wait(POLL_S):
        _ok(stub, needs_coding)


def _restart(stack: Stack, dependency: str, down_s: float) -> None:
    """Stop the dependency, leave it down ``down_s``, then start it on the same port and wait until ready."""
    if dependency == "triton":
        assert stack.triton is not None
        process: Process = stack.triton
    else:
        process = stack.services[dependency]
    restart(process, down_s, kill=False)
    wait_ready(process, 60 if dependency == "triton" else 30)


def _round(stack: Stack, dependency: str, down_s: float) -> tuple[float, float]:
    with grpc.insecure_channel(stack.address("frontend")) as channel:
        stub, health = pb_grpc.FrontendStub(channel), health_pb2_grpc.HealthStub(channel)
        coding = dependency != "triton"
        assert _until(lambda: _ok(stub, coding)) < 30, "the stack does not answer before the restart"
        stop = threading.Event()
        load = threading.Thread(target=_load, args=(stub, coding, stop))
        load.start()  # queries keep coming while it is down, as in production: the channel backs off
        try:
            _restart(stack, dependency, down_s)
        finally:
            stop.set()
            load.join()
        ready = time.monotonic()
        first_answer = _until(lambda: _ok(stub, coding))
        name = CODED_HEALTH_PREFIX + linear_models.DEPLOYED if coding else ""  # coding down is degraded, not down
        waited = _until(lambda: _serving(health, name))
        return first_answer, time.monotonic() - ready if waited != float("inf") else waited


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down-s", type=float, default=5.0, help="how long each dependency stays down")
    parser.add_argument("--dependency", action="append", choices=("triton", "encoder", "decoder"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        models = linear_models.write_repository(repo)
        with Stack(models, {"frontend": FLAGS}, model_repository=repo, log_dir=Path(tmp) / "logs") as stack:
            for dependency in args.dependency or ("triton", "encoder", "decoder"):
                rounds = [_round(stack, dependency, args.down_s) for _ in range(args.rounds)]
                answers = [a for a, _ in rounds]
                print(
                    f"{dependency}: first good answer {statistics.median(answers) * 1e3:.0f} ms after it was ready "
                    f"(median of {len(rounds)}; each: {', '.join(f'{a * 1e3:.0f}' for a in answers)} ms); "
                    f"health SERVING (coded) again after {', '.join(f'{s * 1e3:.0f}' for _, s in rounds)} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
