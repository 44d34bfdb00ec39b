"""Garbage-collector setting for the latency-critical processes (services and the load generator).

CPython's full (generation-2) collection walks every tracked object, and in these processes most of them
are what start-up imported and built (grpc, protobuf, numpy, tritonclient). Measured under load, one such
pass stalled the frontend, the encoder, the decoder or the load generator for 13-25 ms every 15-25 s,
which is exactly where p99.9 lives. ``gc.freeze()`` after start-up moves everything alive into a permanent
generation that the collector skips; cycles created while serving are still collected, quickly.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect what start-up left behind, then exempt the survivors from every later collection."""
    gc.collect()
    gc.freeze()
