"""Worker hosts on one machine: each Triton worker in its own network namespace, behind a shaped link.

    root namespace (frontends, coding services, load)  10.213.N.1 on bridge csbrN
        |-- veth --[tbf]--> namespace csNw0 (10.213.N.2): tritonserver t0
        |-- veth --[tbf]--> namespace csNw1 (10.213.N.3): tritonserver t1
        ...

Each worker's inbound link (the host end of its veth: the switch port in front of a server) is shaped
by tbf (``LinkShape``: 1 Gbit/s, a 2 MB queue), its outbound side is not. Traffic converging on a worker
(``shuffles``, ParM's background load) is sent faster than that port drains, so it builds a real queue
that the worker's queries wait in, as behind a congested switch port. The kernel here has no
netem qdisc ("Specified qdisc kind is unknown"), so a network *delay* is made with tbf too:
``hold`` drops a link's rate to nothing, packets wait in its queue (not dropped), and
``release`` restores the rate and sends one datagram through, because tbf only re-checks its
queue on the next packet or on a timer set for the old, near-zero rate.

Needs root (CAP_NET_ADMIN) and iproute2; ``unavailable()`` says why not, for a test to skip on.
Everything created is named after this process id and deleted on ``close``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

_DISCARD_PORT = 9  # the kick datagram's target: nobody listens, the packet only has to cross the link


@dataclass(frozen=True)
class LinkShape:
    """One link's tbf: ``rate`` (tc units), bucket ``burst`` and queue ``limit`` in bytes."""

    rate: str = "1gbit"
    burst: str = "256kb"
    limit: str = "2mb"  # 16 ms at 1 Gbit/s; deep enough that a held link queues queries, not drops them


def unavailable() -> str | None:
    """None if namespaces can be made here, otherwise the reason (no iproute2, not root)."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"csprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")


class WorkerNetwork:
    """``count`` namespaces on one bridge; a context manager that tears everything down on exit."""

    def __init__(self, count: int, shape: LinkShape = LinkShape()) -> None:
        if not 1 <= count <= 200:
            raise ValueError(f"count must be 1..200, got {count}")
        self.count = count
        self.shape = shape
        tag = os.getpid() % 250  # two concurrent runs (a test and a benchmark) must not collide
        self._tag = f"cs{os.getpid()}"
        self._subnet = f"10.213.{tag}"
        self.bridge = f"{self._tag}br"
        self._made: list[tuple[str, str]] = []  # (kind, name) to delete, in creation order

    def namespace(self, i: int) -> str:
        return f"{self._tag}w{i}"

    def address(self, i: int) -> str:
        return f"{self._subnet}.{i + 2}"

    def exec_prefix(self, i: int) -> tuple[str, ...]:
        """Run a command inside worker ``i``'s namespace (same pid: ``ip netns exec`` execs in place)."""
        return ("ip", "netns", "exec", self.namespace(i))

    def _host_end(self, i: int) -> str:
        return f"{self._tag}h{i}"  # <= 15 characters, the kernel's limit on interface names

    def __enter__(self) -> WorkerNetwork:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", self.bridge))
        _run("ip", "addr", "add", f"{self._subnet}.1/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i in range(self.count):
            ns, host_end = self.namespace(i), self._host_end(i)
            _run("ip", "netns", "add", ns)
            self._made.append(("netns", ns))
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._made.append(("link", host_end))  # deleted explicitly: a namespace's teardown is asynchronous
            _run("ip", "link", "set", host_end, "master", self.bridge)
            _run("ip", "link", "set", host_end, "up")
            inside = self.exec_prefix(i)
            _run(*inside, "ip", "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            _run(*inside, "ip", "link", "set", "eth0", "up")
            _run(*inside, "ip", "link", "set", "lo", "up")
            self._shape("add", i)
        log.info("network %s: %d namespaces on %s.0/24, inbound %s", self.bridge, self.count, self._subnet, self.shape)

    def _shape(self, verb: str, i: int, rate: str | None = None, burst: str | None = None) -> None:
        _run(
            "tc", "qdisc", verb, "dev", self._host_end(i), "root", "tbf",
            "rate", rate or self.shape.rate, "burst", burst or self.shape.burst, "limit", self.shape.limit,
        )  # fmt: skip

    def hold(self, i: int) -> None:
        """Packets into worker ``i`` wait in its link's queue until ``release`` (a network stall)."""
        self._shape("change", i, rate="8bit", burst="1540")

    def release(self, i: int) -> None:
        self._shape("change", i)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as kick:
            kick.sendto(b"", (self.address(i), _DISCARD_PORT))

    def inbound_bytes(self, i: int) -> int:
        """Bytes that have crossed worker ``i``'s inbound link (tbf's own counter)."""
        shown = subprocess.run(["tc", "-s", "qdisc", "show", "dev", self._host_end(i)], capture_output=True, text=True)
        sent = re.search(r"Sent (\d+) bytes", shown.stdout)
        if sent is None:
            raise RuntimeError(f"no tbf counters on {self._host_end(i)}: {shown.stderr.strip() or shown.stdout}")
        return int(sent.group(1))

    def close(self) -> None:
        """Delete what was made, newest first; never raises."""
        for kind, name in reversed(self._made):
            argv = ["ip", "netns", "del", name] if kind == "netns" else ["ip", "link", "del", name]
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                log.warning("%s: %s", " ".join(argv), done.stderr.strip())
        self._made.clear()
