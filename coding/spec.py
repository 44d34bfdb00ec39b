"""Tensor names, shapes and model names shared by export/, the services, the bench and the tests.

One place so the ONNX files, the config.pbtxt files and every client agree.
"""

from __future__ import annotations

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_DTYPE = "float32"  # pixels scaled to [0, 1]; the model normalizes inside
TRITON_INPUT_DTYPE = "FP32"
IMAGE_SHAPE = (1, 28, 28)  # C, H, W for MNIST and Fashion-MNIST
NUM_CLASSES = 10
MAX_BATCH_SIZE = 64

DATASETS = ("mnist", "fashion")
PARM_ENCODERS = ("add", "concat")
PARM_K = {"add": (2, 3, 4), "concat": (2, 4)}


def deployed_model_name(dataset: str) -> str:
    """The model every query is sent to, e.g. ``mnist_cnn``."""
    return f"{dataset}_cnn"


def parity_model_name(dataset: str, encoder: str, k: int) -> str:
    """The ParM parity model for one (dataset, encoder, k), e.g. ``mnist_parm_add_k2``."""
    return f"{dataset}_parm_{encoder}_k{k}"
