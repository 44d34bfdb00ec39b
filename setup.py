"""Generates the gRPC stubs when the project is built, so ``pip install .`` on a fresh clone (or in an image)
ships ``codedserve.v1``; everything else is declared in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO = Path("codedserve/v1/codedserve.proto")  # relative to protos/, which mirrors the import path
STUBS = ("codedserve_pb2.py", "codedserve_pb2.pyi", "codedserve_pb2_grpc.py")


def generate_stubs() -> None:
    """The Makefile's protoc command (one source of stubs), run when a stub is missing or older than the proto."""
    source = ROOT / "protos" / PROTO
    outputs = [source.with_name(name) for name in STUBS]
    if all(o.exists() and o.stat().st_mtime >= source.stat().st_mtime for o in outputs):
        return
    from grpc_tools import protoc  # a build requirement (pyproject [build-system])

    args = ["protoc", "-I", str(ROOT / "protos"), *(f"--{k}_out={ROOT / 'protos'}" for k in ("python", "pyi"))]
    if protoc.main([*args, f"--grpc_python_out={ROOT / 'protos'}", str(source)]) != 0:
        raise SystemExit(f"protoc failed on {source}")


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
