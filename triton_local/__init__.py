"""Run the real tritonserver on CPU over our model repository (with a Python-based onnxruntime backend)."""

from triton_local.server import (
    DEFAULT_BUILD_DIR,
    TritonConfig,
    TritonInstall,
    TritonServer,
    TritonStartError,
    build_backend_dir,
    find_install,
    free_ports,
)

__all__ = [
    "DEFAULT_BUILD_DIR",
    "TritonConfig",
    "TritonInstall",
    "TritonServer",
    "TritonStartError",
    "build_backend_dir",
    "find_install",
    "free_ports",
]
