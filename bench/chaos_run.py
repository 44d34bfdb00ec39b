"""The chaos run, as a library: bench.chaos and bench.soak are its entries (bench.chaos's docstring, its
``--help``, says what a run does and how).

Every answer is entered in a :class:`Ledger`, which checks the exactly-once promise:

    accepted = answered + errored, duplicates = 0, lost = 0

The faults, their plan and how each is carried out are bench.faults' (:class:`~bench.faults.PlannedFaults`);
the schedule every query leaves on is bench.load's (:func:`~bench.load.open_loop`, :func:`~bench.load.due`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.faults import FAULT_KINDS, Fault, FaultEvent, PlannedFaults, plan
from bench.load import due, open_loop
from bench.stack import REPO_ROOT, FrontendSpec, Stack
from export import spec
from service_common.logs import setup_logging
from service_common.tensors import from_numpy
from triton_local import shm

log = logging.getLogger(__name__)

PHASES = ("chaos", "deadlines")  # the faults plan under load; short-deadline clients through stalls
REJECTED = "RESOURCE_EXHAUSTED"  # refused at admission: never accepted, so outside the ledger's promise


@dataclass
class Ledger:
    """Every query sent and every answer received, by id. Pure bookkeeping, no I/O."""

    sent: list[str] = field(default_factory=list)
    _sent: set[str] = field(default_factory=set)
    answers: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    reconstructed: int = 0
    wrong: list[str] = field(default_factory=list)  # OK answers whose label is not the expected one
    strays: list[str] = field(default_factory=list)  # answers for ids never sent
    examples: dict[str, str] = field(default_factory=dict)  # the first error message of each status
    errors_at: list[float] = field(default_factory=list)  # when each non-OK answer came (the caller's clock)

    def send(self, qid: str) -> None:
        if qid in self._sent:  # the harness's own mistake: answers to the two could not be told apart
            raise ValueError(f"query id {qid!r} sent twice")
        self.sent.append(qid)
        self._sent.add(qid)

    def answer(
        self,
        qid: str,
        code: str,
        *,
        reconstructed: bool = False,
        right: bool = True,
        detail: str = "",
        at_s: float = 0.0,
    ) -> None:
        if qid not in self._sent:
            self.strays.append(qid)
            return
        self.answers[qid].append(code)
        if code != "OK":
            self.examples.setdefault(code, detail)
            self.errors_at.append(at_s)
        if code == "OK":
            self.reconstructed += reconstructed
            if not right:
                self.wrong.append(qid)

    def summary(self) -> dict[str, object]:
        first = {qid: codes[0] for qid, codes in self.answers.items() if codes}
        codes = collections.Counter(first.values())
        rejected = codes.get(REJECTED, 0)
        errored = sum(n for c, n in codes.items() if c not in ("OK", REJECTED))
        lost = [q for q in self.sent if not self.answers.get(q)]
        duplicates = [q for q, c in self.answers.items() if len(c) > 1]
        return {
            "sent": len(self.sent),
            "accepted": len(self.sent) - rejected,
            "answered": codes.get("OK", 0),
            "reconstructed": self.reconstructed,
            "errored": errored,
            "rejected": rejected,
            "lost": len(lost),
            "duplicates": len(duplicates),
            "wrong": len(self.wrong),
            "strays": len(self.strays),
            "codes": dict(sorted(codes.items())),
            "examples": dict(sorted(self.examples.items())),
            "lost_ids": lost[:20],
            "duplicate_ids": duplicates[:20],
        }

    def holds(self) -> bool:
        """The exactly-once promise: accepted = answered + errored, none lost, none twice, none stray."""
        s = self.summary()
        return (
            s["accepted"] == s["answered"] + s["errored"]  # type: ignore[operator]
            and s["lost"] == s["duplicates"] == s["strays"] == 0
        )


@dataclass
class RunConfig:
    model: str
    images: np.ndarray  # queries, float32 [n, *IMAGE_SHAPE]
    expected: np.ndarray | None  # the label each image should get (None: not checked)
    rate: float  # queries per second, over unary calls and streams together
    duration_s: float
    streams: int = 2  # long-lived ClassifyStreams carrying a share of the load; the rest are unary calls
    watchdog_s: float = 12.0  # no answer this long after sending: lost
    health_every_s: float = 0.1
    sample_every_s: float = 0.0  # 0: no resource samples


@dataclass
class Transition:
    at_s: float
    status: str


class HealthWatch:
    """Polls the frontend's overall health and keeps each change of status with its time."""

    def __init__(self, address: str, every_s: float, start: float) -> None:
        self.address, self.every_s, self._start = address, every_s, start
        self.transitions: list[Transition] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not stop.is_set():
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.aio.AioRpcError as exc:
                    status = f"no answer ({exc.code().name})"
                if not self.transitions or self.transitions[-1].status != status:
                    self.transitions.append(Transition(round(time.monotonic() - self._start, 3), status))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every_s)

    def status_between(self, t0: float, t1: float) -> set[str]:
        """Every status health reported at some time in [t0, t1]."""
        seen = set()
        for i, tr in enumerate(self.transitions):
            until = self.transitions[i + 1].at_s if i + 1 < len(self.transitions) else float("inf")
            if tr.at_s <= t1 and until >= t0:
                seen.add(tr.status)
        return seen


