"""``python -m export evaluate`` against an exact oracle: with a linear deployed model, a parity model that is
the same map with k times its bias (F(x_1) + F(x_2) = W (x_1 + x_2) + 2b) and COIN members averaged plainly
(a linear model's output is linear in its weights), every decode is exact, so A_d must equal A_a and every
decoded answer must agree with the deployed one (the member's)."""

from __future__ import annotations

import numpy as np
import torch

from export import cli
from export.manifest import RunInfo, model_entry, update_manifest
from export.onnx_export import write_model
from tests.integration import own_models

FACTORY = "tests.integration.own_models:linear"


def _linear(path, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = own_models.linear()
    torch.save(model.state_dict(), path)
    return model


def test_exact_decoders_give_a_d_equal_to_a_a_for_parm_and_coin(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (80, 2, 6, 5)).astype(np.uint8), y=rng.integers(0, 3, 80))
    repo = str(tmp_path / "repo")
    deployed = _linear(tmp_path / "lin.pt", 0)
    assert (
        cli.main(
            [
                "import",
                "--model",
                FACTORY,
                "--checkpoint",
                str(tmp_path / "lin.pt"),
                "--data",
                str(tmp_path / "d.npz"),
                "--layout",
                "nchw",
                "--name",
                "lin",
                "--out",
                repo,
            ]
        )
        == 0
    )
    parity = own_models.linear()
    parity.load_state_dict({"1.weight": deployed[1].weight, "1.bias": 2 * deployed[1].bias})
    facts = write_model(parity, "lin_parm_add_k2", tmp_path / "repo", np.zeros((2, 2, 6, 5), np.float32), (3,))
    run = RunInfo.current("user", torch.device("cpu"), [], "export")
    update_manifest(
        tmp_path / "repo",
        [
            model_entry(
                name="lin_parm_add_k2",
                dataset="d",
                role="parity",
                encoder="add",
                k=2,
                run=run,
                onnx_facts=facts,
                training={},
                metrics={},
                deployed_model="lin",
            )
        ],
    )
    for i in (1, 2):
        _linear(tmp_path / f"m{i}.pt", i)
    assert (
        cli.main(
            [
                "coin",
                "--like",
                "lin",
                "--name",
                "lset",
                "--model",
                FACTORY,
                "--checkpoints",
                str(tmp_path / "m1.pt"),
                str(tmp_path / "m2.pt"),
                "--method",
                "average",
                "--out",
                repo,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["evaluate", "--name", "lin", "--out", repo, "--approxifer", ""]) == 0
    rows = {r.split(" | ")[0][2:]: r.split(" | ") for r in capsys.readouterr().out.splitlines() if r.startswith("| ")}
    for scheme in ("parm (add)", "coin (average)"):
        row = rows[scheme]
        assert row[4] == row[5] and row[7] == "100.00%", row  # A_a == A_d, every decode agrees
    assert rows["parm (add)"][8] == "32 |"  # 2 rounds x 8 groups x 2 erasures (16 test images)
