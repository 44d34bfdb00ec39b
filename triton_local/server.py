"""Start, health-check and stop the real tritonserver (from the nvidia-pytriton wheel) on CPU.

Why a helper: the binary needs a backend directory assembled from the wheel plus our Python-based onnxruntime
backend, a PATH/LD_LIBRARY_PATH only its stub understands, loopback-only addresses, and a stop that never
leaves a process behind. Tests, benchmarks and ``python -m triton_local`` all start it the same way here.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import filecmp
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from service_common.tls import ServerTLS
from triton_local import service_time, shm

LOG = logging.getLogger(__name__)

HOST = "127.0.0.1"  # tritonserver binds 0.0.0.0 unless told otherwise; local runs never should
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUILD_DIR = REPO_ROOT / ".triton"
OUR_BACKEND = Path(__file__).resolve().parent / "backend" / "onnxruntime" / "model.py"
OUR_LAWS = Path(service_time.__file__).resolve()  # imported by the backend, so copied beside it
_PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
_STUB = "triton_python_backend_stub"
PORT_FLAGS = ("--grpc-port", "--http-port", "--metrics-port")  # tritonserver's flags, and python -m triton_local's
_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp
_BIND_FAILURE = re.compile(r"Socket '[^']*:(\d+)' already in use")  # how tritonserver 2.51 logs one


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the installed nvidia-pytriton wheel."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


@dataclass(frozen=True)
class TritonConfig:
    """How to run one tritonserver. Ports 0 pick free ones; ``models=None`` loads the whole repository,
    a tuple loads just those (explicit model control, much faster for tests)."""

    model_repository: Path
    grpc_port: int = 0
    http_port: int = 0
    metrics_port: int = 0
    models: tuple[str, ...] | None = None
    model_config_name: str | None = None
    build_dir: Path = DEFAULT_BUILD_DIR
    log_path: Path | None = None
    ready_timeout_s: float = 60.0
    stop_grace_s: float = 15.0
    extra_args: tuple[str, ...] = ()
    # Where it listens, and a command prefix it runs under: the benchmarks put each worker in its own
    # network namespace (host = that namespace's address, launcher = ``ip netns exec <ns>``).
    host: str = HOST
    launcher: tuple[str, ...] = ()
    # TLS on the gRPC port (mTLS with a client CA); HTTP and metrics stay plaintext (tritonserver has no TLS there).
    grpc_tls: ServerTLS | None = None
    # Emulated accelerator time per model (triton_local.service_time: "MODEL=LAW;..."; empty: off), and the
    # seed of its draws (with model and instance name: two servers of the same models and seed draw the same
    # times, so give each its own). Kept as text, made canonical here (samples paths absolute) for the stubs.
    service_time: str = ""
    service_time_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_repository", Path(self.model_repository).resolve())
        object.__setattr__(self, "build_dir", Path(self.build_dir).resolve())
        if not self.model_repository.is_dir():
            raise ValueError(f"model_repository: no such directory {self.model_repository}")
        for name in ("grpc_port", "http_port", "metrics_port"):
            if not 0 <= (getattr(self, name) or 0) <= 65535:
                raise ValueError(f"{name}: must be 0..65535, got {getattr(self, name)}")
        if self.models is not None:
            object.__setattr__(self, "models", tuple(self.models))
            if any(not m or "," in m for m in self.models):
                raise ValueError(f"models: names must be non-empty and comma-free, got {self.models}")
        try:
            object.__setattr__(self, "service_time", service_time.render(service_time.parse(self.service_time)))
        except service_time.ServiceTimeError as exc:
            raise ValueError(f"service_time: {exc}") from None


def find_install() -> TritonInstall:
    """Locate the wheel by import spec (without importing pytriton, whose client needs gevent)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonStartError("nvidia-pytriton is not installed (pip install --no-deps nvidia-pytriton==0.7.0)")
    package = Path(next(iter(spec.submodule_search_locations)))
    server = package / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=server / "bin" / "tritonserver",
        libs=package.parent / "nvidia_pytriton.libs",
        python_backend=server / "backends" / "python",
        stub=server / "python_backend_stubs" / version / _STUB,
    )
    missing = [str(p) for p in (install.binary, install.libs, install.python_backend, install.stub) if not p.exists()]
    if missing:
        raise TritonStartError(f"nvidia-pytriton install is incomplete, missing: {', '.join(missing)}")
    return install


