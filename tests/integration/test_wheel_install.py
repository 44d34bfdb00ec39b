"""The wheel alone gives working services and a light client, as a new user installs them.

The wheel is built from a fresh clone's files (no generated stubs: the build makes them), then installed
into clean venvs two ways: with its ``serve`` extra and no requirements file (pip's resolver; what
pyproject.toml declares must be enough), and the images' way (the pinned files docker/*.Dockerfile install,
then the wheel with --no-deps). Each service runs from outside the repository, configured by
``CODEDSERVE_*`` variables alone, against the local Triton (run from the development venv, as in every
integration test), answers gRPC health SERVING, and the frontend answers a query exactly (linear models).
The client (the plain install) goes on a Python 3.12 or 3.13 with numpy 2 where one is on the machine and
queries that frontend; elsewhere pip's resolver shows it would (--dry-run). About 2.5 minutes on 2 cores,
most of it pip downloading each venv's packages (the triton extra's resolution fetches 85 MB of wheels).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.stack import ServiceProcess
from export import spec
from service_common.tensors import from_numpy
from tests.integration import linear_models
from tests.unit.test_dockerfiles import requirements_installed
from triton_local.server import TritonConfig, TritonServer, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SKIPPED = ("bench/results/", "export/results/", "model_repository/", "data/")  # not part of any build
MODULES = {"encoder": "encoder_service", "decoder": "decoder_service", "frontend": "frontend"}
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}  # nothing points at the checkout or the development venv
ROUTE = f"{linear_models.DEPLOYED}=parm:k=2,encoder=add,parity_model={linear_models.parity_name(2)}"
CLIENT_QUERY = """
import json, sys
import grpc, numpy as np
from codedserve import client
with grpc.insecure_channel(sys.argv[1]) as channel:
    answer = client.classify(channel, sys.argv[2], np.load(sys.argv[3]), timeout=10)
print(json.dumps({"numpy": np.__version__, "logits": client.logits(answer).tolist()}))
"""


def _checkout_copy(dest: Path) -> Path:
    """The files a fresh clone has (tracked, plus new ones not ignored): no stubs, no build outputs."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the checkout's files")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if not name.startswith(SKIPPED) and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    assert not list((dest / "protos").rglob("*_pb2*.py")), "the copy must not carry generated stubs"
    return dest


def _pip(python: Path, *args: str) -> str:
    """This venv's pip acting on ``python``'s environment (the new venvs have no pip of their own)."""
    command = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _venv(where: Path, base: str | Path = sys.executable) -> Path:
    subprocess.run([str(base), "-m", "venv", "--without-pip", str(where)], check=True)
    return where / "bin" / "python"


