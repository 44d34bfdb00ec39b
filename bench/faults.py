"""Faults injected from outside the serving code, on this machine only, each bounded in time.

- ``stalls``: SIGSTOP a random Triton worker for 20–100 ms every 0.3–1 s, then SIGCONT
  (a GC pause, a noisy neighbour, a throttled VM: the worker is up but answers late).
- ``contention``: a background tenant that burns one core in a loop (CPU interference).
- ``kills``: SIGKILL a random worker every few seconds and restart it (a crash and recovery).
- ``netdelay``: hold a random worker's network link for 20–100 ms every 0.3–1 s (the network twin of
  ``stalls``: the worker runs, its requests wait in the link's queue). Needs the workers in namespaces.
- ``shuffles``: ParM's published background load (its paper's shuffles): concurrent loops, each sending a random
  128–256 MB between two random workers over their shaped links, so queries queue behind bulk traffic.
- ``collage``: Collage-CNN's published recipe (its artifact's worker latency): every execution of every model holds its
  Triton instance for a time drawn from the artifact's empirical distribution, so requests queue behind a
  busy instance. It is emulated accelerator time, applied by the Tritons themselves
  (:data:`SERVICE_TIMES`: ``python -m triton_local --service-time '*=collage'``); nothing runs here.
- ``none``: nothing, the control.
Every injector runs in one thread, stops when its run ends, and always SIGCONTs (releases) what it stopped.
:class:`InstanceStalls` is ``stalls`` with a schedule per worker, for the testbed's many instances.

The one process-fault module of bench/: a process is stalled only by :func:`freeze` / :func:`thaw` (or
:func:`stall`, both around a wait), and taken down and brought back on its ports only by :func:`restart`
(then :func:`wait_ready`); besides the injectors above, :class:`PlannedFaults` carries out a seeded
:func:`plan` of kills and stalls on a running stack (bench.chaos, bench.soak), and bench.recovery restarts
a dependency through the same functions.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from bench.netns import WorkerNetwork
from bench.stack import ServiceProcess, Stack
from triton_local.server import TritonServer

log = logging.getLogger(__name__)


def freeze(pid: int) -> None:
    """SIGSTOP: the process is up, holds its sockets, and answers nothing until :func:`thaw`."""
    os.kill(pid, signal.SIGSTOP)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


def stall(pids: Sequence[int], hold_s: float) -> None:
    """Freeze every one of ``pids`` for ``hold_s``, then thaw exactly those, whatever interrupts the wait."""
    for pid in pids:
        freeze(pid)
    try:
        time.sleep(hold_s)
    finally:
        for pid in pids:
            thaw(pid)


Process = TritonServer | ServiceProcess  # what restart() takes down and brings back


def _pid(process: Process) -> int | None:
    if isinstance(process, TritonServer):
        return process.pid
    return process.proc.pid if process.proc is not None and process.proc.poll() is None else None


def restart(process: Process, down_s: float = 0.0, *, kill: bool = True) -> None:
    """Take ``process`` down (SIGKILL with ``kill``: a crash; else a graceful stop), leave it down ``down_s``,
    then start it again on the same ports: clients reconnect once it is back. Returns once it is started,
    not ready (:func:`wait_ready`)."""
    pid = _pid(process)
    if kill and pid is not None:
        os.kill(pid, signal.SIGKILL)
    process.stop()  # after a SIGKILL: reaps it (a tritonserver and its backend stubs)
    if down_s > 0:
        time.sleep(down_s)
    process.start()


def wait_ready(process: Process, timeout_s: float) -> None:
    """Until a restarted process is ready again: Triton's /v2/health/ready, a service's grpc.health.v1 SERVING."""
    if isinstance(process, TritonServer):
        process.wait_ready(timeout_s)
    else:
        process.wait_serving(timeout_s)


@dataclass(frozen=True)
class StallProfile:
    stall_ms: tuple[float, float] = (20.0, 100.0)
    every_s: tuple[float, float] = (0.3, 1.0)


class FaultInjector:
    """Base: a background thread running ``_step`` until stopped; a context manager."""

    name = "none"
    needs_network = False  # True: the workers must run in namespaces (bench.netns)

    def __init__(self, workers: Sequence[TritonServer], seed: int = 0, network: WorkerNetwork | None = None) -> None:
        if self.needs_network and network is None:
            raise ValueError(f"fault profile {self.name!r} needs the workers in network namespaces (--netns)")
        self.workers = list(workers)
        self.network = network
        self.rng = random.Random(seed)
        self.events = 0
        self.calls_lost_to_kills = 0  # inferences counted by workers this injector killed (their count restarts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> FaultInjector:
        self._thread = threading.Thread(target=self._loop, name=f"fault-{self.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._cleanup()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._step()

    def _step(self) -> None:
        self._stop.wait(0.5)

    def _cleanup(self) -> None:
        pass


class Bursts(FaultInjector):
    """Every 0.3-1 s, pause a random worker for 20-100 ms, then resume it; subclasses say how."""

    def __init__(self, workers: Sequence[TritonServer], seed: int = 0, network: WorkerNetwork | None = None) -> None:
        super().__init__(workers, seed, network)
        self.profile = StallProfile()

    def _step(self) -> None:
        if self._stop.wait(self.rng.uniform(*self.profile.every_s)):
            return
        victim = self.rng.randrange(len(self.workers))
        if not self._pause(victim):
            return
        try:
            time.sleep(self.rng.uniform(*self.profile.stall_ms) / 1e3)
        finally:
            self._resume(victim)
        self.events += 1

    def _pause(self, victim: int) -> bool:
        raise NotImplementedError

    def _resume(self, victim: int) -> None:
        raise NotImplementedError


class Stalls(Bursts):
    """SIGSTOP the whole tritonserver, then SIGCONT: the worker is up but answers late."""

    name = "stalls"

    _stopped = 0  # the pid SIGSTOPped: exactly that process is SIGCONTed

    def _pause(self, victim: int) -> bool:
        pid = self.workers[victim].pid
        if pid is None:
            return False
        self._stopped = pid
        freeze(pid)
        return True

    def _resume(self, victim: int) -> None:
        thaw(self._stopped)


@dataclass(frozen=True)
class InstanceStallProfile:
    """Every worker on its own schedule: stalls of U(``stall_ms``), U(``every_s``) apart (from the end of one
    to the start of the next), the first at a uniform point of a first gap, as if the schedule were already
    under way when the run began."""

    stall_ms: tuple[float, float] = (20.0, 100.0)
    every_s: tuple[float, float] = (0.3, 1.0)

    def scaled(self, factor: float) -> InstanceStallProfile:
        """The same schedule with every time multiplied by ``factor`` (a testbed's slowed-down clock)."""
        return InstanceStallProfile(
            (self.stall_ms[0] * factor, self.stall_ms[1] * factor), (self.every_s[0] * factor, self.every_s[1] * factor)
        )

    @property
    def stalled_share(self) -> float:
        """The long-run share of time one worker spends stalled."""
        stall_s = sum(self.stall_ms) / 2e3
        return stall_s / (stall_s + sum(self.every_s) / 2)


def worker_stalls(profile: InstanceStallProfile, seed: int, worker: int) -> Iterator[tuple[float, float, int]]:
    """Worker ``worker``'s stalls as (start s, length s, worker), forever, in order. Its own stream (seeded by
    seed and worker): a worker's schedule is the same whichever other workers run, so every scheme of a run
    that uses worker i sees worker i stall at the same times (common random numbers)."""
    rng = random.Random(f"{seed}/stalls/{worker}")
    start = rng.uniform(0.0, rng.uniform(*profile.every_s))
    while True:
        length = rng.uniform(*profile.stall_ms) / 1e3
        yield start, length, worker
        start += length + rng.uniform(*profile.every_s)


def stall_schedule(
    profile: InstanceStallProfile, workers: int, seed: int, horizon_s: float
) -> list[tuple[float, float, int]]:
    """Every stall that starts before ``horizon_s``, all workers merged in order of start."""
    merged = heapq.merge(*(worker_stalls(profile, seed, w) for w in range(workers)))
    return list(itertools.takewhile(lambda stall: stall[0] < horizon_s, merged))


class InstanceStalls(FaultInjector):
    """SIGSTOP each tritonserver on its own schedule (:func:`worker_stalls`), then SIGCONT it; stalls of
    different workers may overlap. For a testbed of many instances, where one global schedule (``stalls``)
    would stall each instance less often the more instances there are."""

    name = "instance-stalls"

    def __init__(
        self,
        workers: Sequence[TritonServer],
        seed: int = 0,
        network: WorkerNetwork | None = None,
        profile: InstanceStallProfile | None = None,
    ) -> None:
        super().__init__(workers, seed, network)
        self.seed = seed
        self.profile = profile or InstanceStallProfile()
        self._stopped: dict[int, int] = {}  # worker -> the pid SIGSTOPped: exactly that process is SIGCONTed

    def _loop(self) -> None:
        began = time.monotonic()
        upcoming = heapq.merge(*(worker_stalls(self.profile, self.seed, w) for w in range(len(self.workers))))
        start, length, worker = next(upcoming)
        ends: list[tuple[float, int]] = []
        while True:
            release = bool(ends) and ends[0][0] <= start
            at = ends[0][0] if release else start
            if self._stop.wait(max(0.0, began + at - time.monotonic())):
                return
            if release:
                self._resume(heapq.heappop(ends)[1])
                continue
            if self._pause(worker):
                heapq.heappush(ends, (start + length, worker))
            start, length, worker = next(upcoming)

    def _pause(self, worker: int) -> bool:
        pid = self.workers[worker].pid
        if pid is None:
            return False
        self._stopped[worker] = pid
        freeze(pid)
        self.events += 1
        return True

    def _resume(self, worker: int) -> None:
        pid = self._stopped.pop(worker, None)
        if pid is not None:
            thaw(pid)

    def _cleanup(self) -> None:
        for worker in list(self._stopped):
            self._resume(worker)


def _burn(stop_at: float) -> None:
    while time.monotonic() < stop_at:
        sum(i * i for i in range(10000))


class Contention(FaultInjector):
    """A co-located tenant burning one core for the length of the run (bounded by ``max_s``)."""

    name = "contention"

    def __init__(
        self, workers: Sequence[TritonServer], seed: int = 0, max_s: float = 900.0, network: WorkerNetwork | None = None
    ) -> None:
        super().__init__(workers, seed, network)
        self._tenant = multiprocessing.get_context("spawn").Process(
            target=_burn, args=(time.monotonic() + max_s,), daemon=True
        )

    def __enter__(self) -> FaultInjector:
        self._tenant.start()
        self.events = 1
        return super().__enter__()

    def _cleanup(self) -> None:
        self._tenant.terminate()
        self._tenant.join(timeout=5)


class Kills(FaultInjector):
    """SIGKILL a worker every ``every_s`` and restart it at once (its models reload, seconds)."""

    name = "kills"

    def __init__(
        self, workers: Sequence[TritonServer], seed: int = 0, every_s: float = 8.0, network: WorkerNetwork | None = None
    ) -> None:
        super().__init__(workers, seed, network)
        self.every_s = every_s

    def _step(self) -> None:
        if self._stop.wait(self.every_s):
            return
        victim = self.rng.choice(self.workers)
        if victim.pid is None:
            return
        self.calls_lost_to_kills += victim.successful_inferences()
        restart(victim)
        self.events += 1


class NetDelay(Bursts):
    """Hold the worker's inbound link (bench.netns): its requests wait in the link's queue, none is lost."""

    name = "netdelay"
    needs_network = True

    def _pause(self, victim: int) -> bool:
        assert self.network is not None
        self.network.hold(victim)
        return True

    def _resume(self, victim: int) -> None:
        assert self.network is not None
        self.network.release(victim)


@dataclass(frozen=True)
class ShuffleProfile:
    """ParM's shuffle: 128-256 MB between two random instances, repeated. ParM ran 4 over 12 instances
    (fig9-11); ``per_workers`` keeps that ratio (one shuffle per 3 workers, at least one)."""

    megabytes: tuple[int, int] = (128, 256)
    per_workers: int = 3
    sink_port: int = 5701

    def loops(self, workers: int) -> int:
        """Concurrent shuffles over ``workers`` instances: one per ``per_workers``, at least one."""
        return max(1, workers // self.per_workers)


class Shuffles(FaultInjector):
    """Bulk transfers between worker namespaces over their shaped links (real TCP, real queues)."""

    name = "shuffles"
    needs_network = True

    def __init__(
        self,
        workers: Sequence[TritonServer],
        seed: int = 0,
        network: WorkerNetwork | None = None,
        profile: ShuffleProfile | None = None,
        loops: int | None = None,
    ) -> None:
        """Transfers between any two of ``workers``; ``loops`` concurrent (default: the profile's ratio to
        ``len(workers)``; a testbed sets it from its deployed instances, whatever its redundancy adds)."""
        super().__init__(workers, seed, network)
        self.profile = profile or ShuffleProfile()
        self.loops = self.profile.loops(len(self.workers)) if loops is None else loops
        self._sinks: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _python(self, worker: int, *args: str) -> subprocess.Popen[bytes]:
        assert self.network is not None
        argv = [*self.network.exec_prefix(worker), sys.executable, "-m", "bench.shuffle", *args]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> FaultInjector:
        port = str(self.profile.sink_port)
        self._sinks = [self._python(i, "sink", "--port", port, "--max-s", "900") for i in range(len(self.workers))]
        time.sleep(0.5)  # the sinks listen before the first transfer
        self._threads = [
            threading.Thread(target=self._loop, name=f"shuffle-{i}", daemon=True) for i in range(self.loops)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def _step(self) -> None:
        assert self.network is not None
        with self._lock:  # one rng, several loops
            source, dest = self.rng.sample(range(len(self.workers)), 2)
            nbytes = self.rng.randint(*self.profile.megabytes) << 20
        to = f"{self.network.address(dest)}:{self.profile.sink_port}"
        sender = self._python(source, "send", "--to", to, "--bytes", str(nbytes), "--max-s", "120")
        try:
            while sender.poll() is None and not self._stop.wait(0.05):
                pass
        finally:
            if sender.poll() is None:
                sender.terminate()  # the run ended mid-transfer
            sender.wait()
        if sender.returncode == 0:
            with self._lock:
                self.events += 1  # one whole transfer

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self._cleanup()

    def _cleanup(self) -> None:
        for proc in self._sinks:
            proc.terminate()
        for proc in self._sinks:
            proc.wait(timeout=10)


# Planned faults: a seeded plan of kills and stalls carried out on a running stack (bench.chaos_run).

FAULT_KINDS = ("kill_triton", "stall_triton", "stall_tritons", "kill_encoder", "kill_decoder")


@dataclass(frozen=True)
class Fault:
    at_s: float  # seconds after the load starts
    kind: str  # one of FAULT_KINDS
    target: int  # the Triton instance (kill_triton, stall_triton); ignored otherwise
    hold_s: float  # how long a stall lasts, or how long a killed process stays down before its restart


def plan(seed: int, duration_s: float, every_s: float, tritons: int, kinds: Sequence[str] = FAULT_KINDS) -> list[Fault]:
    """One fault every ``every_s``, the kinds in a seeded order that visits each kind before repeating
    one (so a run of ``len(kinds)`` faults has them all); the last ``every_s`` is left quiet, to recover."""
    unknown = set(kinds) - set(FAULT_KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
    rng = np.random.default_rng(seed)
    faults: list[Fault] = []
    order: list[str] = []
    at = every_s / 2
    while every_s > 0 and at + every_s <= duration_s:
        if not order:
            order = [kinds[i] for i in rng.permutation(len(kinds))]
        kind = order.pop()
        hold = {
            "stall_triton": rng.uniform(0.05, 0.5),
            "stall_tritons": 2.5,  # longer than the frontend's health probe needs to see it
            "kill_triton": rng.uniform(0.2, 1.0),
        }.get(kind, rng.uniform(0.2, 1.0))
        faults.append(Fault(round(at, 3), kind, int(rng.integers(tritons)), round(float(hold), 3)))
        at += every_s
    return faults


@dataclass
class FaultEvent:
    fault: Fault
    began_s: float
    ended_s: float  # the stall lifted, or the killed process started again
    ready_s: float | None  # when the restarted process was ready again (kills only)


class PlannedFaults:
    """Carries out a plan's faults on a running stack, in threads (restarts block for seconds)."""

    def __init__(self, stack: Stack, start: float) -> None:
        self.stack, self._start = stack, start
        self.events: list[FaultEvent] = []

    def _now(self) -> float:
        return round(time.monotonic() - self._start, 3)

    async def run(self, faults: Sequence[Fault]) -> None:
        for fault in faults:
            delay = self._start + fault.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            log.info("fault at %.1f s: %s", fault.at_s, fault)
            began = self._now()
            ended, ready = await asyncio.to_thread(self._apply, fault)
            self.events.append(FaultEvent(fault, began, ended, ready))

    def _apply(self, fault: Fault) -> tuple[float, float | None]:
        tritons = self.stack.tritons
        if fault.kind in ("stall_triton", "stall_tritons"):
            victims = [tritons[fault.target]] if fault.kind == "stall_triton" else tritons
            stall([t.pid for t in victims if t.pid is not None], fault.hold_s)
            return self._now(), None
        if fault.kind == "kill_triton":
            process: Process = tritons[fault.target]
            ready_within_s = 120.0
        else:
            process, ready_within_s = self.stack.services[fault.kind.removeprefix("kill_")], 60.0
        restart(process, fault.hold_s)
        ended = self._now()
        wait_ready(process, ready_within_s)
        return ended, self._now()

    def pids(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {f"triton{i}": t.pid for i, t in enumerate(self.stack.tritons)}
        found.update({n: s.proc.pid if s.proc else None for n, s in self.stack.services.items()})
        return found


PROFILES: dict[str, type[FaultInjector]] = {
    "none": FaultInjector,
    "stalls": Stalls,
    "contention": Contention,
    "kills": Kills,
    "netdelay": NetDelay,
    "shuffles": Shuffles,
    "collage": FaultInjector,  # emulated in the Tritons: see SERVICE_TIMES
}

# Profiles that the Tritons carry out, as their emulated service times (TritonConfig.service_time).
SERVICE_TIMES: dict[str, str] = {"collage": "*=collage"}