@dataclass
class Sample:
    at_s: float
    rss_mb: dict[str, float]
    fds: dict[str, int]
    shm_entries: int
    shm_mb: float


def sample(processes: dict[str, int | None], start: float) -> Sample:
    """Resident memory and open descriptors of each live process with the processes of the group it
    leads (a tritonserver's Python backend stubs, which hold the models), and what /dev/shm holds."""
    rss, fds = {}, {}
    for name, pid in processes.items():
        if pid is None:
            continue
        kb, n = 0, 0
        for member in {pid, *shm.group(pid)}:
            with contextlib.suppress(OSError, StopIteration):
                status = Path(f"/proc/{member}/status").read_text()
                kb += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
                n += len(os.listdir(f"/proc/{member}/fd"))
        rss[name], fds[name] = round(kb / 1024, 1), n
    regions = [p for p in shm.SHM.iterdir() if p.is_file()] if shm.SHM.is_dir() else []
    size = sum(p.stat().st_size for p in regions if p.exists())
    return Sample(round(time.monotonic() - start, 2), rss, fds, len(regions), round(size / 2**20, 1))


@dataclass
class ChaosResult:
    ledger: Ledger
    events: list[FaultEvent]
    health: HealthWatch
    samples: list[Sample]
    load_s: float

    def _first_fault_s(self) -> float:
        return self.events[0].began_s if self.events else float("inf")

    def _errors_after(self) -> list[int]:
        """For each fault, the error answers that came after it began and before the next one began."""
        starts = [e.began_s for e in self.events] + [float("inf")]
        return [sum(1 for t in self.ledger.errors_at if a <= t < b) for a, b in itertools.pairwise(starts)]

    def report(self) -> dict[str, object]:
        return {
            "ledger": self.ledger.summary(),
            "promise_holds": self.ledger.holds(),
            "faults": [asdict(e) | {"errors_after": n} for e, n in zip(self.events, self._errors_after(), strict=True)],
            "errors_before_any_fault": sum(1 for t in self.ledger.errors_at if t < self._first_fault_s()),
            "health": [asdict(t) for t in self.health.transitions],
            "samples": [asdict(s) for s in self.samples],
            "load_s": round(self.load_s, 1),
        }


async def _unary(
    stub: pb_grpc.FrontendStub, cfg: RunConfig, picks: list[int], start: float, ledger: Ledger, check: Callable
) -> None:
    async def one(n: int, i: int) -> None:  # query n of the unary calls, image i
        qid = f"u{n}"
        request = pb.ClassifyRequest(model=cfg.model, input=from_numpy(cfg.images[i]), id=qid)
        ledger.send(qid)
        try:
            reply = await asyncio.wait_for(stub.Classify(request), cfg.watchdog_s)
        except TimeoutError:
            return  # never answered: the ledger calls it lost
        except grpc.aio.AioRpcError as exc:
            ledger.answer(qid, exc.code().name, detail=exc.details() or "", at_s=time.monotonic() - start)
            return
        ledger.answer(qid, "OK", reconstructed=reply.reconstructed, right=check(i, reply.label))

    await open_loop(_steady(len(picks), _source_rate(cfg)), start, lambda n: one(n, picks[n]))


