"""A bounded chaos run: load through the real stack while its parts are killed, stalled and restarted.

Triton instances are SIGKILLed and restarted on the same ports, SIGSTOPped for a while (one at a time,
and all of them at once), and the encoder and decoder services are SIGKILLed and restarted, on a plan
drawn from a seed. Meanwhile unary calls and long-lived streams send queries on a fixed schedule and
every answer is entered in a ledger, which checks the exactly-once promise:

    accepted = answered + errored, duplicates = 0, lost = 0

A unary call sets no deadline of its own (the frontend's ``--default-deadline-s`` applies), so a query
the frontend never answers is seen as *lost* by the client's watchdog rather than hidden behind a
client-side DEADLINE_EXCEEDED. A stream answers each of its queries by id: an id answered twice is a
duplicate, one never answered is lost. The frontend's health is polled throughout, and its
transitions are reported beside the faults. With ``--sample-s``, the resident memory and open file
descriptors of every process, and the entries in /dev/shm, are sampled too (the soak run, bench.soak).

    python -m bench.chaos --duration 60 --rate 100            # the committed models, 2 Tritons
    python -m bench.chaos --help
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack import REPO_ROOT, FrontendSpec, Stack
from coding import spec
from service_common.tensors import from_numpy
from triton_local import shm

log = logging.getLogger(__name__)

FAULT_KINDS = ("kill_triton", "stall_triton", "stall_tritons", "kill_encoder", "kill_decoder")
REJECTED = "RESOURCE_EXHAUSTED"  # refused at admission: never accepted, so outside the ledger's promise


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
class FaultEvent:
    fault: Fault
    began_s: float
    ended_s: float  # the stall lifted, or the killed process started again
    ready_s: float | None  # when the restarted process was ready again (kills only)


class Chaos:
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
            pids = [t.pid for t in victims if t.pid is not None]
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(fault.hold_s)
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            return self._now(), None
        if fault.kind == "kill_triton":
            triton = tritons[fault.target]
            if triton.pid is not None:
                os.kill(triton.pid, signal.SIGKILL)
            triton.stop()  # reaps it and its stubs
            time.sleep(fault.hold_s)
            triton.start()  # the same ports: clients reconnect once it is back
            ended = self._now()
            triton.wait_ready(120)
            return ended, self._now()
        service = self.stack.services[fault.kind.removeprefix("kill_")]
        assert service.proc is not None
        service.proc.kill()
        service.proc.wait()
        time.sleep(fault.hold_s)
        service.start()
        ended = self._now()
        service.wait_serving(60)
        return ended, self._now()

    def pids(self) -> dict[str, int | None]:
        found: dict[str, int | None] = {f"triton{i}": t.pid for i, t in enumerate(self.stack.tritons)}
        found.update({n: s.proc.pid if s.proc else None for n, s in self.stack.services.items()})
        return found


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

    tasks = []
    for n, i in enumerate(picks):
        delay = start + n / _source_rate(cfg) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, i)))
    await asyncio.gather(*tasks)


async def _stream(
    stub: pb_grpc.FrontendStub, cfg: RunConfig, s: int, picks: list[int], start: float, ledger: Ledger, check: Callable
) -> None:
    """One long-lived stream: its messages leave on schedule; answers come back by id, in any order."""
    index = {f"s{s}-{n}": i for n, i in enumerate(picks)}

    async def messages():  # type: ignore[no-untyped-def]
        for n, (qid, i) in enumerate(index.items()):
            delay = start + n / _source_rate(cfg) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
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
    chaos = Chaos(stack, start)
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


def chaos_stack(
    models: Sequence[str], route: str, model_repository: Path, flags: Sequence[str] = (), log_dir: Path | None = None
) -> Stack:
    """Two Tritons, both serving the deployed and the parity model, and one frontend over them."""
    frontend = FrontendSpec(flags=["--route", route, *flags], tritons=(0, 1))
    return Stack(
        list(models),
        {"frontend": frontend},
        model_repository=model_repository,
        triton_count=2,
        log_dir=log_dir or REPO_ROOT / ".logs" / "chaos",
    )


def write_report(result: ChaosResult, out: Path, tag: str, command: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": command, "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **result.report()}
    path = out / f"chaos-{tag}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    (out / f"chaos-{tag}.md").write_text(markdown(report))
    return path


def markdown(report: dict) -> str:  # type: ignore[type-arg]
    s = report["ledger"]
    lines = [
        f"# Chaos run `{report['command']}` ({report['measured']})",
        "",
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
    return "\n".join(lines) + "\n"


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
    add("--tag", default="mnist", help="report name: chaos-TAG.json/.md (default: %(default)s)")
    add("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="(default: %(default)s)")
    p.set_defaults(**defaults)
    return p


def main(
    argv: list[str] | None = None,
    prog: str = "python -m bench.chaos",
    doc: str | None = __doc__,
    defaults: dict[str, object] | None = None,
) -> ChaosResult:
    """The run on the committed MNIST models, its report written and printed (bench.soak: other defaults)."""
    from export.datasets import load  # the committed models' test images

    args = parser(prog, doc, defaults or {}).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    images, labels = load("mnist", "test")
    queries = images[:, None].astype(np.float32) / 255.0
    route = f"{args.model}=parm:k=2,encoder={args.encoder},parity_model={args.parity_model}"
    cfg = RunConfig(args.model, queries, labels, args.rate, args.duration, args.streams, sample_every_s=args.sample_s)
    faults = plan(args.seed, args.duration, args.every_s, 2, tuple(args.kinds.split(",")))
    with chaos_stack([args.model, args.parity_model], route, args.model_repository, args.frontend_flag) as stack:
        result = asyncio.run(run(stack, "frontend", cfg, faults))
    command = " ".join([prog, *(argv if argv is not None else sys.argv[1:])])
    path = write_report(result, args.out, args.tag, command)
    print(path.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
