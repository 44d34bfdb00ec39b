"""python -m bench.shuffle: the two ends of ParM's background "shuffle" traffic between worker hosts.

  sink --port P            accept connections and discard what arrives (one per worker namespace)
  send --to HOST:PORT --bytes N
                           push N bytes to a sink as fast as the link allows, then exit

Both stop by themselves after --max-s seconds, so a crashed harness cannot leave traffic running.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

_CHUNK = 1 << 20


def sink(port: int, max_s: float) -> None:
    stop_at = time.monotonic() + max_s
    with socket.create_server(("0.0.0.0", port), reuse_port=True) as server:
        server.settimeout(1.0)
        while time.monotonic() < stop_at:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_drain, args=(conn, stop_at), daemon=True).start()


def _drain(conn: socket.socket, stop_at: float) -> None:
    with conn:
        conn.settimeout(5.0)
        while time.monotonic() < stop_at:
            try:
                if not conn.recv(_CHUNK):
                    return
            except OSError:
                return


def send(to: str, nbytes: int, max_s: float) -> int:
    host, _, port = to.rpartition(":")
    stop_at = time.monotonic() + max_s
    payload = memoryview(bytes(_CHUNK))
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10.0) as conn:
        while sent < nbytes and time.monotonic() < stop_at:
            conn.sendall(payload[: min(_CHUNK, nbytes - sent)])
            sent += min(_CHUNK, nbytes - sent)
    return sent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.shuffle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="role", required=True)
    s = sub.add_parser("sink", help="discard whatever arrives on --port")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--max-s", type=float, default=900.0)
    t = sub.add_parser("send", help="push --bytes to a sink")
    t.add_argument("--to", required=True, help="HOST:PORT of a sink")
    t.add_argument("--bytes", type=int, required=True)
    t.add_argument("--max-s", type=float, default=120.0)
    args = p.parse_args(argv)
    if args.role == "sink":
        sink(args.port, args.max_s)
    elif send(args.to, args.bytes, args.max_s) < args.bytes:
        raise SystemExit(f"sent less than {args.bytes} bytes to {args.to} within {args.max_s:.0f} s")


if __name__ == "__main__":
    main()