async def _stream(
    stub: pb_grpc.FrontendStub, cfg: RunConfig, s: int, picks: list[int], start: float, ledger: Ledger, check: Callable
) -> None:
    """One long-lived stream: its messages leave on schedule; answers come back by id, in any order."""
    index = {f"s{s}-{n}": i for n, i in enumerate(picks)}

    async def messages():  # type: ignore[no-untyped-def]
        queued = list(index.items())
        async for n in due(_steady(len(queued), _source_rate(cfg)), start):
            qid, i = queued[n]
            ledger.send(qid)
            yield pb.ClassifyRequest(model=cfg.model, input=from_numpy(cfg.images[i]), id=qid)

    call = stub.ClassifyStream(messages())
    answered: set[str] = set()
    try:
        async with asyncio.timeout(cfg.duration_s + cfg.watchdog_s):
            async for reply in call:
                answered.add(reply.id)
                code = grpc.StatusCode.OK.name if reply.status_code == 0 else _code_name(reply.status_code)
                i = index.get(reply.id)
                right = i is not None and check(i, reply.label)
                at_s = time.monotonic() - start
                ledger.answer(
                    reply.id, code, reconstructed=reply.reconstructed, right=right, detail=reply.error, at_s=at_s
                )
    except TimeoutError:
        call.cancel()  # what is still unanswered is lost
    except grpc.aio.AioRpcError as exc:
        # The stream itself ended with an error: its unanswered queries got that status, and no other.
        for qid in ledger.sent:
            if qid in index and qid not in answered:
                ledger.answer(qid, exc.code().name, detail=exc.details() or "", at_s=time.monotonic() - start)


def _code_name(value: int) -> str:
    return next((c.name for c in grpc.StatusCode if c.value[0] == value), f"CODE_{value}")


def _steady(n: int, rate: float) -> list[float]:
    """Send offsets of n queries at ``rate`` per second, evenly spaced."""
    return [k / rate for k in range(n)]


def _source_rate(cfg: RunConfig) -> float:
    """Queries per second from one source: the unary calls together and each stream carry equal shares."""
    return cfg.rate / (cfg.streams + 1)


async def run(stack: Stack, frontend: str, cfg: RunConfig, faults: Sequence[Fault]) -> ChaosResult:
    """Load ``frontend`` of a running stack for ``cfg.duration_s`` while ``faults`` happen."""
    n = int(cfg.rate * cfg.duration_s)
    order = np.resize(np.arange(len(cfg.images)), n)
    sources = np.array_split(order, cfg.streams + 1)  # the unary calls' share, then each stream's

    def check(i: int, label: int) -> bool:
        return cfg.expected is None or int(cfg.expected[i]) == label

    ledger = Ledger()
    start = time.monotonic() + 0.5
    chaos = PlannedFaults(stack, start)
    health = HealthWatch(stack.address(frontend), cfg.health_every_s, start)
    samples: list[Sample] = []
    stop = asyncio.Event()

    async def sampler() -> None:
        while cfg.sample_every_s > 0 and not stop.is_set():
            samples.append(sample(chaos.pids(), start))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), cfg.sample_every_s)

    background = [asyncio.create_task(health.run(stop)), asyncio.create_task(sampler())]
    async with grpc.aio.insecure_channel(stack.address(frontend)) as channel:
        stub = pb_grpc.FrontendStub(channel)
        load = [_unary(stub, cfg, list(sources[0]), start, ledger, check)]
        load += [_stream(stub, cfg, s, list(p), start, ledger, check) for s, p in enumerate(sources[1:])]
        await asyncio.gather(chaos.run(faults), *load)
        load_s = time.monotonic() - start
        await asyncio.sleep(cfg.health_every_s * 3)  # the health after the last fault settles
    stop.set()
    await asyncio.gather(*background)
    return ChaosResult(ledger, chaos.events, health, samples, load_s)


# The short-deadline phase: clients whose deadline is a few calls long, through stalls of every Triton.
# Each answer is kept with the time its query was sent; after each stall, the time until the OK share is
# back to its level before the stall (a frontend whose estimate of the wait never recovers from a stall
# would refuse such clients for good).


@dataclass(frozen=True)
class Window:
    start_s: float
    counts: dict[str, int]  # status name -> answers to the queries sent in this window

    @property
    def ok_share(self) -> float | None:
        """The share of this window's queries answered OK (None: none sent)."""
        n = sum(self.counts.values())
        return self.counts.get("OK", 0) / n if n else None


