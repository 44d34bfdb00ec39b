"""One interleaved run of a testbed: start every instance and frontend, then round by round give each scheme
its segment of the same queries, at the same Poisson arrival times, under the same per-instance stall
schedule and the same draws of shuffles (common random numbers: round r seeds them all with seed + r), and
tally what each scheme cost. With shuffles, every instance runs in a network namespace of its own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench.faults import InstanceStalls, Shuffles
from bench.load import Record, frontend_sender, run_load
from bench.netns import WorkerNetwork
from bench.stack import FrontendSpec, Stack
from bench.testbed.measure import CpuReading, CpuShare, InstanceReading, cpu_reading, settled_readings, share_over
from bench.testbed.profiles import Scheme, Testbed

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """One scheme's run, summed over its rounds."""

    scheme: Scheme
    records: list[Record] = field(default_factory=list)
    rows: int = 0  # rows its calls ran on every instance (Triton's count)
    busy_s: dict[int, float] = field(default_factory=dict)  # per instance, over the load windows
    load_s: float = 0.0  # wall time of its load windows
    cpu: list[tuple[CpuReading, CpuReading]] = field(default_factory=list)  # each window's (before, after)
    stall_events: int = 0
    shuffle_events: int = 0  # whole transfers during its load windows
    drain_s: float = 0.0  # after its load windows, until its instances' rows stopped moving (a backlog)

    @property
    def cpu_share(self) -> CpuShare:
        """Over its load windows together."""
        return share_over(self.cpu)

    def utilisation(self) -> dict[int, float]:
        """Each of its instances' busy share of its load windows."""
        return {i: self.busy_s.get(i, 0.0) / self.load_s for i in self.scheme.instances}


@dataclass(frozen=True)
class Workload:
    """The queries every scheme is sent, and the run's seed."""

    queries: np.ndarray
    seed: int


def run(testbed: Testbed, workload: Workload, model_repository: Path, log_dir: Path, model: str) -> list[Tally]:
    """Start the testbed, run every scheme in interleaved rounds, stop everything; one tally per scheme."""
    specs = {
        s.name: FrontendSpec(testbed.frontend_flags(s), tritons=s.data, parity_tritons=s.coded) for s in testbed.schemes
    }
    instance_models = testbed.instance_models()
    with contextlib.ExitStack() as resources:  # the stack stops before its network is taken down
        network = None
        if testbed.shuffles is not None:
            network = resources.enter_context(WorkerNetwork(testbed.instance_count, testbed.link))
        stack = Stack(
            sorted({m for models in instance_models for m in models}),
            specs,
            model_repository=model_repository,
            log_dir=log_dir,
            triton_models=instance_models,
            service_time=f"*={testbed.law}",
            service_time_seed=workload.seed,
            network=network,
        )
        resources.callback(stack.stop)
        stack.start(timeout_s=600.0)
        log.info("%d instances and %d frontends serving", len(stack.tritons), len(specs))
        return _rounds(testbed, workload, stack, model)


def _rounds(testbed: Testbed, workload: Workload, stack: Stack, model: str) -> list[Tally]:
    tallies = {s.name: Tally(s) for s in testbed.schemes}
    segments = np.array_split(np.arange(len(workload.queries)), testbed.rounds)
    warm_up = workload.queries[: max(1, int(testbed.rate * testbed.warmup_s))]
    for r, segment in enumerate(segments):
        for scheme in _rotated(list(testbed.schemes), r):
            if r == 0:  # connections, first inferences, the adaptive deadlines' and hedge delay's windows
                _load(stack, scheme.name, model, warm_up, testbed, workload.seed - 1, f"{scheme.name} warm-up")
            _segment(testbed, workload, stack, model, tallies[scheme.name], segment, r)
    return list(tallies.values())


def _segment(
    testbed: Testbed, workload: Workload, stack: Stack, model: str, tally: Tally, segment: np.ndarray, r: int
) -> None:
    """One scheme's share of round r, tallied."""
    name, seed = tally.scheme.name, workload.seed + r
    pids = [s.proc.pid for s in stack.services.values() if s.proc is not None]
    rows_before = settled_readings(stack.tritons)
    cpu_before = cpu_reading(stack.tritons, pids)
    with _faults(testbed, stack, seed) as (stalls, shuffles):
        desc = name if testbed.rounds == 1 else f"{name} {r + 1}/{testbed.rounds}"
        got = _load(stack, name, model, workload.queries[segment], testbed, seed, desc)
    cpu_after = cpu_reading(stack.tritons, pids)
    rows_after = settled_readings(stack.tritons)
    tally.drain_s += time.monotonic() - cpu_after.at_s
    tally.cpu.append((cpu_before, cpu_after))
    tally.load_s += cpu_after.at_s - cpu_before.at_s
    tally.rows += sum(a.rows - b.rows for b, a in zip(rows_before, rows_after, strict=True))
    for i, (b, a) in enumerate(zip(rows_before, rows_after, strict=True)):
        tally.busy_s[i] = tally.busy_s.get(i, 0.0) + _busy(b, a)
    tally.stall_events += stalls.events if stalls is not None else 0
    tally.shuffle_events += shuffles.events if shuffles is not None else 0  # counted once its loops have ended
    tally.records += [dataclasses.replace(rec, index=int(segment[rec.index])) for rec in got]


def _busy(before: InstanceReading, after: InstanceReading) -> float:
    return after.busy_s - before.busy_s


@contextlib.contextmanager
def _faults(testbed: Testbed, stack: Stack, seed: int) -> Iterator[tuple[InstanceStalls | None, Shuffles | None]]:
    """The testbed's faults on every instance, used by the scheme or not, each seeded with ``seed``: stalls
    (instance i's schedule is the same in every scheme's segment of a round) and shuffles (the same draws of
    pairs and sizes, :attr:`Testbed.shuffle_loops` at a time, between any two instances)."""
    with contextlib.ExitStack() as running:
        stalls = shuffles = None
        if testbed.stalls is not None:
            stalls = InstanceStalls(stack.tritons, seed, profile=testbed.stalls)
            running.enter_context(stalls)
        if testbed.shuffles is not None:
            shuffles = Shuffles(stack.tritons, seed, stack.network, testbed.shuffles, testbed.shuffle_loops)
            running.enter_context(shuffles)
        yield stalls, shuffles


def _load(
    stack: Stack, name: str, model: str, queries: np.ndarray, testbed: Testbed, seed: int, desc: str
) -> list[Record]:
    async def go() -> list[Record]:
        async with grpc.aio.insecure_channel(stack.address(name)) as channel:
            send = frontend_sender(pb_grpc.FrontendStub(channel), model, queries, 60.0 * testbed.time_scale)
            return await run_load(send, len(queries), testbed.rate, seed=seed, desc=desc)

    return asyncio.run(go())


def _rotated(schemes: list[Scheme], r: int) -> list[Scheme]:
    """Round r starts at scheme r: a slow drift of the machine does not always hit the same scheme last."""
    shift = r % len(schemes)
    return schemes[shift:] + schemes[:shift]
