"""What a testbed run reads besides latencies: the machine's CPU share, its own processes' share, and each
Triton instance's utilisation (busy time over wall time, from Triton's own statistics).

On two cores, a scheme can look slow because the cores were busy (the frontends, the load generator, the
coding, 24 tritonservers, other work on the machine), not because its instances were. A window whose CPU
share passes :data:`CPU_FLAG_SHARE` is flagged: its tail may be the machine's, not the layout's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from triton_local.server import TritonServer

log = logging.getLogger(__name__)

CPU_FLAG_SHARE = 0.70  # of all cores busy: above this, the cores rather than the instances may set the tail
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuReading:
    """Cumulative CPU seconds at one instant: the machine's busy and total (all cores, /proc/stat), this
    testbed's processes' (user + system, reaped children included), and the monotonic clock."""

    busy_s: float
    total_s: float
    own_s: float
    at_s: float
    niced_s: float = 0.0  # of busy_s: time in niced processes (which yield the cores to this testbed's)


@dataclass(frozen=True)
class CpuShare:
    """Shares of all cores over a window: busy on the whole machine, and spent by this testbed."""

    machine: float
    own: float
    niced: float = 0.0  # of machine: the share of all cores busy in niced processes (other work yielding)

    @property
    def flagged(self) -> bool:
        return self.machine > CPU_FLAG_SHARE


def share_over(windows: Sequence[tuple[CpuReading, CpuReading]]) -> CpuShare:
    """The CPU shares over windows taken together, each a (before, after) pair of readings."""
    busy = sum(a.busy_s - b.busy_s for b, a in windows)
    total = sum(a.total_s - b.total_s for b, a in windows)
    own = sum(a.own_s - b.own_s for b, a in windows)
    niced = sum(a.niced_s - b.niced_s for b, a in windows)
    wall_cores = sum(a.at_s - b.at_s for b, a in windows) * (os.cpu_count() or 1)
    total = max(total, 1e-9)
    # min(1, ...): /proc/stat's iowait can go backwards (proc(5)), which puts busy a hair above total
    return CpuShare(machine=min(1.0, busy / total), own=own / max(wall_cores, 1e-9), niced=niced / total)


def machine_cpu_s() -> tuple[float, float, float]:
    """(busy, total, niced) CPU seconds of all cores since boot: /proc/stat's first line, idle and iowait
    not busy; niced: its nice column."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    total = sum(fields)
    return (total - fields[3] - fields[4]) * _TICK_S, total * _TICK_S, fields[1] * _TICK_S


def own_cpu_s(groups: Iterable[int], pids: Iterable[int]) -> float:
    """CPU seconds of every live member of the process ``groups`` (a tritonserver and its backend stubs)
    and of ``pids``, from one pass over /proc."""
    groups, pids = set(groups), set(pids)
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) in groups or int(entry.name) in pids:
            total += sum(int(v) for v in fields[11:15])
    return total * _TICK_S


def cpu_reading(tritons: Sequence[TritonServer], pids: Iterable[int]) -> CpuReading:
    busy, total, niced = machine_cpu_s()
    groups = [t.pid for t in tritons if t.pid is not None]
    return CpuReading(busy, total, own_cpu_s(groups, [*pids, os.getpid()]), time.monotonic(), niced)


@dataclass(frozen=True)
class InstanceReading:
    """One Triton instance's cumulative counts over its models: rows inferred, executions, and the time its
    executions held it (compute input + infer + output of every batch; the emulated hold is inside infer)."""

    rows: int
    executions: int
    busy_s: float


def instance_reading(triton: TritonServer) -> InstanceReading:
    """From ``/v2/models/stats``: current as soon as an answer is sent (the metrics lag by their interval)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{triton.http_url}/v2/models/stats", timeout=10) as reply:
        models = json.load(reply)["model_stats"]
    busy_ns = sum(
        int(batch[phase]["ns"])
        for model in models
        for batch in model.get("batch_stats", [])
        for phase in ("compute_input", "compute_infer", "compute_output")
    )
    return InstanceReading(
        rows=sum(int(m["inference_count"]) for m in models),
        executions=sum(int(m["execution_count"]) for m in models),
        busy_s=busy_ns / 1e9,
    )


def pending_requests(triton: TritonServer) -> int:
    """Requests queued in Triton's schedulers, not yet executing (``nv_inference_pending_request_count``
    summed over models: a gauge kept as requests enter and leave the queue, current at every scrape)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(triton.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    return sum(int(float(v)) for v in re.findall(r"^nv_inference_pending_request_count\{[^}]*\} (\S+)$", text, re.M))


def idle(triton: TritonServer) -> bool:
    """Nothing queued in Triton and no execution holding its emulated accelerator."""
    return not triton.accelerator_busy() and pending_requests(triton) == 0


def settled_readings(
    tritons: Sequence[TritonServer], quiet_s: float = 0.3, poll_s: float = 0.05, limit_s: float = 300.0
) -> list[InstanceReading]:
    """Every instance's reading once its work has drained: a losing copy or a parity still queued or
    running when the last answer came lands in the window that sent it, not in the next. Drained means
    idle (:func:`idle`) at every poll for ``quiet_s`` with the rows unchanged: a backlog of multi-second
    batches keeps an instance busy between its row counts moving, and a call the frontend sends late (a
    group's parity after its fill timeout) shows within the quiet time. One still busy at ``limit_s`` is
    logged, and spills over."""
    deadline = time.monotonic() + limit_s
    readings = [instance_reading(t) for t in tritons]
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        busy = not all(idle(t) for t in tritons)
        now = [instance_reading(t) for t in tritons]
        if busy or [r.rows for r in now] != [r.rows for r in readings]:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return now
        readings = now
    log.warning("instances still busy %.0f s after the load: their rows spill into the next window", limit_s)
    return readings
