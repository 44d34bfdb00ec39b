"""A user's data set: an image folder (one subfolder per class, PNG/JPEG) or an ``.npz`` (``x``, ``y``).

What the served model takes is the *preprocessed* image: ``(pixels · scale − mean[c]) / std[c]`` per channel c,
float32 ``(C, H, W)``. The preprocessing is recorded with the deployed model in the manifest
(:class:`Preprocessing`), and every command that runs the model — training the coded models, evaluating them,
a client of the frontend — applies it the same way, with :meth:`Preprocessing.apply`.

Splits are given or drawn. Given: an image folder with ``train/`` and ``test/`` (and optionally ``val/``)
subfolders, each holding one subfolder per class; an ``.npz`` with ``x_train``/``y_train``, ``x_test``/``y_test``
(and optionally ``x_val``/``y_val``). Otherwise the rows are shuffled with ``seed`` and cut into test, val and
train shares. Layout of ``.npz`` images: ``N x C x H x W``, ``N x H x W x C`` or ``N x H x W`` (one channel);
``layout="auto"`` tells the first two apart by which axis is the channel axis (1, 3 or 4 long).

The built-in data sets are data sets like any other: ``mnist`` or ``fashion`` names the IDX files ``make data``
fetched into ``data/<name>/`` (or give that folder), read by export.datasets (every file's sha256 checked), with
their given train and test splits; the validation split is drawn from train as for any given splits
(:data:`BUILTIN_VAL_FRACTION`: the 5,000 images export.train held out with the same seed and draw).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from export import datasets

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUTS = ("auto", "nchw", "nhwc")
_CHANNELS = (1, 3, 4)
BUILTIN_VAL_FRACTION = 5000 / 60000  # export.train.VAL_SIZE of the built-in data sets' 60,000 training images


class DataError(ValueError):
    """A data set that cannot be read as images with labels; the message names the file and the problem."""


@dataclass(frozen=True)
class Preprocessing:
    """``(x · scale − mean[c]) / std[c]``; one mean/std for every channel, or one per channel."""

    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.mean or not self.std or min(abs(s) for s in self.std) == 0:
            raise DataError(f"preprocessing needs a mean and a non-zero std, got mean={self.mean} std={self.std}")

    def check(self, channels: int) -> None:
        for what, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, channels):
                raise DataError(f"--{what} has {len(values)} values; images have {channels} channels (give 1 or that)")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(N, C, H, W)`` (or one ``(C, H, W)``) pixels -> float32 model inputs."""
        self.check(x.shape[-3])
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return ((x.astype(np.float32) * np.float32(self.scale) - mean) / std).astype(np.float32)

    def as_dict(self) -> dict:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(float(d["scale"]), tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # float32 (N, C, H, W), preprocessed
    y: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DataSpec:
    """Where the data is and how it is split: recorded with the deployed model so later commands reuse it."""

    path: str
    layout: str = "auto"
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    limit: int | None = None  # only the first `limit` images of each split (smoke tests)

    def as_dict(self) -> dict:
        return asdict(self)

    def at(self, path: str) -> DataSpec:
        """The same split rules for the data at ``path``."""
        return DataSpec(path, self.layout, self.seed, self.val_fraction, self.test_fraction, self.limit)


@dataclass(frozen=True)
class UserData:
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    given_splits: bool = False
    spec: DataSpec = field(default_factory=lambda: DataSpec(""))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.test.x.shape[1:])


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image  # Pillow: only needed for image folders

    with Image.open(path) as image:
        if image.mode in ("L", "I;16", "I", "F", "1"):
            return np.asarray(image.convert("L"))[None]
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def _class_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if len(folders) < 2:
        raise DataError(f"{root}: an image folder needs one subfolder per class, at least 2; found {len(folders)}")
    return folders


