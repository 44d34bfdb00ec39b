"""A user's data: image folders and .npz files in both layouts, splits given or drawn with a seed, the
preprocessing recorded with the model and applied the same way by every later command, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export import user_data
from export.manifest import RunInfo
from export.own_import import ImportArgs, Served, import_model
from export.user_data import DataError, DataSpec, Preprocessing
from tests.integration import own_models


def test_an_image_folder_reads_one_class_per_subfolder_in_channel_first_order(tmp_path):
    root = own_models.write_image_folder(tmp_path / "imgs", n=24)
    x, y, names = user_data.read_folder(root)
    raw, labels = own_models.quadrant_images(24)
    assert names == ("class_a", "class_b", "class_c", "class_d")
    assert x.shape == (24, 3, 32, 32) and x.dtype == np.uint8
    # files are read class by class; each image comes back pixel for pixel, channels first
    order = np.argsort(labels, kind="stable")
    np.testing.assert_array_equal(x, raw[order].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(y, labels[order])


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "nhw"])
def test_an_npz_in_any_layout_gives_the_same_channel_first_images(tmp_path, layout):
    x, y = own_models.band_images(30)  # (N, 20, 24, 1)
    stored = {"nchw": x.transpose(0, 3, 1, 2), "nhwc": x, "nhw": x[..., 0]}[layout]
    np.savez(tmp_path / "d.npz", x=stored, y=y)
    (got, labels) = user_data.read_npz(tmp_path / "d.npz")["all"]
    np.testing.assert_array_equal(got, x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labels, y)


def test_an_ambiguous_layout_asks_for_one(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 3, 8, 3), np.uint8), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match="--layout"):
        user_data.read_npz(tmp_path / "d.npz")
    assert user_data.read_npz(tmp_path / "d.npz", "nhwc")["all"][0].shape == (5, 3, 3, 8)


def test_drawn_splits_depend_on_the_seed_alone_and_cover_every_row_once():
    a, b, c = (user_data.draw_splits(100, seed, 0.1, 0.2) for seed in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert (len(a["test"]), len(a["val"]), len(a["train"])) == (20, 10, 70)
    assert sorted(np.concatenate(list(a.values()))) == list(range(100))


def test_given_splits_are_kept(tmp_path):
    for part, seed in (("train", 0), ("test", 1)):
        own_models.write_image_folder(tmp_path / "imgs" / part, n=16, seed=seed)
    data = user_data.load(DataSpec(str(tmp_path / "imgs")), Preprocessing())
    assert data.given_splits and len(data.test) == 16 and len(data.train) + len(data.val) == 16
    np.testing.assert_allclose(data.test.x, user_data.read_folder(tmp_path / "imgs" / "test")[0] / 255.0, atol=1e-6)


def test_preprocessing_is_per_channel_and_recorded_with_the_model(tmp_path):
    prep = Preprocessing(0.5, (1.0, 2.0, 3.0), (2.0, 4.0, 8.0))
    x = np.full((1, 3, 2, 2), 10, np.uint8)
    np.testing.assert_allclose(prep.apply(x)[0, :, 0, 0], [(5 - 1) / 2, (5 - 2) / 4, (5 - 3) / 8])
    with pytest.raises(DataError, match="2 values; images have 3 channels"):
        Preprocessing(1.0, (0.0, 0.0), (1.0,)).apply(x)
    # recorded at import, applied by every later command through Served.load_data
    npz = own_models.write_npz(tmp_path / "d.npz", n=40)
    torch.save(own_models.tiny_mlp().state_dict(), tmp_path / "w.pt")
    prep = Preprocessing(1 / 255, (0.5,), (0.25,))
    args = ImportArgs(
        "m",
        tmp_path / "repo",
        prep,
        "tests.integration.own_models:tiny_mlp",
        tmp_path / "w.pt",
        data=DataSpec(str(npz), seed=7),
    )
    import_model(args, RunInfo.current("user", torch.device("cpu"), [], "export"))
    served = Served.of(tmp_path / "repo", "m")
    assert served.preprocessing == prep and served.shape == (1, 20, 24) and served.classes == 3
    again = served.load_data()
    raw = user_data.read_npz(npz)["all"][0]
    idx = user_data.draw_splits(40, 7, 0.1, 0.2)["test"]
    np.testing.assert_allclose(again.test.x, (raw[idx] / 255.0 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


def test_one_class_and_mixed_sizes_are_refused_by_name(tmp_path):
    from PIL import Image

    (tmp_path / "one" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="one subfolder per class, at least 2"):
        user_data.read_folder(tmp_path / "one")
    for name, size in (("a", (8, 8)), ("b", (9, 8))):
        (tmp_path / "mixed" / name).mkdir(parents=True)
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(tmp_path / "mixed" / name / "0.png")
    with pytest.raises(DataError, match=r"b/0.png: 9x8 px.*same size"):
        user_data.read_folder(tmp_path / "mixed")
    np.savez(tmp_path / "one.npz", x=np.zeros((6, 1, 5, 5), np.uint8), y=np.zeros(6, np.int64))
    with pytest.raises(DataError, match="1 class; a classifier needs at least 2"):
        user_data.load(DataSpec(str(tmp_path / "one.npz")), Preprocessing())