def windows(answers: Sequence[tuple[float, str]], window_s: float, from_s: float, to_s: float) -> list[Window]:
    """``answers`` (when the query was sent, its status) counted by status in whole windows of
    ``window_s`` from ``from_s``; the last window ends at or before ``to_s``."""
    n = max(0, math.floor((to_s - from_s) / window_s + 1e-9))
    counts: list[collections.Counter[str]] = [collections.Counter() for _ in range(n)]
    for at, code in answers:
        i = math.floor((at - from_s) / window_s + 1e-9)
        if 0 <= i < n:
            counts[i][code] += 1
    return [Window(round(from_s + i * window_s, 3), dict(sorted(c.items()))) for i, c in enumerate(counts)]


@dataclass(frozen=True)
class RecoveryRule:
    """When the OK share counts as recovered after a fault."""

    window_s: float = 0.25
    baseline_s: float = 2.0  # the baseline: the OK share of the queries sent this long before the fault
    tolerance: float = 0.9  # recovered: every window's OK share at least this fraction of the baseline...
    stay_s: float = 1.0  # ...for this long
    min_baseline: float = 0.5  # below this there is no baseline: the service was not answering before


@dataclass(frozen=True)
class Recovery:
    baseline: float | None  # the OK share before the fault (None: no query sent in that time)
    level: float | None  # the OK share to get back to (None: no baseline to get back to)
    recovery_s: float | None  # the fault's end to the start of the first recovered window (None: not in the run)
    left_s: float  # how much of the run was left after the fault's end

    def verdict(self) -> str:
        if self.level is None:
            share = "nothing sent" if self.baseline is None else f"OK share {self.baseline:.0%}"
            return f"no baseline ({share} before the fault)"
        if self.recovery_s is None:
            return f"never ({self.left_s:.1f} s of the run left)"
        return f"{self.recovery_s * 1e3:.0f} ms"


def recovery(
    answers: Sequence[tuple[float, str]], began_s: float, ended_s: float, end_s: float, rule: RecoveryRule
) -> Recovery:
    """How long after a fault that lasted from ``began_s`` to ``ended_s`` the OK share is back: windows
    of ``rule.window_s`` start at the fault's end; the first of ``rule.stay_s`` of windows, all whole
    before ``end_s`` (the run's end) and each with an OK share of at least ``rule.tolerance`` times the
    baseline, starts the recovery. A share is taken by when the queries were sent: a window with none
    sent has no share and does not count as recovered."""
    before = [code for at, code in answers if began_s - rule.baseline_s <= at < began_s]
    baseline = before.count("OK") / len(before) if before else None
    left = round(end_s - ended_s, 3)
    if baseline is None or baseline < rule.min_baseline:
        return Recovery(baseline, None, None, left)
    level = rule.tolerance * baseline
    after = windows(answers, rule.window_s, ended_s, end_s)
    need = max(1, math.ceil(rule.stay_s / rule.window_s - 1e-9))
    for i in range(len(after) - need + 1):
        shares = [w.ok_share for w in after[i : i + need]]
        if all(s is not None and s >= level for s in shares):
            return Recovery(baseline, level, round(after[i].start_s - ended_s, 3), left)
    return Recovery(baseline, level, None, left)


@dataclass(frozen=True)
class ShortDeadlines:
    """The phase: unary calls on a fixed schedule, each with a ``deadline_s`` gRPC deadline, while every
    Triton is SIGSTOPped for ``stall_s`` every ``every_s`` (the first at ``every_s / 2``)."""

    model: str
    images: np.ndarray  # queries, float32 [n, *IMAGE_SHAPE]
    rate: float = 50.0
    deadline_s: float = 0.05
    duration_s: float = 20.0
    stall_s: float = 1.0
    every_s: float = 6.0
    rule: RecoveryRule = RecoveryRule()

    def stalls(self) -> list[Fault]:
        """Each stall followed by at least ``every_s / 2`` of the run, to recover in."""
        faults, at = [], self.every_s / 2
        while self.every_s > 0 and at + self.stall_s + self.every_s / 2 <= self.duration_s:
            faults.append(Fault(round(at, 3), "stall_tritons", 0, self.stall_s))
            at += self.every_s
        return faults


