"""python -m decoder_service: rebuild a lost output from its coding group, as a stateless gRPC service."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from decoder_service.server import DECODER


def parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """Flags, each also a ``CODEDSERVE_DECODER_*`` variable (``--help`` names them)."""
    return DECODER.parser(__doc__, environ)


def main() -> None:
    DECODER.main(__doc__)


if __name__ == "__main__":
    main()