def build_backend_dir(install: TritonInstall, build_dir: Path = DEFAULT_BUILD_DIR) -> Path:
    """Assemble ``<build_dir>/backends/{python,onnxruntime}``; idempotent and safe to run concurrently."""
    backends = Path(build_dir) / "backends"
    copies = [(install.python_backend / name, backends / "python" / name) for name in _PYTHON_BACKEND_FILES]
    copies.append((install.stub, backends / "python" / _STUB))
    copies.append((OUR_BACKEND, backends / "onnxruntime" / "model.py"))
    copies.append((OUR_LAWS, backends / "onnxruntime" / OUR_LAWS.name))
    for source, dest in copies:
        _copy_if_changed(source, dest)
    return backends


def _copy_if_changed(source: Path, dest: Path) -> None:
    """Copy via a temp file + rename, so a server reading ``dest`` never sees half a file."""
    if dest.exists() and filecmp.cmp(source, dest, shallow=False):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    shutil.copy2(source, tmp)  # keeps the stub's executable bit
    os.replace(tmp, dest)


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held open together so the kernel cannot hand one out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _port_in_use(port: int, flag: str, host: str) -> str:
    """The message for a port some other process holds."""
    return f"port {port} ({flag}) on {host} is in use by another process"


def _check_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raise :class:`TritonStartError` naming the first of ``ports`` (flag -> port; 0 skipped) that ``host``
    cannot bind. Bound with SO_REUSEADDR, as tritonserver binds each of its ports: a port with connections
    left in TIME_WAIT is free to it, one that another process listens on is not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for flag, port in ports.items():
        if port == 0:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise TritonStartError(_port_in_use(port, flag, host)) from None
                raise TritonStartError(f"port {port} ({flag}) on {host} cannot be bound: {exc.strerror}") from None


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports that process group ``pid`` listens on, from the kernel: the socket inodes its members
    hold, looked up in /proc/<pid>/net/tcp{,6} (the tables of its own network namespace)."""
    inodes = set()
    for member in shm.group(pid):
        with contextlib.suppress(OSError):
            for fd in (Path("/proc") / str(member) / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if (target := os.readlink(fd)).startswith("socket:["):
                        inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = (Path("/proc") / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for fields in (row.split() for row in rows):
            if fields[3] == _TCP_LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def server_env(
    install: TritonInstall, config: TritonConfig | None = None, accelerator: Path | None = None
) -> dict[str, str]:
    """The venv's bin first on PATH (the stub's isolated interpreter finds the venv through ``python3`` on
    PATH and ignores PYTHONPATH) and the wheel's bundled libraries on LD_LIBRARY_PATH; the config's emulated
    service times for the backend stubs, which inherit this environment (none unless the config names some,
    whatever this process's environment holds), and the lock file their executions take turns on."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), env.get("PATH", "")])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(install.libs), env.get("LD_LIBRARY_PATH")]))
    env.pop(service_time.ENV_LAWS, None)
    env.pop(service_time.ENV_SEED, None)
    env.pop(service_time.ENV_ACCELERATOR, None)
    if config is not None and config.service_time:
        env[service_time.ENV_LAWS] = config.service_time
        env[service_time.ENV_SEED] = str(config.service_time_seed)
        if accelerator is not None:
            env[service_time.ENV_ACCELERATOR] = str(accelerator)
    return env


def _tls_args(tls: ServerTLS | None) -> list[str]:
    """tritonserver's gRPC TLS flags; with a client CA, ``--grpc-use-ssl-mutual`` (which requires client certs)."""
    if tls is None:
        return []
    args = ["--grpc-use-ssl=true", f"--grpc-server-cert={tls.cert.resolve()}", f"--grpc-server-key={tls.key.resolve()}"]
    if tls.client_ca is not None:
        args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={tls.client_ca.resolve()}"]
    return args


def _die_with_parent() -> list[str]:
    """A ``setpriv --pdeathsig TERM`` prefix: tritonserver gets SIGTERM when its parent dies, so a killed test
    run cannot leave a server behind. setpriv sets it and execs in place (same pid), so Popen can spawn with
    vfork: a ``preexec_fn`` would force fork(), and forking a process whose gRPC threads are busy let gRPC's
    fork handlers abort the child (seen: "epoll_wait error: Bad file descriptor", exit -6).
    Only from the main thread: the kernel sends PDEATHSIG when the parent *thread* exits, and a worker thread
    (``asyncio.to_thread``, an executor shut down with its loop) would take the server down with it."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or threading.current_thread() is not threading.main_thread():
        return []
    return [setpriv, "--pdeathsig", "TERM", "--"]


class TritonServer:
    """One tritonserver subprocess: ``start()``, ``wait_ready()``, ``stop()``, or ``with TritonServer(cfg) as s``.

    ``grpc_url`` and ``http_url`` are ``HOST:PORT`` (what tritonclient takes; 127.0.0.1 unless the config
    names another host); ``metrics_url`` is the full ``http://HOST:PORT/metrics`` to scrape.
    """

    def __init__(self, config: TritonConfig) -> None:
        self.config = config
        self._proc: subprocess.Popen[bytes] | None = None
        self._ports: tuple[int, int, int] = (config.grpc_port, config.http_port, config.metrics_port)
        self.log_path: Path | None = config.log_path
        self._started_at = 0.0
        self._start_time: int | None = None  # the process's start time, naming it in its /dev/shm record
        # With an emulated service time: the lock file of its one emulated accelerator (service_time.Accelerator)
        self.accelerator: Path | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self._ports[0]}"

    @property
    def http_url(self) -> str:
        return f"{self.config.host}:{self._ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self._ports[2]}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def accelerator_busy(self) -> bool:
        """True while one of its executions holds its emulated accelerator (False without emulation)."""
        return self.accelerator is not None and service_time.accelerator_busy(self.accelerator)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, install: TritonInstall, backends: Path) -> list[str]:
        """The tritonserver argv (after the config's launcher); binds only the config's host, verbose logging off."""
        grpc, http, metrics = self._ports
        cfg = self.config
        host = cfg.host
        args = [
            *cfg.launcher,
            str(install.binary),
            f"--model-repository={cfg.model_repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={host}", f"--grpc-port={grpc}",
            f"--http-address={host}", f"--http-port={http}",
            f"--metrics-address={host}", f"--metrics-port={metrics}",
            "--log-verbose=0",
        ]  # fmt: skip
        args += _tls_args(cfg.grpc_tls)
        if cfg.model_config_name:
            args.append(f"--model-config-name={cfg.model_config_name}")
        if cfg.models is not None:
            args.append("--model-control-mode=explicit")
            args.extend(f"--load-model={name}" for name in cfg.models)
        return args + list(cfg.extra_args)

    def start(self) -> TritonServer:
        """Launch tritonserver in its own process group (so ``stop`` can reap its stubs too); returns self.

        A port named in the config that another process holds fails here, before anything is launched
        (tritonserver itself would load every model, then exit on the bind, with the readiness probe
        meanwhile answered by whoever holds the port). Under a launcher the ports are in the launcher's
        network namespace, so they are not checked here; :meth:`wait_ready` still catches a clash."""
        if self._proc is not None:
            raise RuntimeError("TritonServer.start() called twice")
        if not self.config.launcher:
            _check_ports_free(self.config.host, dict(zip(PORT_FLAGS, self._ports, strict=True)))
        install = find_install()
        backends = build_backend_dir(install, self.config.build_dir)
        shm.remove_stale()  # regions of servers killed along with whoever started them
        picked = iter(free_ports(3))
        grpc, http, metrics = (port or next(picked) for port in self._ports)
        self._ports = (grpc, http, metrics)
        if self.log_path is None:
            self.log_path = self.config.build_dir / "logs" / f"tritonserver-{self._ports[0]}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.config.service_time and self.accelerator is None:
            folder = self.config.build_dir / "accelerators"
            folder.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"grpc-{grpc}-", suffix=".lock", dir=folder)
            os.close(fd)
            self.accelerator = Path(name)
        with open(self.log_path, "ab") as log:  # append: a restarted server keeps its history
            self._proc = subprocess.Popen(
                [*_die_with_parent(), *self.command(install, backends)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                env=server_env(install, self.config, self.accelerator), start_new_session=True,
                cwd=self.config.build_dir,  # not the caller's: Triton's Python stub would import a model.py there
            )  # fmt: skip
        self._started_at = time.monotonic()
        self._start_time = shm.start_time(self._proc.pid)
        atexit.register(self.stop)  # an interpreter that exits without stop() still takes the server down
        LOG.info("tritonserver pid %d starting (grpc %s, log %s)", self._proc.pid, self.grpc_url, self.log_path)
        return self

    def wait_ready(self, timeout: float | None = None) -> float:
        """Wait until this process listens on all three of its ports and ``/v2/health/ready`` answers 200;
        returns seconds since ``start``. Fails fast if the process dies.

        Only a port this process listens on proves the answer is its own: a port taken by another server
        between :meth:`start`'s check and tritonserver's bind would answer for it, while this one exits.
        Its /dev/shm regions are recorded on every poll, from the first (they exist before its models
        finish loading), so that a server that fails to start leaves none behind either."""
        timeout = self.config.ready_timeout_s if timeout is None else timeout
        if self._proc is None:
            raise RuntimeError("TritonServer.wait_ready() before start()")
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            shm.record(self._proc.pid, self._start_time)
            if self._proc.poll() is not None:
                raise TritonStartError(self._exit_message(self._proc.returncode))
            if set(self._ports) <= _listening_ports(self._proc.pid) and _http_ok(url):
                shm.record(self._proc.pid, self._start_time)  # its models are loaded: all their regions exist
                elapsed = time.monotonic() - self._started_at
                LOG.info("tritonserver ready %.2f s after start", elapsed)
                return elapsed
            time.sleep(0.1)
        raise TritonStartError(f"tritonserver not ready after {timeout:.1f} s\n{self.log_tail()}")

    def _exit_message(self, code: int) -> str:
        """Why tritonserver exited during start, naming the port when it could not bind one."""
        tail = self.log_tail()
        found = _BIND_FAILURE.search(tail)
        flags = dict(zip(self._ports, PORT_FLAGS, strict=True))
        port = int(found.group(1)) if found else None
        cause = f"{_port_in_use(port, flags[port], self.config.host)}; " if port in flags else ""
        return f"{cause}tritonserver exited with {code}\n{tail}"

    def wait(self) -> int:
        """Block until tritonserver exits on its own; returns its exit code."""
        if self._proc is None:
            raise RuntimeError("TritonServer.wait() before start()")
        return self._proc.wait()

    def stop(self) -> int | None:
        """SIGTERM (tritonserver unloads its models, ~2-5 s), then SIGKILL its whole process group, which
        also takes any stub left by a crash; runs even if interrupted. Then removes the /dev/shm regions
        the server left (a SIGKILLed one leaves them: :mod:`triton_local.shm`). Returns the exit code."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        atexit.unregister(self.stop)
        grace = self.config.stop_grace_s
        try:
            shm.record(proc.pid, self._start_time)  # its stubs may outlive it: what they map is its too
            if proc.poll() is None:
                proc.terminate()
                proc.wait(grace)
        except subprocess.TimeoutExpired:
            LOG.warning("tritonserver pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, grace)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            if self._start_time is not None:
                shm.release(proc.pid, self._start_time)
            if self.accelerator is not None:
                self.accelerator.unlink(missing_ok=True)
                self.accelerator = None
        LOG.info("tritonserver pid %d stopped with %s", proc.pid, proc.returncode)
        return proc.returncode

    def successful_inferences(self) -> int:
        """Inferences (batch rows) Triton has performed since it started (``nv_inference_count`` summed over
        models): the load, however the rows were batched into requests; 0 while it does not answer (a
        killed server that is restarting)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            text = opener.open(self.metrics_url, timeout=5).read().decode()
        except OSError:
            return 0
        counts = re.findall(r"^nv_inference_count\{[^}]*\} (\S+)$", text, re.M)
        return sum(int(float(v)) for v in counts)

    def inference_counts(self) -> dict[str, int]:
        """Rows each loaded model has inferred, from Triton's statistics (``/v2/models/stats``): current as
        soon as a call's answer is sent, where the metrics behind :meth:`successful_inferences` lag by
        their interval."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://{self.http_url}/v2/models/stats", timeout=5) as reply:
            return {m["name"]: int(m["inference_count"]) for m in json.load(reply)["model_stats"]}

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log, for error messages."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _http_ok(url: str) -> bool:
    """True on HTTP 200; any refusal or error means not ready yet. Bypasses proxies set in the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False
