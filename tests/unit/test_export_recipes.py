"""The export recipes' training options, the gpu15, cpu15, cpu15b, cpu15c and cpu15d profiles' names, the dataset parts
for the GPU machine, and the tables.

Synthetic data (seconds, no dataset); the whole recipe end to end is ``export/gpu_train_evaluate.sh`` with the tiny15
profile (its header says how).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coding import parm
from export import accuracy_table, eval_approxifer, gpu_data, spec, train, train_all
from export.models import build_model
from export.onnx_export import write_model


def _split(n: int, seed: int) -> train.Split:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *spec.IMAGE_SHAPE), dtype=torch.uint8, generator=gen)
    return train.Split(images, torch.randint(0, spec.NUM_CLASSES, (n,), generator=gen))


def _data() -> train.Data:
    return train.Data(_split(64, 0), _split(24, 1), _split(24, 2))


def test_the_resnet_exports_with_a_dynamic_batch_and_matches_onnxruntime(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("resnet_s", mean=0.3, std=0.35).eval()
    batch = np.random.default_rng(0).random((3, *spec.IMAGE_SHAPE), dtype=np.float32)
    facts = write_model(model, "fashion_resnet_s", tmp_path, batch)
    assert facts["ort_max_abs_diff"] < 1e-4
    with torch.no_grad():
        assert model(torch.from_numpy(batch)).shape == (3, spec.NUM_CLASSES)


def test_random_hflip_mirrors_some_images_and_leaves_the_others() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    y = train.random_hflip(x)
    mirrored = (y == x.flip(-1)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert (mirrored | kept).all()
    assert mirrored.any() and kept.any()


def test_a_mixup_resnet_deployed_model_trains_and_keeps_its_best_epoch() -> None:
    cfg = train.TrainConfig(epochs=2, batch_size=16, arch="resnet_s", hflip=True, mixup_alpha=1.0, label_smoothing=0.1)
    result = train.train_deployed(_data(), cfg)
    assert result.epochs == 2 and all(np.isfinite(h["train_loss"]) for h in result.history)
    assert result.val_metric == max(h["val"] for h in result.history)


def test_distillation_at_an_exact_parity_output_leaves_the_soft_targets_entropy() -> None:
    """Exact parity output: every decoded slot equals the deployed logits, so the MSE is 0 and the helping term is
    the cross-entropy of softmax(logits / T) with itself (its entropy), times T^2 and the weight."""
    slots = torch.randn(5, 3, spec.NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    exact = parm.parity_target(slots)
    soft = F.softmax(slots.flatten(0, 1) / 2.0, dim=-1)
    entropy = -(soft * soft.log()).sum(-1).mean()
    loss = train.parity_loss(exact, slots, decode_ce_weight=0.5, temperature=2.0)
    torch.testing.assert_close(loss, 0.5 * 4.0 * entropy)
    hard = F.cross_entropy(slots.flatten(0, 1), slots.argmax(-1).flatten())
    torch.testing.assert_close(train.parity_loss(exact, slots, decode_ce_weight=0.5), 0.5 * hard)


def test_a_wider_parity_model_trains_from_scratch_and_refuses_a_warm_start() -> None:
    data = _data()
    deployed = train.train_deployed(data, train.TrainConfig(epochs=1, batch_size=32)).model
    teacher = train.Teacher.of(deployed, data)
    wide = train.TrainConfig(epochs=1, batch_size=8, arch="cnn_wide", decode_ce_weight=2.0, distill_temperature=2.0)
    parity = train.train_parity(data, teacher, "add", 3, wide, deployed).model
    assert 0.0 <= train.evaluate_parity(parity, teacher, "add", 3, data.test, rounds=1)["degraded_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="warm_start needs the deployed model's architecture"):
        train.train_parity(data, teacher, "add", 3, train.TrainConfig(1, 8, arch="cnn_wide", warm_start=True), deployed)


def _names(profile: train_all.Profile) -> list[tuple[str, str]]:
    """(role, name) of every model a profile exports, over both datasets and all the default codes."""
    out = []
    for dataset in spec.DATASETS:
        for v in profile.variants:
            if v.datasets is not None and dataset not in v.datasets:
                continue
            if not v.committed:
                out.append(("deployed", v.deployed_name(dataset)))
            codes = train_all.CODES if v.codes is None else v.codes
            out += [("parity", v.parity_name(dataset, e, k)) for e, k in codes]
    return out


def test_the_gpu15_profile_exports_15_models_under_their_own_names() -> None:
    names = _names(train_all.PROFILES["gpu15"])
    assert len(names) == len({n for _, n in names}) == 15
    deployed = {n for role, n in names if role == "deployed"}
    assert deployed == {"fashion_cnn_mixup", "fashion_resnet_mixup", "fashion_resnet"}
    assert not deployed & {spec.deployed_model_name(d) for d in spec.DATASETS}  # the committed CNNs stay
    assert "fashion_resnet_parm_add_k8" in {n for _, n in names}
    assert "mnist_parm_add_k12" in {n for _, n in names}  # for the committed mnist_cnn
    assert _names(train_all.PROFILES["tiny15"]) == names
    assert _names(train_all.PROFILES["full"]) == _names(train_all.PROFILES["cpu"])  # the old profiles: as before
    assert len(_names(train_all.PROFILES["full"])) == 12


def test_the_budget_is_shared_over_the_models_the_run_makes() -> None:
    args = train_all.parse_args(["--profile", "gpu15", "--datasets", "fashion", "--variants", "resnet,cnn"])
    run = train_all._Run(args, train_all.PROFILES["gpu15"], torch.device("cpu"), None)  # type: ignore[arg-type]
    assert run.models_left == 1 + 6 + 3  # the ResNet and its 6 parity models; 3 for the committed CNN
    with pytest.raises(SystemExit):
        train_all.parse_args(["--profile", "full", "--variants", "resnet"])


def test_cpu15_trains_the_mixup_cnn_beside_its_twin_and_parity_models_for_the_committed_cnn() -> None:
    profile = train_all.PROFILES["cpu15"]
    names = _names(profile)
    assert {n for role, n in names if role == "deployed"} == {"fashion_cnn_mixup", "fashion_cnn_std"}
    assert {n for role, n in names if role == "parity"} == {
        "fashion_parm_add_k3",
        "fashion_parm_add_k4",
        "fashion_parm_concat_k4",
    }
    mixup, twin, committed = profile.variants
    assert mixup.deployed == dataclasses.replace(profile.deployed, mixup_alpha=1.0)  # the only difference
    assert twin.deployed is None and committed.committed
    assert committed.parity is None and profile.parity.warm_start and profile.parity.decode_ce_weight == 2.0


@pytest.mark.parametrize(("variants", "models", "share"), [("cnn_mixup,cnn_std", 2, 1650.0), ("cnn", 3, 1100.0)])
def test_cpu15_side_by_side_runs_share_the_budget_over_their_own_models(
    variants: str, models: int, share: float
) -> None:
    args = train_all.parse_args(["--profile", "cpu15", "--datasets", "fashion", "--variants", variants])
    run = train_all._Run(args, train_all.PROFILES["cpu15"], torch.device("cpu"), None)  # type: ignore[arg-type]
    assert run.models_left == models
    assert run._cfg(train_all.PROFILES["cpu15"].parity, parity=True).time_budget_s == share


def test_cpu15b_trains_a_label_smoothed_and_a_short_cnn_and_no_parity_models() -> None:
    profile = train_all.PROFILES["cpu15b"]
    names = _names(profile)
    assert names == [("deployed", "fashion_cnn_ls"), ("deployed", "fashion_cnn_short")]
    smoothed, short = profile.variants
    assert smoothed.deployed == dataclasses.replace(profile.deployed, label_smoothing=0.1)  # the only difference
    assert short.deployed == dataclasses.replace(profile.deployed, epochs=10)
    assert profile.deployed == train_all.PROFILES["cpu15"].deployed  # cpu15's recipe, as fashion_cnn_std's


@pytest.mark.parametrize(
    ("variants", "share"), [("cnn_ls", 1300.0), ("cnn_short", 1300.0), ("cnn_ls,cnn_short", 650.0)]
)
def test_cpu15b_side_by_side_runs_give_each_model_the_whole_budget(variants: str, share: float) -> None:
    args = train_all.parse_args(["--profile", "cpu15b", "--datasets", "fashion", "--variants", variants])
    run = train_all._Run(args, train_all.PROFILES["cpu15b"], torch.device("cpu"), None)  # type: ignore[arg-type]
    assert run.models_left == len(variants.split(","))
    assert run._cfg(train_all.PROFILES["cpu15b"].deployed, parity=False).time_budget_s == share


def test_cpu15d_varies_only_the_short_cnns_epochs_or_its_seed() -> None:
    profile = train_all.PROFILES["cpu15d"]
    assert _names(profile) == [
        ("deployed", "fashion_cnn_e8"),
        ("deployed", "fashion_cnn_e12"),
        ("deployed", "fashion_cnn_short_s1"),
        ("deployed", "fashion_cnn_short_s2"),
        ("deployed", "fashion_cnn_short_s3"),
    ]
    short = train_all.PROFILES["cpu15b"].variants[1].deployed  # fashion_cnn_short's recipe, committed
    assert short is not None
    e8, e12, *seeded = (v.deployed for v in profile.variants)
    assert e8 == dataclasses.replace(short, epochs=8)
    assert e12 == dataclasses.replace(short, epochs=12)
    assert seeded == [dataclasses.replace(short, seed=s) for s in (1, 2, 3)] and short.seed == 0


def test_cpu15c_trains_wide_parity_models_at_k_8_10_12_for_both_committed_cnns() -> None:
    profile = train_all.PROFILES["cpu15c"]
    names = _names(profile)
    assert names == [("parity", f"{d}_parm_add_k{k}") for d in spec.DATASETS for k in (8, 10, 12)]
    repo = Path(__file__).resolve().parents[2] / "model_repository"
    served = {p.name for p in repo.iterdir()} if repo.is_dir() else set()
    assert not {n for _, n in names} & served  # no served model of these names: none is replaced
    (variant,) = profile.variants
    assert variant.committed and variant.parity is None and variant.datasets is None  # the committed mnist/fashion_cnn
    cfg = profile.parity
    assert (cfg.arch, cfg.warm_start, cfg.decode_ce_weight, cfg.batch_size) == ("cnn_wide", False, 2.0, 256)
    assert profile.test_rounds == train_all.PROFILES["full"].test_rounds == 4  # evaluated as the GPU rows were
    assert profile.parity_for(8).epochs == 1600  # an upper bound only: the time budget binds


def test_cpu15c_shares_its_budget_over_its_six_models() -> None:
    args = train_all.parse_args(["--profile", "cpu15c", "--device", "cpu", "--out", "/tmp/repo15c"])
    run = train_all._Run(args, train_all.PROFILES["cpu15c"], torch.device("cpu"), None)  # type: ignore[arg-type]
    assert run.models_left == 6  # parity models only: no deployed model is trained
    assert run._cfg(train_all.PROFILES["cpu15c"].parity_for(8), parity=True).time_budget_s == 720.0


def _fake_files(root: Path, sizes: dict[str, int]) -> dict[str, str]:
    rng = np.random.default_rng(0)
    pinned = {}
    for name, size in sizes.items():
        data = rng.integers(0, 4, size, dtype=np.uint8).tobytes()  # compressible, as images are
        (root / "fake").mkdir(parents=True, exist_ok=True)
        (root / "fake" / name).write_bytes(data)
        pinned[name] = hashlib.sha256(data).hexdigest()
    return pinned


def test_the_dataset_parts_fit_the_room_and_rebuild_every_file_once_all_have_arrived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = _fake_files(tmp_path / "src", {"images": 50_000, "labels": 3_000})
    monkeypatch.setattr(gpu_data.datasets, "SHA256", {"fake": pinned})
    monkeypatch.setattr(gpu_data, "PIECE_RAW", 10_000)
    parts = gpu_data.pack(tmp_path / "src", tmp_path / "parts", room=8_000)
    assert len(parts) >= 2
    for n in range(1, len(parts) + 1):
        assert sum(f.stat().st_size for f in (tmp_path / "parts" / f"part{n}").glob("*.xz")) <= 8_000

    # The device machine: a copy of one part at a time, into a fresh dataset root.
    there, dest = tmp_path / "there", tmp_path / "data"
    for n in range(1, len(parts) + 1):
        (there / f"part{n}").mkdir(parents=True)
        for f in (tmp_path / "parts" / f"part{n}").iterdir():
            (there / f"part{n}" / f.name).write_bytes(f.read_bytes())
        missing = gpu_data.stage(there, dest)
        if n < len(parts):
            assert missing == {"fake": ["images"]} or missing == {"fake": ["images", "labels"]}
            assert gpu_data.complete(dest) == []
    assert missing == {}
    assert gpu_data.complete(dest) == ["fake"]
    for name in pinned:
        assert (dest / "fake" / name).read_bytes() == (tmp_path / "src" / "fake" / name).read_bytes()


def test_eval_approxifer_takes_model_names_and_merges_runs(tmp_path: Path) -> None:
    cfg = eval_approxifer.parse_args(["--models", "fashion_resnet", "fashion_cnn", "--no-byzantine"])
    assert cfg.datasets == ("fashion",) and not cfg.byzantine
    assert eval_approxifer.result_key("fashion_cnn") == "fashion"
    assert eval_approxifer.result_key("fashion_resnet") == "fashion_resnet"
    with pytest.raises(SystemExit):
        eval_approxifer.parse_args(["--models", "cifar_resnet"])

    row = {"k": 8, "s": 1, "n": 9, "centralized": 0.9, "approxifer": 0.7, "published": 0.74}
    row |= {"systematic_missing": 0.2, "beside_originals_missing": 0.7}
    for name, key in (("fashion_resnet", "fashion_resnet"), ("fashion_cnn", "fashion")):
        result = {"model": {"path": f"repo/{name}/1/model.onnx", "sha256": "0"}, "base_accuracy": 0.9}
        result |= {"straggler": [row], "byzantine": []}
        doc = {"command": f"eval {name}", "trials": 20, "seed": 0, "sigma": 10.0, "results": {key: result}}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    merge = ["--merge", str(tmp_path / "fashion_resnet.json"), str(tmp_path / "fashion_cnn.json")]
    results, merged, command = eval_approxifer.merged(eval_approxifer.parse_args(merge))
    assert list(results) == ["fashion", "fashion_resnet"]  # the committed model first, then the variants
    assert merged.trials == 20 and not merged.byzantine and command == "eval fashion_resnet; eval fashion_cnn"
    markdown = eval_approxifer.to_markdown(results, merged, command)
    assert "| fashion_resnet | 0.9000 | 8 | 1 | 9 |" in markdown and "not run" in markdown


def test_the_accuracy_table_names_each_rows_models_when_asked() -> None:
    config = {"arch": "resnet", "hflip": True, "mixup_alpha": 1.0}
    training = {"config": config, "epochs": 3, "best_epoch": 2, "seconds": 9.5}
    metrics = {"deployed_accuracy": 0.95, "degraded_accuracy": 0.9, "reconstruction_top1": 0.91}
    parity = {"dataset": "fashion", "role": "parity", "encoder": "add", "k": 3, "training": training}
    models = {
        "fashion_resnet_parm_add_k3": parity
        | {"name": "fashion_resnet_parm_add_k3", "deployed_model": "fashion_resnet"},
        "fashion_parm_add_k3": parity | {"name": "fashion_parm_add_k3", "metrics": metrics},
        "fashion_resnet": {"name": "fashion_resnet", "role": "deployed", "training": training, "device": "cuda"},
    }
    models["fashion_resnet_parm_add_k3"]["metrics"] = metrics
    models["fashion_resnet"]["metrics"] = {"test_accuracy": 0.95}
    plain = accuracy_table.table({"models": models})
    assert "fashion_resnet" not in plain and plain.count("| fashion | add | 3 |") == 2
    named = accuracy_table.table({"models": models}, with_models=True)
    assert "| fashion | fashion_cnn | fashion_parm_add_k3 (resnet) | add | 3 |" in named
    assert "| fashion | fashion_resnet | fashion_resnet_parm_add_k3 (resnet) | add | 3 |" in named
    assert "| fashion_resnet | resnet | 95.00% | hflip=True, mixup_alpha=1.0 | 3 (2) | 9.5 | cuda |" in named
