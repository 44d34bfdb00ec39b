"""The IDX reader, the sha256 check of the loader, and (when `make data` has run) the real MNIST/Fashion counts."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from export import datasets

DATA_ROOT = Path(__file__).resolve().parents[2] / "data"


def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_read_idx_parses_a_synthetic_buffer() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(datasets.read_idx(_idx_bytes(images)), images)
    labels = np.array([7, 1, 0], dtype=np.uint8)
    np.testing.assert_array_equal(datasets.read_idx(_idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    "buf", [b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00", _idx_bytes(np.zeros((2, 2), np.uint8))[:-1]]
)
def test_read_idx_rejects_a_wrong_dtype_or_a_truncated_body(buf: bytes) -> None:
    with pytest.raises(datasets.DatasetError):
        datasets.read_idx(buf)


@pytest.fixture
def tiny_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root with a 3-image "mnist" train split whose sha256 values are pinned in place of the real ones."""
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    files = {
        "train-images-idx3-ubyte": _idx_bytes(images),
        "train-labels-idx1-ubyte": _idx_bytes(np.array([3, 1, 4], np.uint8)),
    }
    (tmp_path / "mnist").mkdir()
    for name, data in files.items():
        (tmp_path / "mnist" / name).write_bytes(data)
    monkeypatch.setitem(datasets.SHA256, "mnist", {n: datasets.sha256_bytes(d) for n, d in files.items()})
    return tmp_path


def test_load_returns_uint8_images_and_int64_labels(tiny_root: Path) -> None:
    images, labels = datasets.load("mnist", "train", tiny_root)
    assert images.shape == (3, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [3, 1, 4] and labels.dtype == np.int64


def test_load_rejects_a_tampered_file_naming_it(tiny_root: Path) -> None:
    path = tiny_root / "mnist" / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(datasets.DatasetError, match="train-images-idx3-ubyte has sha256 .*make data"):
        datasets.load("mnist", "train", tiny_root)


def test_load_of_a_missing_file_says_to_run_make_data(tmp_path: Path) -> None:
    with pytest.raises(datasets.DatasetError, match="t10k-images-idx3-ubyte is missing; run `make data`"):
        datasets.load("fashion", "test", tmp_path)


EXPECTED_COUNTS = {
    ("mnist", "train"): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ("mnist", "test"): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ("fashion", "train"): [6000] * 10,
    ("fashion", "test"): [1000] * 10,
}


@pytest.mark.parametrize(("dataset", "split"), sorted(EXPECTED_COUNTS))
def test_real_data_has_the_published_counts(dataset: str, split: str) -> None:
    if not (DATA_ROOT / dataset).is_dir():
        pytest.skip(f"{DATA_ROOT / dataset} absent; run `make data`")
    images, labels = datasets.load(dataset, split, DATA_ROOT)
    assert images.shape == (sum(EXPECTED_COUNTS[dataset, split]), 28, 28)
    assert np.bincount(labels, minlength=10).tolist() == EXPECTED_COUNTS[dataset, split]
