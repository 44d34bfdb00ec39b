"""docs/own-model.md, run as written at a tiny setting, read from the doc itself so the two cannot drift apart.

The Python files the doc shows are written into the reader's folder (``~/shapes``, in a fresh home folder); the
inputs it assumes the reader brings are made here the way it says they were made (``weights.pt``: the doc's
``model.py`` trained a little; ``weights_b.pt``: that fine-tuned further; ``images/`` in its layout, one folder per
class; ``bands.npz`` and ``bands.onnx``, whose batch axis is fixed at 1). Then every ``$`` command of its
transcripts and every line of its ``bash`` block runs in doc order in a shell, with the project's environment on
PATH, the background services (the ``&`` lines) as processes, until the frontend says SERVING. A command must exit
0 (or with the status EXPECTED_ERRORS gives it) and print every line the doc shows under it, up to the numbers and
the run-dependent text VARIES names. The only edits to the doc's text are SUBSTITUTIONS (and, where a default port
is taken on this machine, SERVICE_PORTS); a substitution that matches nothing fails the test."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from export.user_data import Preprocessing
from tests.integration import own_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

DOC = Path(__file__).resolve().parents[2] / "docs" / "own-model.md"

# The doc's text -> what runs here, in its commands and files. Each must match the doc at least once.
SUBSTITUTIONS = {
    "--epochs 20": "--epochs 1",  # the tiny setting
    "--epochs 10": "--epochs 1",
    # the services write their logs (`2> encoder.log`) where they start: a temp folder, not this working tree
    "cd /path/to/codedserve": "cd {services}",
}
# Commands the doc shows failing on purpose -> the exit status they must fail with.
EXPECTED_ERRORS = {"python -m export parity --name bands --k 2": 2}
# Run-dependent text, masked in the doc's output and in ours before a line is compared (in this order).
VARIES = (
    (r"sha256 [0-9a-f]+", "sha256 <hash>"),
    (r"\d+%\|[^|]*\|\s*\d+/\d+ \[[^\],]*,[^\],]*", "<progress>"),  # tqdm's bar, elapsed time and rate
    (r"\| [^|]*, \d+ cores \|", "| <machine> |"),
    (r"(?<![\w/])class_[a-d](?![\w/])", "<class>"),  # the labels a tiny run answers (paths keep theirs)
    (r"[-−]?\d+(?:\.\d+)?", "#"),
)
# The ports the bash block's services take by default. Only if one is in use here, each command that starts
# with a key gets its value (ports from free ones) in its place, and so does client.py's frontend address.
DEFAULT_PORTS = {
    "triton_http": 8000,
    "triton": 8001,
    "triton_metrics": 8002,
    "frontend": 8100,
    "encoder": 8101,
    "decoder": 8102,
}
SERVICE_PORTS = {
    "python -m triton_local": "python -m triton_local --http-port {triton_http} --grpc-port {triton} "
    "--metrics-port {triton_metrics}",
    "python -m encoder_service": "python -m encoder_service --address 127.0.0.1:{encoder}",
    "python -m decoder_service": "python -m decoder_service --address 127.0.0.1:{decoder}",
    "python -m frontend": "python -m frontend --address 127.0.0.1:{frontend} --triton-url 127.0.0.1:{triton} "
    "--encoder-url 127.0.0.1:{encoder} --decoder-url 127.0.0.1:{decoder}",
    '"127.0.0.1:8100"': '"127.0.0.1:{frontend}"',
}
IMAGES = 120  # the doc's folder has 1,200
COMMAND_TIMEOUT_S = 240
SERVING_TIMEOUT_S = 180


@dataclass
class Command:
    text: str
    output: list[str]


@dataclass
class Services:
    lines: list[str]


@dataclass
class Tutorial:
    files: dict[str, str]
    classes: list[str]
    steps: list[Command | Services] = field(default_factory=list)


def parse(doc: str) -> Tutorial:
    """The doc's named Python files, the class folders of its ``images/`` layout, and its steps in order."""
    tutorial, end = Tutorial({}, []), 0
    for block in re.finditer(r"^```(\w*)\n(.*?)^```$", doc, re.M | re.S):
        lang, body, prose, end = block[1], block[2], doc[end : block.start()], block.end()
        if lang == "python":
            named = re.match(r"# (\w+\.py)\n", body) or list(re.finditer(r"`(\w+\.py)`", prose))[-1]
            tutorial.files[named[1]] = body
        elif lang == "bash":
            tutorial.steps.append(Services([line for line in body.splitlines() if line.strip()]))
        elif body.startswith("$ "):
            tutorial.steps += _transcript(body)
        elif "images/" in body:
            tutorial.classes = re.findall(r"[├└]── (\w+)/", body.split("images/", 1)[1])
    return tutorial


