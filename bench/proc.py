"""What /proc says about a process: its CPU seconds (all threads, or its main thread alone) and its tree.

Read from /proc/<pid>/stat and /proc/<pid>/task, so the figures hold on a shared machine better than
throughput does. Linux only, as every bench that reads them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat_fields(path: str) -> list[str]:
    """The fields of a stat file after the command name (which may hold spaces and parentheses)."""
    return Path(path).read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and of its children that have exited and been waited for."""
    return sum(int(v) for v in _stat_fields(f"/proc/{pid}/stat")[11:15]) * _TICK_S


def thread_cpu_s(pid: int) -> tuple[float, float]:
    """(all threads, main thread) user + system CPU seconds of ``pid``."""
    total = main = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
            seconds = (int(fields[11]) + int(fields[12])) * _TICK_S
            total += seconds
            main += seconds if int(tid) == pid else 0.0
    return total, main


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (of its main thread)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def process_tree(pid: int) -> list[int]:
    """``pid`` and every live descendant of it."""
    return [pid, *(p for c in children(pid) for p in process_tree(c))]
