"""Moved: tensor names, the built-in models' shapes, classes and data sets live in :mod:`export.spec`, and
the parity models' naming rule in :func:`coding.parm.parity_model_name`.

Nothing in the coding library uses them (a scheme takes any shape its method allows: ``Scheme.rejects``).
This module only forwards the old names, imported on first use, for callers not yet moved to export.spec.
"""

from __future__ import annotations

import importlib
from typing import Any

_MOVED = {
    "INPUT_NAME": "export.spec",
    "OUTPUT_NAME": "export.spec",
    "INPUT_DTYPE": "export.spec",
    "TRITON_INPUT_DTYPE": "export.spec",
    "MAX_BATCH_SIZE": "export.spec",
    "IMAGE_SHAPE": "export.spec",
    "NUM_CLASSES": "export.spec",
    "DATASETS": "export.spec",
    "PARM_ENCODERS": "export.spec",
    "PARM_K": "export.spec",
    "deployed_model_name": "export.spec",
    "parity_model_name": "coding.parm",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