def read_folder(root: Path, classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Pixels ``(N, C, H, W)``, labels and class names (the subfolders' names, sorted) of an image folder."""
    names = tuple(classes) if classes is not None else tuple(p.name for p in _class_folders(root))
    images, labels = [], []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in files:
            images.append((path, _read_image(path)))
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no {'/'.join(IMAGE_SUFFIXES)} files in the class subfolders {list(names)}")
    channels = max(img.shape[0] for _, img in images)
    first_path, first = images[0]
    x = []
    for path, img in images:
        img = np.repeat(img, channels, 0) if img.shape[0] != channels else img  # a grey image among colour ones
        if img.shape[1:] != first.shape[1:]:
            raise DataError(
                f"{path}: {img.shape[2]}x{img.shape[1]} px, but {first_path} is {first.shape[2]}x{first.shape[1]}:"
                " every image must have the same size (resize them first)"
            )
        x.append(img)
    return np.stack(x), np.asarray(labels, np.int64), names


def to_nchw(x: np.ndarray, layout: str = "auto", source: str = "x") -> np.ndarray:
    """``N x C x H x W`` from ``N x C x H x W``, ``N x H x W x C`` or ``N x H x W``."""
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim != 4:
        raise DataError(f"{source}: images must be N x C x H x W, N x H x W x C or N x H x W; got {list(x.shape)}")
    if layout == "auto":
        first, last = x.shape[1] in _CHANNELS, x.shape[3] in _CHANNELS
        if first == last:
            raise DataError(
                f"{source}: cannot tell the channel axis of shape {list(x.shape)}: pass --layout nchw or nhwc"
            )
        layout = "nchw" if first else "nhwc"
    return x if layout == "nchw" else x.transpose(0, 3, 1, 2)


def _labels(y: np.ndarray, source: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels must be a 1-D integer array, got {y.dtype} {list(y.shape)}")
    return y.astype(np.int64)


def read_npz(path: Path, layout: str = "auto") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The npz's parts: ``{"all": (x, y)}`` or ``{"train": ..., "test": ..., ["val": ...]}``, x in N x C x H x W."""
    with np.load(path) as npz:
        keys = set(npz.files)
        parts = [p for p in ("train", "val", "test") if f"x_{p}" in keys]
        if {"x", "y"} <= keys:
            names = {"all": ("x", "y")}
        elif {"train", "test"} <= set(parts):
            names = {p: (f"x_{p}", f"y_{p}") for p in parts}
        else:
            raise DataError(f"{path}: expected arrays x and y, or x_train, y_train, x_test, y_test; has {sorted(keys)}")
        out = {}
        for part, (xk, yk) in names.items():
            if yk not in keys:
                raise DataError(f"{path}: has {xk} but no {yk}")
            x, y = to_nchw(npz[xk], layout, f"{path}:{xk}"), _labels(npz[yk], f"{path}:{yk}")
            if len(x) != len(y):
                raise DataError(f"{path}: {xk} has {len(x)} images but {yk} {len(y)} labels")
            out[part] = (x, y)
    return out


def draw_splits(n: int, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Row indices of test, val and train, drawn with ``seed`` (the same seed gives the same splits)."""
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"split fractions must leave a training share: val {val_fraction}, test {test_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = max(1, round(n * test_fraction)), round(n * val_fraction)
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def builtin(path: str) -> tuple[str, Path] | None:
    """``(name, root)`` where ``path`` is a built-in data set: its name (read from ``data/<name>``) or its folder."""
    folder = Path(path) if Path(path).is_dir() else Path(datasets.DEFAULT_ROOT) / path
    if folder.name in datasets.SHA256 and (folder / datasets.file_names("train")[0]).is_file():
        return folder.name, folder.parent
    if path in datasets.SHA256 and not Path(path).exists():
        raise DataError(f"{folder}: no IDX files of {path}; run `make data` (python -m export.fetch_data --out data)")
    return None


def _idx_parts(name: str, root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        return {split: (x[:, None], y) for split in ("train", "test") for x, y in [datasets.load(name, split, root)]}
    except datasets.DatasetError as exc:
        raise DataError(str(exc)) from exc


def _raw_parts(spec: DataSpec) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    known = builtin(spec.path)
    if known is not None:
        parts = _idx_parts(*known)
        return parts, tuple(str(c) for c in range(int(parts["train"][1].max()) + 1))
    path = Path(spec.path)
    if path.is_dir():
        if (path / "train").is_dir() and (path / "test").is_dir():
            _, _, names = read_folder(path / "train")
            parts = {p: read_folder(path / p, names)[:2] for p in ("train", "val", "test") if (path / p).is_dir()}
            return parts, names
        x, y, names = read_folder(path)
        return {"all": (x, y)}, names
    if path.suffix == ".npz" and path.is_file():
        parts = read_npz(path, spec.layout)
        ys = np.concatenate([y for _, y in parts.values()])
        return parts, tuple(str(c) for c in range(int(ys.max()) + 1))
    raise DataError(f"{path}: not an image folder or an .npz file")


def load(spec: DataSpec, prep: Preprocessing) -> UserData:
    """The data set at ``spec.path``, split, preprocessed with ``prep``."""
    parts, classes = _raw_parts(spec)
    given = "all" not in parts
    if not given:
        x, y = parts.pop("all")
        idx = draw_splits(len(y), spec.seed, spec.val_fraction, spec.test_fraction)
        parts = {name: (x[i], y[i]) for name, i in idx.items()}
    elif "val" not in parts:  # given train/test without val: val drawn from train
        x, y = parts["train"]
        order = np.random.default_rng(spec.seed).permutation(len(y))
        n_val = round(len(y) * spec.val_fraction)
        parts["val"], parts["train"] = (x[order[:n_val]], y[order[:n_val]]), (x[order[n_val:]], y[order[n_val:]])
    if len(classes) < 2:
        raise DataError(f"{spec.path}: {len(classes)} class; a classifier needs at least 2")
    splits = {name: Split(prep.apply(x[: spec.limit]), y[: spec.limit]) for name, (x, y) in parts.items()}
    return UserData(splits["train"], splits["val"], splits["test"], classes, given, spec)
