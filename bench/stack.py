"""Start the whole coded-serving stack locally as real processes, and stop every one of them.

Triton (the real tritonserver on CPU via triton_local), the encoder, the decoder and one or more
frontends, each on a free 127.0.0.1 port, each waited on through its readiness check. Used by
``make demo``, the benchmarks and the integration tests.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from triton_local.server import TritonConfig, TritonServer, free_ports

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServiceProcess:
    """One of our gRPC services as a child process, logging to a file."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def wait_serving(self, timeout_s: float) -> None:
        """Poll grpc.health.v1 until SERVING; fail fast with the log tail if the process died."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} not SERVING after {timeout_s:.0f} s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Stack:
    """Triton + encoder + decoder + frontends. Use as a context manager; everything stops on exit."""

    models: Sequence[str]
    frontend_flags: dict[str, Sequence[str]]  # frontend name -> extra flags (routes, faults, timeouts)
    model_repository: Path = REPO_ROOT / "model_repository"
    log_dir: Path = REPO_ROOT / ".logs"
    triton: TritonServer | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 120.0) -> None:
        """Start every process at once, then wait for each (frontends report SERVING only once Triton
        has every routed model ready, so this returns with the stack ready end to end)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.triton = TritonServer(TritonConfig(self.model_repository, models=tuple(self.models),
                                                log_path=self.log_dir / "tritonserver.log"))
        self.triton.start()
        ports = iter(free_ports(2 + len(self.frontend_flags)))
        for name in ("encoder", "decoder"):
            self._spawn(name, [f"-m{name}_service"], next(ports))
        for name, flags in self.frontend_flags.items():
            self._spawn(name, ["-mfrontend", "--triton-url", self.triton.grpc_url,
                               "--encoder", self.address("encoder"), "--decoder", self.address("decoder"), *flags],
                        next(ports))
        self.triton.wait_ready(timeout_s)
        for service in self.services.values():
            service.wait_serving(timeout_s)
            log.info("%s serving on %s", service.name, service.address)

    def _spawn(self, name: str, argv: list[str], port: int) -> None:
        argv = [sys.executable, *argv, "--address", f"127.0.0.1:{port}"]
        self.services[name] = ServiceProcess(name, argv, port, self.log_dir / f"{name}.log").start()

    def address(self, name: str) -> str:
        return self.services[name].address

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        if self.triton is not None:
            self.triton.stop()
