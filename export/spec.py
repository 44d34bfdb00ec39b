"""What export writes and the built-in models are: tensor names, dtypes, batch size, and the MNIST /
Fashion-MNIST facts (1 x 28 x 28 pixels, 10 classes, the data sets and model names; the parity models'
naming rule is :func:`coding.parm.parity_model_name`, named here too so callers need one import).

One place so the ONNX files, the config.pbtxt files, the bench and the tests agree. The coding library and
the services know none of it: a scheme takes whatever shape its method allows (``Scheme.rejects``), and the
frontend reads a model's shapes from Triton.
"""

from __future__ import annotations

from coding.parm import ENCODERS
from coding.parm import parity_model_name as parity_model_name

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
INPUT_DTYPE = "float32"  # pixels scaled to [0, 1]; the model normalizes inside
TRITON_INPUT_DTYPE = "FP32"
MAX_BATCH_SIZE = 64

# The built-in models
IMAGE_SHAPE = (1, 28, 28)  # C, H, W for MNIST and Fashion-MNIST
NUM_CLASSES = 10
DATASETS = ("mnist", "fashion")
PARM_ENCODERS = tuple(ENCODERS)
PARM_K = {"add": (2, 3, 4), "concat": (2, 4)}  # the parity models `make models` trains and serves


def deployed_model_name(dataset: str) -> str:
    """The model every query is sent to, e.g. ``mnist_cnn``."""
    return f"{dataset}_cnn"
