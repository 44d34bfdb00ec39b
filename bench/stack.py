"""Start the whole coded-serving stack locally as real processes, and stop every one of them.

Triton (the real tritonserver on CPU via triton_local), the encoder, the decoder and one or more
frontends, each on a free 127.0.0.1 port, each waited on through its readiness check. Used by
``make demo``, the benchmarks and the integration tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.netns import WorkerNetwork
from triton_local.server import HOST, TritonConfig, TritonServer, free_ports

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServiceProcess:
    """One of our gRPC services as a child process, logging to a file."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)  # on top of this process's environment
    proc: subprocess.Popen[bytes] | None = None
    credentials: grpc.ChannelCredentials | None = None  # how its health is asked when it serves TLS

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        return self

    def wait_serving(self, timeout_s: float) -> None:
        """Poll grpc.health.v1 until SERVING; fail fast with the log tail if the process died."""
        deadline = time.monotonic() + timeout_s
        with _channel(self.address, self.credentials) as channel:
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


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    return grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)


@dataclass(frozen=True)
class FrontendSpec:
    """One frontend of a stack: its extra flags (routes, faults, timeouts), which Triton instances
    serve its deployed models and which its parity models (indices into the stack's Tritons), and
    whether it also serves the KServe v2 protocol on a port of its own."""

    flags: Sequence[str] = ()
    tritons: Sequence[int] = (0,)
    parity_tritons: Sequence[int] = ()
    kserve: bool = False


@dataclass
class Stack:
    """``triton_count`` tritonservers + encoder + decoder + frontends. A context manager; every
    process it started is stopped on exit. With a ``network``, Triton i runs in its namespace i and
    is reached over that namespace's shaped link; everything else stays on 127.0.0.1. Every Triton
    loads ``models``, unless ``triton_models`` names each one's own (then its length is the count)."""

    models: Sequence[str]
    frontends: Mapping[str, FrontendSpec | Sequence[str]]  # name -> spec (a plain list: just its flags)
    model_repository: Path = REPO_ROOT / "model_repository"
    log_dir: Path = REPO_ROOT / ".logs"
    triton_count: int = 1
    tritons: list[TritonServer] = field(default_factory=list)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    kserve_ports: dict[str, int] = field(default_factory=dict)
    network: WorkerNetwork | None = None
    service_env: Mapping[str, str] = field(default_factory=dict)  # for every service, e.g. CODEDSERVE_SCHEME_MODULES
    # Emulated accelerator time in every Triton (TritonConfig.service_time: "MODEL=LAW;..."; empty: off);
    # Triton i draws with seed service_time_seed + i, so the Tritons' draws differ.
    service_time: str = ""
    service_time_seed: int = 0
    triton_models: Sequence[Sequence[str]] | None = None

    def __post_init__(self) -> None:
        if self.triton_models is not None:
            self.triton_count = len(self.triton_models)

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def triton(self) -> TritonServer | None:
        """The first Triton (the only one in a default stack)."""
        return self.tritons[0] if self.tritons else None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start every process at once, then wait for each (frontends report SERVING only once Triton
        has every routed model ready, so this returns with the stack ready end to end)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        specs = {n: s if isinstance(s, FrontendSpec) else FrontendSpec(flags=s) for n, s in self.frontends.items()}
        # Every port of the stack picked at once, before any process starts: picked one process at a time,
        # a port handed to a Triton that had not bound it yet could be handed out again (seen in CI: a
        # Triton's metrics port taken, and that Triton exited).
        ports = iter(free_ports(3 * self.triton_count + 2 + 2 * len(specs)))
        for i in range(self.triton_count):
            config = TritonConfig(
                self.model_repository,
                models=tuple(self.models if self.triton_models is None else self.triton_models[i]),
                log_path=self.log_dir / f"tritonserver-{i}.log",
                host=self.network.address(i) if self.network else HOST,
                launcher=self.network.exec_prefix(i) if self.network else (),
                grpc_port=next(ports),
                http_port=next(ports),
                metrics_port=next(ports),
                service_time=self.service_time,
                service_time_seed=self.service_time_seed + i,
            )
            self.tritons.append(TritonServer(config).start())
        for name in ("encoder", "decoder"):
            self._spawn(name, [f"-m{name}_service"], next(ports))
        for name, spec in specs.items():
            self._spawn(name, self._frontend_argv(name, spec, ports), next(ports))
        for triton in self.tritons:
            triton.wait_ready(timeout_s)
        for service in self.services.values():
            service.wait_serving(timeout_s)
            log.info("%s serving on %s", service.name, service.address)

    def _frontend_argv(self, name: str, spec: FrontendSpec, ports: Iterator[int]) -> list[str]:
        argv = ["-mfrontend", "--encoder", self.address("encoder"), "--decoder", self.address("decoder")]
        argv += [a for i in spec.tritons for a in ("--triton-url", self.tritons[i].grpc_url)]
        argv += [a for i in spec.parity_tritons for a in ("--parity-triton-url", self.tritons[i].grpc_url)]
        if spec.kserve:
            self.kserve_ports[name] = next(ports)
            argv += ["--kserve-address", self.kserve_address(name)]
        return [*argv, *spec.flags]

    def _spawn(self, name: str, argv: list[str], port: int) -> None:
        argv = [sys.executable, *argv, "--address", f"127.0.0.1:{port}"]
        log_path = self.log_dir / f"{name}.log"
        self.services[name] = ServiceProcess(name, argv, port, log_path, self.service_env).start()

    def address(self, name: str) -> str:
        return self.services[name].address

    def kserve_address(self, name: str) -> str:
        return f"127.0.0.1:{self.kserve_ports[name]}"

    def stop(self) -> None:
        """Every process told to stop at once (a tritonserver takes seconds to unload its models: a testbed's
        dozens would take minutes one after another), then each waited for, and killed if it does not exit."""
        for service in self.services.values():
            if service.proc is not None and service.proc.poll() is None:
                service.proc.send_signal(signal.SIGTERM)
        for service in reversed(list(self.services.values())):
            service.stop()
        for triton in self.tritons:
            if triton.is_running() and triton.pid is not None:
                os.kill(triton.pid, signal.SIGTERM)
        for triton in self.tritons:
            triton.stop()


def triton_calls(stack: Stack) -> int:
    """Inferences (rows, however batched) over every model on every Triton (Triton's own count)."""
    return sum(t.successful_inferences() for t in stack.tritons)


def settled_triton_calls(stack: Stack, quiet_s: float = 0.3, limit_s: float = 10.0) -> int:
    """Triton's call count once it stops moving: losing copies and parities still in flight when the
    last answer arrived must land in the run that sent them, not in the next one."""
    deadline = time.monotonic() + limit_s
    count = triton_calls(stack)
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = triton_calls(stack)
        if now == count:
            break
        count = now
    return count


@contextlib.contextmanager
def floor_proxy(triton_url: str, log_path: Path, canned: bool = False) -> Iterator[tuple[str, int]]:
    """Run bench.floor_proxy in front of ``triton_url`` (``canned``: its --canned mode); yields its
    address and pid once it forwards."""
    address = f"127.0.0.1:{free_ports(1)[0]}"
    argv = [sys.executable, "-m", "bench.floor_proxy", "--address", address, "--triton-url", triton_url]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [*argv, *(["--canned"] if canned else [])], stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
    try:
        _wait_live(address, proc)
        yield address, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_live(address: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"bench.floor_proxy exited with {proc.returncode}")
            try:
                live(b"", timeout=1.0)
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise SystemExit(f"bench.floor_proxy on {address} did not answer within {timeout_s:.0f} s")
