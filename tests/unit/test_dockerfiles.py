"""Each image's Dockerfile, checked without a container runtime (none can run here): pinned bases, a
non-root user, no secrets, only the pinned run-time requirements installed, stubs made by the build.
That the install step itself works in a fresh venv is tests/integration/test_wheel_install.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SERVICES = {"frontend": "frontend", "encoder": "encoder_service", "decoder": "decoder_service"}
NOT_AT_RUN_TIME = ("torch", "pytest", "hypothesis", "onnx", "onnxruntime", "matplotlib", "ruff", "mypy", "grpcio-tools")
SECRET = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|API_KEY|PRIVATE_KEY|CREDENTIAL)", re.IGNORECASE)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def requirements_installed(service: str) -> list[str]:
    """The requirement files the service's image installs, in order (-r FILE in its RUN lines)."""
    runs = [args for op, args in instructions(DOCKER / f"{service}.Dockerfile") if op == "RUN"]
    return [m for args in runs for m in re.findall(r"pip install (?:\S+ )*?-r (\S+)", args)]


def pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line, following ``-r`` includes."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found |= pins(path.parent / line[3:].strip())
        elif "==" in line:
            name, version = line.split("==")
            found[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    return found


@pytest.mark.parametrize("path", sorted(DOCKER.glob("*.Dockerfile")), ids=lambda p: p.stem)
def test_bases_are_pinned_the_user_is_not_root_and_nothing_secret_is_baked_in(path):
    ops = instructions(path)
    for op, args in ops:
        if op == "FROM":
            image = args.split()[0]
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            assert "@sha256:" in image or re.fullmatch(r"\d+(\.\d+)+[\w.-]*", tag), f"unpinned base {image}"
        assert not (op in ("ENV", "ARG") and SECRET.search(args)), args
        assert not (op in ("COPY", "ADD") and re.search(r"\.env\b|id_rsa|\.pem|\.netrc|\.pypirc", args)), args
    last_stage = ops[max(i for i, (op, _) in enumerate(ops) if op == "FROM") :]
    users = [args for op, args in last_stage if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must not run as root"
    assert users[-1].split(":")[0].isdigit(), "a numeric uid, so runAsNonRoot can check it"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_service_image_installs_only_pinned_run_time_packages_then_the_project(service):
    ops = instructions(DOCKER / f"{service}.Dockerfile")
    runs = " && ".join(args for op, args in ops if op == "RUN")
    files = requirements_installed(service)
    assert files and "requirements.txt" not in files  # that one carries test and training packages
    assert "pip install --no-deps ." in runs  # the project, built here: setup.py generates the stubs
    installed = {name for f in files for name in pins(REPO / f)}
    assert not installed & set(NOT_AT_RUN_TIME), installed & set(NOT_AT_RUN_TIME)
    entry = next(args for op, args in reversed(ops) if op == "ENTRYPOINT")
    assert f'"-m", "{SERVICES[service]}"' in entry
    assert not any(op == "COPY" and "_pb2" in args for op, args in ops)


def test_the_frontend_image_pins_every_dependency_the_project_declares_for_the_services():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["serve"]
    names = {re.split(r"[<>=!\[ ;]", d, maxsplit=1)[0].lower() for d in declared}
    pinned = {name for f in requirements_installed("frontend") for name in pins(REPO / f)}
    assert names <= pinned, names - pinned


def test_the_build_context_leaves_out_what_no_image_needs():
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (
        ".venv",
        "tests",
        "data",
        "model_repository",
        ".git",
        "bench/results",
        "protos/codedserve/v1/*_pb2*.py",
    ):
        assert entry in ignored, entry