def _transcript(body: str) -> list[Command]:
    commands: list[Command] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            commands.append(Command(line[2:], []))
        elif line.strip():
            commands[-1].output.append(line)
    return commands


def _substitute(tutorial: Tutorial, subs: dict[str, str]) -> None:
    """Apply ``subs`` to the commands, the service lines and the files; fail on one that matches nothing."""
    unused = set(subs)

    def sub(text: str) -> str:
        for old, new in subs.items():
            if old in text:
                unused.discard(old)
                text = text.replace(old, new)
        return text

    for step in tutorial.steps:
        if isinstance(step, Command):
            step.text = sub(step.text)
        else:
            step.lines = [sub(line) for line in step.lines]
    tutorial.files = {name: sub(text) for name, text in tutorial.files.items()}
    assert not unused, f"substitutions that match nothing in {DOC.name} (the doc changed?): {sorted(unused)}"


def _shape(line: str) -> str:
    for pattern, mask in VARIES:
        line = re.sub(pattern, mask, line)
    return " ".join(line.split())


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> tuple[dict[str, int], dict[str, str]]:
    """The defaults when all are free (the doc runs as written), else free ports and SERVICE_PORTS."""
    if all(_port_free(p) for p in DEFAULT_PORTS.values()):
        return DEFAULT_PORTS, {}
    socks = [socket.socket() for _ in DEFAULT_PORTS]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = {name: sock.getsockname()[1] for name, sock in zip(DEFAULT_PORTS, socks, strict=True)}
    for sock in socks:
        sock.close()
    return ports, {old: new.format(**ports) for old, new in SERVICE_PORTS.items()}


def _make_inputs(shapes: Path, tutorial: Tutorial) -> None:
    """What the reader brings: the doc's files, a tiny ``images/`` folder (per class ``0000.png`` ...),
    ``weights.pt`` and ``weights_b.pt`` from the doc's model.py, ``bands.npz`` and a ``bands.onnx`` for it."""
    from PIL import Image

    for name, text in tutorial.files.items():
        (shapes / name).write_text(text)
    assert len(tutorial.classes) == 4, tutorial.classes  # one per quadrant, as own_models draws them
    x, y = own_models.quadrant_images(IMAGES)
    for c, name in enumerate(tutorial.classes):
        (shapes / "images" / name).mkdir(parents=True)
        for i, img in enumerate(x[y == c]):
            Image.fromarray(img).save(shapes / "images" / name / f"{i:04d}.png")
    spec = importlib.util.spec_from_file_location("tutorial_model", shapes / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    inputs = Preprocessing(1 / 255, (0.5,), (0.25,)).apply(x.transpose(0, 3, 1, 2))  # the doc's --mean, --std
    model = own_models.fit(module.build(), inputs, y, epochs=10)
    torch.save(model.state_dict(), shapes / "weights.pt")
    torch.save(own_models.fit(model, inputs, y, epochs=1, seed=1).state_dict(), shapes / "weights_b.pt")
    bands_x, bands_y = own_models.band_images(600)
    own_models.write_npz(shapes / "bands.npz", n=600)
    bands_inputs = (bands_x.transpose(0, 3, 1, 2) / 255).astype(np.float32)
    mlp = own_models.fit(own_models.tiny_mlp(), bands_inputs, bands_y, epochs=5)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation: a user's file, as they make it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            mlp,
            (torch.zeros(1, 1, 20, 24),),
            str(shapes / "bands.onnx"),
            input_names=["pixels"],
            output_names=["scores"],
            dynamo=False,
        )


