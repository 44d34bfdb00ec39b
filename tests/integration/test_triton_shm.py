"""A SIGKILLed tritonserver's /dev/shm regions are removed by triton_local, and a live server's are kept.

Triton's Python-based onnxruntime backend keeps a shared-memory region per model instance and unlinks
it only on a clean exit. Real tritonservers here: one stays live through the module (its regions must
survive every cleanup); the others are SIGKILLed, then cleaned up by ``stop()`` or, when whoever
started them died too, by the next ``start()``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from triton_local import TritonConfig, TritonServer, shm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
MODELS = ("mnist_cnn",)
LAUNCHER = """
import sys
from pathlib import Path
from triton_local import TritonConfig, TritonServer
server = TritonServer(TritonConfig(Path(sys.argv[1]), models=("mnist_cnn",), log_path=Path(sys.argv[2]))).start()
server.wait_ready()
print(server.pid, flush=True)
sys.stdin.read()  # until the test kills this process
"""


def _config(tmp_path: Path, name: str) -> TritonConfig:
    return TritonConfig(REPO / "model_repository", models=MODELS, log_path=tmp_path / f"{name}.log")


def _regions(pid: int) -> set[str]:
    """The /dev/shm files the server's process group maps (read from the kernel, as a user would)."""
    regions = {r for p in shm.group(pid) for r in shm.mapped(p)}
    assert regions, f"tritonserver {pid} maps no /dev/shm region"
    return regions


def _present(regions: set[str]) -> set[str]:
    return {r for r in regions if (shm.SHM / r).exists()}


def _wait_gone(pid: int, whole_group: bool) -> None:
    """Until the process (a zombie counts as gone), or its whole group, has died (SIGKILL lands asynchronously)."""

    def alive() -> bool:
        return bool(shm.group(pid)) if whole_group else shm.start_time(pid) is not None

    deadline = time.monotonic() + 10
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, set[str]]]:
    """A server that stays up: none of its regions may be removed."""
    with TritonServer(_config(tmp_path_factory.mktemp("live"), "live")) as server:
        assert server.pid is not None
        yield server, _regions(server.pid)


def test_stop_removes_a_sigkilled_servers_regions_and_keeps_a_live_ones(live, tmp_path):
    server, kept = live
    with TritonServer(_config(tmp_path, "killed")) as killed:
        assert killed.pid is not None
        regions = _regions(killed.pid)
        os.kill(killed.pid, signal.SIGKILL)  # tritonserver alone (as the OOM killer would); its stub lives on
        _wait_gone(killed.pid, whole_group=False)
        assert _present(regions) == regions  # what a SIGKILL leaves behind
        killed.stop()
    assert _present(regions) == set()
    assert _present(kept) == kept and server.is_running()


def test_start_removes_the_regions_of_a_server_killed_with_its_launcher(live, tmp_path):
    """The process that started a server is SIGKILLed together with the server (nobody calls stop):
    the next server triton_local starts removes what they left, and only that."""
    server, kept = live
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(REPO / "model_repository"), str(tmp_path / "orphan.log")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert launcher.stdout is not None
        pid = int(launcher.stdout.readline())
        regions = _regions(pid)
        os.killpg(pid, signal.SIGKILL)  # the server first: the launcher's death would SIGTERM it (a clean exit)
        _wait_gone(pid, whole_group=True)
    finally:
        launcher.kill()
        launcher.wait()
    assert _present(regions) == regions
    with TritonServer(_config(tmp_path, "next")):
        assert _present(regions) == set()
        assert _present(kept) == kept and server.is_running()