def _run(python: Path, *args: str, cwd: Path) -> str:
    """Run in ``cwd`` (outside the repository) with no variable but PATH."""
    done = subprocess.run([str(python), *args], cwd=cwd, env=CLEAN_ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = _checkout_copy(tmp_path_factory.mktemp("checkout"))
    dist = tmp_path_factory.mktemp("dist")
    # Build isolation: setuptools and grpcio-tools come from the registry, as for a user; setup.py makes the stubs.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (built,) = dist.glob("codedserve-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A clean venv with the wheel and its `serve` extra: what pyproject.toml declares, nothing else."""
    python = _venv(tmp_path_factory.mktemp("venv-serve"))
    _pip(python, "install", "-q", f"{wheel}[serve]")
    return python


@pytest.fixture(scope="module")
def triton(tmp_path_factory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("triton")
    models = linear_models.write_repository(root / "models")
    server = TritonServer(TritonConfig(root / "models", models=tuple(models), log_path=root / "triton.log")).start()
    try:
        server.wait_ready(120)
        yield server
    finally:
        server.stop()


def _envs(triton: TritonServer, ports: dict[str, int]) -> dict[str, dict[str, str]]:
    """Each service's whole configuration, as CODEDSERVE_* variables."""
    return {
        "encoder": {"CODEDSERVE_ENCODER_ADDRESS": f"127.0.0.1:{ports['encoder']}"},
        "decoder": {"CODEDSERVE_DECODER_ADDRESS": f"127.0.0.1:{ports['decoder']}"},
        "frontend": {
            "CODEDSERVE_FRONTEND_ADDRESS": f"127.0.0.1:{ports['frontend']}",
            "CODEDSERVE_FRONTEND_TRITON_URLS": triton.grpc_url,
            "CODEDSERVE_FRONTEND_ENCODER_URL": f"127.0.0.1:{ports['encoder']}",
            "CODEDSERVE_FRONTEND_DECODER_URL": f"127.0.0.1:{ports['decoder']}",
            "CODEDSERVE_FRONTEND_ROUTES": ROUTE,
            "CODEDSERVE_FRONTEND_FILL_TIMEOUT_MS": "50",
        },
    }


@contextlib.contextmanager
def _services(python: Path, triton: TritonServer, logs: Path, names: tuple[str, ...]) -> Iterator[dict[str, int]]:
    """Start ``names`` from ``python``'s venv, outside the repository; yield their ports; stop them all."""
    ports = dict(zip(MODULES, free_ports(len(MODULES)), strict=True))
    envs = _envs(triton, ports)
    started: list[ServiceProcess] = []
    try:
        for name in names:
            log_path = logs / f"{name}.log"
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(
                    [str(python), "-m", MODULES[name]], cwd=logs, env={**CLEAN_ENV, **envs[name]},
                    stdout=out, stderr=subprocess.STDOUT,
                )  # fmt: skip
            started.append(ServiceProcess(name, [], ports[name], log_path, envs[name], proc))
        for service in started:
            service.wait_serving(60)  # fails with the log tail if the process exits (a missing package)
        yield ports
    finally:
        for service in reversed(started):
            service.stop()


@pytest.fixture(scope="module")
def stack(installed, triton, tmp_path_factory) -> Iterator[dict[str, int]]:
    """The three services from the wheel install, against the local Triton: name -> port."""
    with _services(installed, triton, tmp_path_factory.mktemp("stack"), tuple(MODULES)) as ports:
        yield ports


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _query(port: int) -> tuple[np.ndarray, np.ndarray]:
    """One query through the frontend: (the answer's logits, the linear model's exact output)."""
    x = np.random.default_rng(0).random(spec.IMAGE_SHAPE, dtype=np.float32)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = pb.ClassifyRequest(model=linear_models.DEPLOYED, input=from_numpy(x))
        reply = pb_grpc.FrontendStub(channel).Classify(request, timeout=10)
    return np.array(reply.logits), linear_models.reference(x)[0]


def test_the_wheel_carries_the_generated_stubs_and_the_license(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for stub in ("codedserve_pb2.py", "codedserve_pb2_grpc.py", "codedserve_pb2.pyi", "codedserve.proto"):
        assert f"codedserve/v1/{stub}" in names, stub
    assert "codedserve/client.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-10:]
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata


@pytest.mark.parametrize("module", sorted(MODULES.values()))
def test_each_service_runs_from_the_wheel_install(installed, tmp_path, module):
    text = _run(installed, "-m", module, "--help", cwd=tmp_path)
    assert "[env CODEDSERVE_" in text and "--address" in text
    code = f"import {module}, codedserve.v1.codedserve_pb2 as p; print({module}.__file__, p.__file__)"
    where = _run(installed, "-c", code, cwd=tmp_path)
    assert all(str(installed.parent.parent) in path for path in where.split()), where


def test_services_installed_from_the_wheel_alone_answer_health_and_a_query(installed, stack):
    for name, port in stack.items():
        assert _health(port) == health_pb2.HealthCheckResponse.SERVING, name
    logits, expected = _query(stack["frontend"])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    numpy_version = _run(installed, "-c", "import numpy; print(numpy.__version__)", cwd=installed.parent)
    assert int(numpy_version.split(".")[0]) >= 2, f"the services were meant to run on numpy 2, not {numpy_version}"


def test_the_images_install_steps_give_serving_services(wheel, triton, tmp_path):
    """Each image's pinned files, then the wheel with --no-deps: the coding services with their files alone,
    then the frontend with what its image adds."""
    python = _venv(tmp_path / "venv")
    for name in dict.fromkeys(requirements_installed("encoder") + requirements_installed("decoder")):
        _pip(python, "install", "-q", "-r", str(REPO / name))
    _pip(python, "install", "-q", "--no-deps", str(wheel))
    with _services(python, triton, tmp_path, ("encoder", "decoder")) as ports:
        assert _health(ports["encoder"]) == _health(ports["decoder"]) == health_pb2.HealthCheckResponse.SERVING
    for name in requirements_installed("frontend"):
        _pip(python, "install", "-q", "-r", str(REPO / name))
    with _services(python, triton, tmp_path, tuple(MODULES)) as ports:
        logits, expected = _query(ports["frontend"])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def _newer_python() -> Path | None:
    """A Python 3.13 or 3.12 that runs: a shim on PATH may name a version it does not run, so each is tried."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for minor in (13, 12):
        found = [shutil.which(f"python3.{minor}"), *sorted(pyenv.glob(f"versions/3.{minor}.*/bin/python3.{minor}"))]
        for candidate in filter(None, found):
            probe = f"import sys, venv; print(sys.version_info[:2] == (3, {minor}))"
            done = subprocess.run([str(candidate), "-c", probe], capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip() == "True":
                return Path(candidate)
    return None


def test_the_client_installs_on_a_newer_python_with_numpy_2(wheel, stack, tmp_path):
    """The plain install (no extra) on 3.12/3.13 with numpy 2 queries the frontend of the wheel install; without
    such a Python, pip's resolver shows that it would install there."""
    newer = _newer_python()
    if newer is None:
        on_313 = ("--python-version", "3.13", "--only-binary", ":all:", "--target", str(tmp_path / "unused"))
        report = _dry_run(str(wheel), "numpy>=2", *on_313)  # pip needs --target to resolve for another Python
        assert int(report["numpy"].split(".")[0]) >= 2 and "grpcio" in report and "protobuf" in report, report
        return
    client = _venv(tmp_path / "venv", base=newer)
    _pip(client, "install", "-q", str(wheel), "numpy>=2")
    x = np.random.default_rng(1).random(spec.IMAGE_SHAPE, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    address = f"127.0.0.1:{stack['frontend']}"
    answer = json.loads(_run(client, "-c", CLIENT_QUERY, address, linear_models.DEPLOYED, "x.npy", cwd=tmp_path))
    assert int(answer["numpy"].split(".")[0]) >= 2, answer["numpy"]
    np.testing.assert_allclose(answer["logits"], linear_models.reference(x)[0], rtol=1e-4, atol=1e-4)


def _dry_run(*args: str) -> dict[str, str]:
    """name -> version of what ``pip install --dry-run`` would install, on this machine's registries."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--report", "-"]
    done = subprocess.run([*command, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(done.stdout)["install"]
    }


def test_the_local_triton_extra_alone_holds_numpy_below_2(wheel):
    """`triton` (Triton's python-backend stub needs numpy < 2) resolves beside `serve`, which does not."""
    both = _dry_run(f"{wheel}[serve,triton]")
    assert both["nvidia-pytriton"] == "0.7.0" and int(both["numpy"].split(".")[0]) < 2, both
    assert "onnxruntime" in both and "uvloop" in both