@dataclass
class ShortDeadlinesResult:
    phase: ShortDeadlines
    answers: list[tuple[float, str]]  # (when the query was sent, its status), in the order answered
    examples: dict[str, str]  # the first message of each status
    events: list[FaultEvent]

    def recoveries(self) -> list[Recovery]:
        p = self.phase
        return [recovery(self.answers, e.began_s, e.ended_s, p.duration_s, p.rule) for e in self.events]

    def report(self) -> dict[str, object]:
        p = self.phase
        codes = collections.Counter(code for _, code in self.answers)
        return {
            "model": p.model,
            "rate": p.rate,
            "deadline_ms": p.deadline_s * 1e3,
            "duration_s": p.duration_s,
            "stall_s": p.stall_s,
            "every_s": p.every_s,
            "rule": asdict(p.rule),
            "codes": dict(sorted(codes.items())),
            "examples": dict(sorted(self.examples.items())),
            "faults": [
                {"kind": e.fault.kind, "began_s": e.began_s, "ended_s": e.ended_s, **asdict(r), "verdict": r.verdict()}
                for e, r in zip(self.events, self.recoveries(), strict=True)
            ],
            "ok_share_per_s": [w.ok_share for w in windows(self.answers, 1.0, 0.0, p.duration_s)],
            "timeline": [asdict(w) for w in windows(self.answers, p.rule.window_s, 0.0, p.duration_s)],
        }


async def _short_deadline_load(
    stub: pb_grpc.FrontendStub, phase: ShortDeadlines, start: float
) -> tuple[list[tuple[float, str]], dict[str, str]]:
    requests = [pb.ClassifyRequest(model=phase.model, input=from_numpy(x)) for x in phase.images[:64]]
    answers: list[tuple[float, str]] = []
    examples: dict[str, str] = {}

    async def one(n: int) -> None:
        sent = round(time.monotonic() - start, 4)
        try:
            await stub.Classify(requests[n % len(requests)], timeout=phase.deadline_s)
            code, detail = "OK", ""
        except grpc.aio.AioRpcError as exc:
            code, detail = exc.code().name, exc.details() or ""
        answers.append((sent, code))
        examples.setdefault(code, detail)

    await open_loop(_steady(int(phase.rate * phase.duration_s), phase.rate), start, one)
    return answers, examples


async def run_short_deadlines(stack: Stack, frontend: str, phase: ShortDeadlines) -> ShortDeadlinesResult:
    """The short-deadline phase against ``frontend`` of a running stack."""
    start = time.monotonic() + 0.5
    chaos = PlannedFaults(stack, start)
    async with grpc.aio.insecure_channel(stack.address(frontend)) as channel:
        load = _short_deadline_load(pb_grpc.FrontendStub(channel), phase, start)
        _, (answers, examples) = await asyncio.gather(chaos.run(phase.stalls()), load)
    return ShortDeadlinesResult(phase, answers, examples, chaos.events)


def chaos_stack(
    models: Sequence[str],
    routes: Mapping[str, str],
    model_repository: Path,
    flags: Sequence[str] = (),
    log_dir: Path | None = None,
) -> Stack:
    """Two Tritons, both serving every model, and a frontend for each of ``routes`` (name -> its
    ``--route``) over both of them, each with ``flags`` too."""
    frontends = {name: FrontendSpec(flags=["--route", route, *flags], tritons=(0, 1)) for name, route in routes.items()}
    return Stack(
        list(models),
        frontends,
        model_repository=model_repository,
        triton_count=2,
        log_dir=log_dir or REPO_ROOT / ".logs" / "chaos",
    )


