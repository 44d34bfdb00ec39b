"""python -m encoder_service: k queries -> r parity queries, as a stateless gRPC service."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from encoder_service.server import ENCODER


def parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Flags, each also a ``CODEDSERVE_ENCODER_*`` variable (``--help`` names them)."""
    return ENCODER.parser(__doc__, environ)


def main() -> None:
    ENCODER.main(__doc__)


if __name__ == "__main__":
    main()