def _run(command: Command, cwd: Path, env: dict[str, str]) -> None:
    """Run one doc command as written; its exit status and the shape of every line the doc shows must match."""
    done = subprocess.run(
        ["bash", "-c", command.text], cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
    )
    printed = f"$ {command.text}\n--- stdout\n{done.stdout}--- stderr\n{done.stderr}"
    assert done.returncode == EXPECTED_ERRORS.get(command.text, 0), f"exit status {done.returncode}:\n{printed}"
    ours = {_shape(line) for line in re.split(r"[\r\n]", done.stdout + "\n" + done.stderr)}
    missing = [line for line in command.output if _shape(line) not in ours]
    assert not missing, "lines the doc shows that the command did not print:\n" + "\n".join(missing) + "\n" + printed


class _Background:
    """The bash block's ``&`` lines as process groups; stopped (SIGTERM, then SIGKILL) in reverse order."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, block: Services, cwd: Path, env: dict[str, str]) -> None:
        for line in block.lines:
            if cd := re.fullmatch(r"cd (\S+)", line.strip()):
                cwd = Path(re.sub(r"^~(?=/|$)", env["HOME"], cd[1]))
            elif line.rstrip().endswith("&"):
                log = open(self.logs / f"service{len(self.procs)}.out", "wb")  # what the terminal shows
                proc = subprocess.Popen(
                    ["bash", "-c", "exec " + line.rstrip()[:-1]],
                    cwd=cwd,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                self.procs.append((line, proc, log))
            else:
                raise AssertionError(f"a line of the bash block this test does not know how to run: {line!r}")

    def wait_serving(self, address: str) -> None:
        """Until the frontend's grpc.health.v1 says SERVING; fail when a service exits or the bound passes."""
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(SERVING_TIMEOUT_S // 5):
                self._check_alive()
                try:
                    for reply in stub.Watch(health_pb2.HealthCheckRequest(), timeout=5, wait_for_ready=True):
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                        raise
        raise AssertionError(f"the frontend at {address} did not say SERVING in {SERVING_TIMEOUT_S} s\n{self.tails()}")

    def _check_alive(self) -> None:
        for line, proc, _ in self.procs:
            assert proc.poll() is None, f"{line!r} exited with {proc.returncode}\n{self.tails()}"

    def tails(self) -> str:
        logs = sorted(self.logs.glob("*.out")) + sorted(self.logs.glob("services/*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)

    def stop(self) -> None:
        for _, proc, log in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def test_the_tutorial_parses_into_files_commands_and_services():
    tutorial = parse(DOC.read_text())
    _substitute(tutorial, SUBSTITUTIONS | {old: old for old in SERVICE_PORTS})  # the fallback's too
    commands = [s.text for s in tutorial.steps if isinstance(s, Command)]
    assert {"model.py", "client.py"} <= set(tutorial.files)
    assert sum(isinstance(s, Services) for s in tutorial.steps) == 1
    assert set(EXPECTED_ERRORS) <= set(commands), "an expected error the doc no longer shows"
    assert _shape("| x | AMD EPYC, 2 cores |") == _shape("| x | Intel Xeon, 16 cores |")


def test_the_tutorial_runs_as_written_at_a_tiny_setting(tmp_path):
    tutorial = parse(DOC.read_text())
    home, services = tmp_path / "home", tmp_path / "services"
    shapes = home / "shapes"  # the doc's ~/shapes
    shapes.mkdir(parents=True)
    services.mkdir()
    ports, moved = _ports()
    _substitute(tutorial, {k: v.format(services=services) for k, v in SUBSTITUTIONS.items()} | moved)
    _make_inputs(shapes, tutorial)
    venv = Path(sys.executable).parent.parent  # `source .venv/bin/activate`
    env = os.environ | {"HOME": str(home), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    background = _Background(tmp_path)
    try:
        for step in tutorial.steps:
            if isinstance(step, Command):
                _run(step, shapes, env)
            else:
                background.start(step, shapes, env)
                background.wait_serving(f"127.0.0.1:{ports['frontend']}")
    finally:
        background.stop()