def write_report(sections: Mapping[str, object], out: Path, tag: str, command: str) -> Path:
    """The run's report, ``sections`` after its command and time, as chaos-TAG.json and .md."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **sections}
    path = out / f"chaos-{tag}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    (out / f"chaos-{tag}.md").write_text(markdown(report))
    return path


def markdown(report: dict) -> str:  # type: ignore[type-arg]
    lines = [f"# Chaos run `{report['command']}` ({report['measured']})"]
    if "ledger" in report:
        lines += ["", *chaos_lines(report)]
    if "short_deadlines" in report:
        lines += ["", *short_deadline_lines(report["short_deadlines"])]
    return "\n".join(lines) + "\n"


def chaos_lines(report: dict) -> list[str]:  # type: ignore[type-arg]
    s = report["ledger"]
    lines = [
        f"Promise held: **{report['promise_holds']}**. Sent {s['sent']}, accepted {s['accepted']}, "
        f"answered {s['answered']} ({s['reconstructed']} reconstructed), errored {s['errored']}, "
        f"rejected {s['rejected']}, lost {s['lost']}, duplicates {s['duplicates']}; "
        f"{s['wrong']} answers not the expected label ({1 - s['wrong'] / max(s['answered'], 1):.2%} right).",
        f"First answers by status: {s['codes']}.",
        *(f"- {code}, e.g.: `{message}`" for code, message in s["examples"].items()),
        "",
        f"Error answers before the first fault: {report['errors_before_any_fault']}.",
        "",
        "| fault | target | at (s) | held (s) | ended (s) | ready again (s) | error answers until the next fault |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in report["faults"]:
        f = e["fault"]
        target = f"triton{f['target']}" if f["kind"] in ("kill_triton", "stall_triton") else "-"
        ready = "-" if e["ready_s"] is None else f"{e['ready_s']:.1f}"
        timing = f"{e['began_s']:.1f} | {f['hold_s']} | {e['ended_s']:.1f} | {ready}"
        lines.append(f"| {f['kind']} | {target} | {timing} | {e['errors_after']} |")
    lines += ["", "Health transitions: " + ", ".join(f"{t['at_s']:.1f} s {t['status']}" for t in report["health"])]
    if report["samples"]:
        lines += ["", *resource_lines(report["samples"])]
    return lines


def short_deadline_lines(d: dict) -> list[str]:  # type: ignore[type-arg]
    rule = d["rule"]
    lines = [
        "## Short deadlines through stalls",
        "",
        f"Route `{d.get('route', d['model'])}`: {d['rate']:g} q/s of unary calls for {d['duration_s']:g} s, each "
        f"with a {d['deadline_ms']:g} ms gRPC deadline; every Triton SIGSTOPped for {d['stall_s']:g} s every "
        f"{d['every_s']:g} s. Answers are counted by when their query was sent, in {rule['window_s'] * 1e3:g} ms "
        f"windows. After each stall, the OK share counts as recovered from the first window from which it stays "
        f"at {rule['tolerance']:.0%} or more of its share over the {rule['baseline_s']:g} s before the stall, "
        f"for {rule['stay_s']:g} s.",
        "",
        f"Answers by status: {d['codes']}.",
        *(f"- {code}, e.g.: `{message}`" for code, message in d["examples"].items() if code != "OK"),
        "",
        "| fault | began (s) | ended (s) | OK share before | recovered after the end |",
        "|---|---|---|---|---|",
    ]
    for f in d["faults"]:
        before = "-" if f["baseline"] is None else f"{f['baseline']:.1%}"
        lines.append(f"| {f['kind']} | {f['began_s']:.2f} | {f['ended_s']:.2f} | {before} | {f['verdict']} |")
    shares = " ".join("-" if s is None else f"{s:.0%}" for s in d["ok_share_per_s"])
    return [*lines, "", f"OK share per second of the run: {shares}"]


def resource_lines(samples: list[dict]) -> list[str]:  # type: ignore[type-arg]
    """Per process: RSS and open fds at the first sample after warm-up, at the end, and the most seen;
    /dev/shm the same. Restarted processes start again from their own start-up size."""
    settled = samples[len(samples) // 10 :] or samples
    first, last = settled[0], settled[-1]
    lines = ["| process (and its group) | RSS MB first → last (max) | fds first → last (max) |", "|---|---|---|"]
    for name in sorted(set().union(*(s["rss_mb"] for s in samples))):
        rss = [s["rss_mb"][name] for s in settled if name in s["rss_mb"]]
        fds = [s["fds"][name] for s in settled if name in s["fds"]]
        if rss:
            lines.append(f"| {name} | {rss[0]} → {rss[-1]} ({max(rss)}) | {fds[0]} → {fds[-1]} ({max(fds)}) |")
    lines.append(
        f"| /dev/shm | {first['shm_mb']} → {last['shm_mb']} MB ({max(s['shm_mb'] for s in settled)}) | "
        f"{first['shm_entries']} → {last['shm_entries']} entries ({max(s['shm_entries'] for s in settled)}) |"
    )
    return lines


def parser(prog: str, doc: str | None, defaults: dict[str, object]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--model", default=spec.deployed_model_name("mnist"), help="the deployed model (default: %(default)s)")
    add("--parity-model", default=spec.parity_model_name("mnist", "concat", 2), help="(default: %(default)s)")
    add("--encoder", default="concat", help="ParM encoder of the route (default: %(default)s)")
    add("--model-repository", type=Path, default=REPO_ROOT / "model_repository", help="(default: %(default)s)")
    add("--rate", type=float, default=100.0, help="queries per second (default: %(default)s)")
    add("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    add("--every-s", type=float, default=5.0, help="seconds between faults; 0: none (default: %(default)s)")
    add("--kinds", default=",".join(FAULT_KINDS), help="fault kinds, comma-separated (default: %(default)s)")
    add("--streams", type=int, default=2, help="long-lived streams beside the unary calls (default: %(default)s)")
    add("--seed", type=int, default=0, help="(default: %(default)s)")
    add("--sample-s", type=float, default=1.0, help="resource sample period; 0: none (default: %(default)s)")
    add(
        "--frontend-flag",
        action="append",
        default=[],
        help="extra frontend flag (repeatable), e.g. --frontend-flag=--max-inflight=64",
    )
    add(
        "--phases",
        default=",".join(PHASES),
        help="what to run, comma-separated: chaos (the faults above under load, on the coded route), deadlines "
        "(short-deadline clients through stalls of every Triton, on an uncoded route) (default: %(default)s)",
    )
    add(
        "--short-deadline-ms",
        type=float,
        default=50.0,
        help="deadlines phase: each query's gRPC deadline (default: %(default)s)",
    )
    add("--short-rate", type=float, default=50.0, help="deadlines phase: queries per second (default: %(default)s)")
    add("--short-duration", type=float, default=20.0, help="deadlines phase: seconds of load (default: %(default)s)")
    add("--short-stall-s", type=float, default=1.0, help="deadlines phase: each stall's length (default: %(default)s)")
    add(
        "--short-every-s",
        type=float,
        default=6.0,
        help="deadlines phase: seconds between stalls (default: %(default)s)",
    )
    add("--tag", default="mnist", help="report name: chaos-TAG.json/.md (default: %(default)s)")
    add("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="(default: %(default)s)")
    p.set_defaults(**defaults)
    return p


def main(
    argv: list[str] | None, *, prog: str, doc: str | None, defaults: dict[str, object] | None = None
) -> dict[str, object]:
    """The run on the committed MNIST models, its report written, printed and returned: the whole of an
    entry (``prog``, its ``--help`` ``doc``, and its ``defaults`` for the flags: bench.soak's are longer)."""
    from export.datasets import load  # the committed models' test images

    p = parser(prog, doc, defaults or {})
    args = p.parse_args(argv)
    phases = args.phases.split(",")
    if not phases or set(phases) - set(PHASES):
        p.error(f"--phases: {args.phases!r}; known: {','.join(PHASES)}")
    setup_logging()
    images, labels = load("mnist", "test")
    queries = images[:, None].astype(np.float32) / 255.0
    routes = {
        "frontend": f"{args.model}=parm:k=2,encoder={args.encoder},parity_model={args.parity_model}",
        "uncoded": f"{args.model}=none",
    }
    if "chaos" not in phases:
        del routes["frontend"]
    if "deadlines" not in phases:
        del routes["uncoded"]
    sections: dict[str, object] = {}
    with chaos_stack([args.model, args.parity_model], routes, args.model_repository, args.frontend_flag) as stack:
        if "chaos" in phases:
            sections |= asyncio.run(run(stack, "frontend", _run_config(args, queries, labels), _plan(args))).report()
        if "deadlines" in phases:
            phase = ShortDeadlines(
                args.model,
                queries,
                args.short_rate,
                args.short_deadline_ms / 1e3,
                args.short_duration,
                args.short_stall_s,
                args.short_every_s,
            )
            result = asyncio.run(run_short_deadlines(stack, "uncoded", phase))
            sections["short_deadlines"] = {"route": routes["uncoded"], **result.report()}
    command = " ".join([prog, *(argv if argv is not None else sys.argv[1:])])
    path = write_report(sections, args.out, args.tag, command)
    print(path.with_suffix(".md").read_text())
    return sections


def _run_config(args: argparse.Namespace, queries: np.ndarray, labels: np.ndarray) -> RunConfig:
    return RunConfig(args.model, queries, labels, args.rate, args.duration, args.streams, sample_every_s=args.sample_s)


def _plan(args: argparse.Namespace) -> list[Fault]:
    return plan(args.seed, args.duration, args.every_s, 2, tuple(args.kinds.split(",")))
