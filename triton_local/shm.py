"""The /dev/shm regions of the tritonservers triton_local starts, removed once their server is gone.

Triton's Python-based onnxruntime backend keeps one shared-memory region per model instance
(``/dev/shm/triton_onnxruntime_backend_shm_region_<uuid>``) and unlinks it only on a clean exit: a
SIGKILLed server leaves it behind (1 MiB or more each). The backend takes no prefix for its
python-based variant (``shm-region-prefix-name`` is ignored there: tried), so ownership is learnt from
the kernel: while a server runs, the regions its process group maps (``/proc/<pid>/maps``) are written
to a record, ``<tmp>/codedserve-triton-shm/<pid>-<starttime>.json``. A region is removed only when its
record's process is provably gone (no process with that pid and start time, none left in its process
group) and no live process maps it. Regions without a record (another launcher's, older runs') are
never touched. This assumes the servers that share this /tmp and /dev/shm share one pid namespace
(one host or one container): a server in another pid namespace would look gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

LOG = logging.getLogger(__name__)

SHM = Path("/dev/shm")
RECORDS = Path(tempfile.gettempdir()) / "codedserve-triton-shm"
_PROC = Path("/proc")


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 is index 0); None if gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """When the live process ``pid`` started (clock ticks since boot; None if gone or a zombie): with
    the pid, it names one process for good."""
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


def _live_pids() -> list[int]:
    """Every process that is not a zombie."""
    pids = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def group(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (tritonserver and its backend stubs)."""
    return [pid for pid in _live_pids() if (fields := _stat(pid)) and int(fields[2]) == pgid]


def mapped(pid: int) -> set[str]:
    """The names of the /dev/shm files process ``pid`` maps."""
    try:
        lines = (_PROC / str(pid) / "maps").read_text().splitlines()
    except OSError:
        return set()
    prefix = f"{SHM}/"
    return {line.split(prefix, 1)[1].removesuffix(" (deleted)") for line in lines if prefix in line}


def record(pid: int, started: int | None = None) -> None:
    """Add the regions server ``pid``'s process group maps now to its record (a server started with
    ``start_new_session``: its pid is its process group). ``started``, its start time as its launcher
    read it, names the record even once the server itself has exited and only its stubs are left (the
    kernel hands out no pid still in use as a process group); a different process now holding the pid
    is never recorded."""
    now = start_time(pid)
    started = now if started is None else started
    if started is None or now not in (None, started):
        return
    path = RECORDS / f"{pid}-{started}.json"
    known = set(_read(path).get("regions", []))
    regions = known | {r for p in group(pid) for r in mapped(p)}
    if regions == known and path.exists():
        return  # polled while a server starts: write only what is new
    RECORDS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": pid, "start_time": started, "regions": sorted(regions)}))
    os.replace(tmp, path)


def _read(path: Path) -> dict:  # type: ignore[type-arg]
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _gone(pid: int, started: int) -> bool:
    return start_time(pid) != started and not group(pid)


def release(pid: int, started: int, wait_s: float = 2.0) -> list[str]:
    """Once server ``pid`` (started at ``started``) and its group are gone (waiting up to ``wait_s``
    for killed stubs to exit), remove the regions of its record that no live process maps, and the
    record. Returns the names removed."""
    deadline = time.monotonic() + wait_s
    while not _gone(pid, started):
        if time.monotonic() >= deadline:
            LOG.warning("tritonserver pid %d still has processes; its /dev/shm regions are kept", pid)
            return []
        time.sleep(0.05)
    return _remove(RECORDS / f"{pid}-{started}.json")


def _remove(path: Path) -> list[str]:
    regions = _read(path).get("regions", [])
    in_use = {r for p in _live_pids() for r in mapped(p)} if regions else set()
    removed = []
    for name in regions:
        if name in in_use or "/" in name:
            continue
        with contextlib.suppress(FileNotFoundError):
            (SHM / name).unlink()
            removed.append(name)
    path.unlink(missing_ok=True)
    if removed:
        LOG.info("removed %d /dev/shm regions of tritonserver %s: %s", len(removed), path.stem, ", ".join(removed))
    return removed


def remove_stale() -> list[str]:
    """Remove the regions of every recorded server that is gone (killed along with the process that
    started it, so nobody called stop). Returns the names removed."""
    removed: list[str] = []
    for path in sorted(RECORDS.glob("*.json")) if RECORDS.is_dir() else []:
        data = _read(path)
        pid, started = data.get("pid"), data.get("start_time")
        if isinstance(pid, int) and isinstance(started, int) and _gone(pid, started):
            removed += _remove(path)
    return removed
