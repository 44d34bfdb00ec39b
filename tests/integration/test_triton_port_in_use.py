"""A tritonserver asked for a port that another tritonserver holds fails its start, naming the port, and
leaves no /dev/shm region behind.

``python -m triton_local`` refuses such a port before it launches anything. A clash the check before the
launch cannot see (under a launcher the ports are in its network namespace; or a port taken between the
check and tritonserver's bind) fails ``wait_ready``: the readiness probe, answered by the other server,
no longer counts, and the regions the failed server created are removed.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from triton_local import TritonConfig, TritonServer, TritonStartError, shm
from triton_local.server import PORT_FLAGS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
MODELS = ("mnist_cnn",)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """A live tritonserver holding its three ports; it must survive every failed start."""
    log = tmp_path_factory.mktemp("other") / "other.log"
    with TritonServer(TritonConfig(REPO / "model_repository", models=MODELS, log_path=log)) as server:
        yield server


def _ports(server: TritonServer) -> dict[str, int]:
    """The server's ports by the flag that names each."""
    urls = (f"//{server.grpc_url}", f"//{server.http_url}", server.metrics_url)
    return {flag: int(urlsplit(url).port or 0) for flag, url in zip(PORT_FLAGS, urls, strict=True)}


def _regions() -> set[str]:
    return {path.name for path in shm.SHM.iterdir()}


def _orphans(before: set[str]) -> set[str]:
    """The /dev/shm regions that appeared since ``before`` and that no live process maps: what a failed
    start left behind (other servers starting meanwhile map theirs)."""
    in_use = {r for entry in Path("/proc").iterdir() if entry.name.isdigit() for r in shm.mapped(int(entry.name))}
    return _regions() - before - in_use


@pytest.mark.parametrize("flag", PORT_FLAGS)
def test_the_cli_refuses_a_port_in_use_before_it_reports_serving(other, tmp_path, flag):
    busy = _ports(other)[flag]
    ports = {f: 0 for f in PORT_FLAGS} | {flag: busy}
    argv = [sys.executable, "-m", "triton_local", "--model-repository", str(REPO / "model_repository")]
    argv += ["--models", ",".join(MODELS), "--build-dir", str(tmp_path / "build")]
    argv += [arg for f, port in ports.items() for arg in (f, str(port))]
    before = _regions()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "serving" not in output  # before the fix: "serving", from the other server's readiness answer
    assert f"port {busy} ({flag}) on 127.0.0.1 is in use by another process" in output, output
    assert _orphans(before) == set()
    assert other.is_running()


@pytest.mark.parametrize("flag", PORT_FLAGS)
def test_a_clash_after_the_check_fails_wait_ready_and_leaves_no_region(other, tmp_path, flag):
    """Under a launcher (``env``, which execs tritonserver in place) the ports are not checked before the
    launch: tritonserver loads its model, then fails to bind, as it would after losing a race for the port."""
    busy = _ports(other)[flag]
    field = flag.removeprefix("--").replace("-", "_")
    config = TritonConfig(
        REPO / "model_repository", models=MODELS, launcher=("env",), log_path=tmp_path / "clash.log", **{field: busy}
    )
    server = TritonServer(config)
    before = _regions()
    with pytest.raises(TritonStartError, match=rf"port {busy} \({flag}\) on 127\.0\.0\.1 is in use by another process"):
        with server:
            pass
    assert server.pid is None and not server.is_running()
    assert _orphans(before) == set()
    assert other.is_running()
