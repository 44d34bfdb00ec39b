"""Your own model, end to end: two models that are not the built-in CNN (a small ResNet-style net on 3 x 32 x 32
PNG folders, 4 classes, imported from PyTorch; an MLP on 1 x 20 x 24 .npz images, 3 classes, imported from an
ONNX file with a fixed batch axis) go through ``python -m export`` import, parity, collage, coin, evaluate and
route at a tiny setting, then the real stack serves the routes ``route`` printed. One query of a group is
forced to straggle (``codedserve-fault`` metadata; COIN: member 1's instance is slow): its answer is the decode
computed here offline with onnxruntime and coding/ (ParM: the parity model's output less the partner's;
Collage: its cell's row; COIN: 2 f_c − f_0)."""

from __future__ import annotations

import asyncio
import json
import shlex
import warnings
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from codedserve.v1 import codedserve_pb2 as pb
from codedserve.v1 import codedserve_pb2_grpc as pb_grpc

from bench.stack import FrontendSpec, Stack
from coding.coin import CoinScheme
from coding.collage import CollageScheme
from coding.parm import ParmScheme
from export import cli, user_data
from export.own_import import OnnxModel, Served, model_path
from service_common.tensors import from_numpy
from tests.integration import own_models

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

FACTORY = "tests.integration.own_models:tiny_resnet"


def _cli(*argv: str) -> None:
    assert cli.main(list(argv)) == 0, argv


def _route(capsys, *argv: str) -> tuple[str, list[str]]:
    capsys.readouterr()
    _cli("route", *argv)
    route_line, triton_line = capsys.readouterr().out.splitlines()[:2]
    models = shlex.split(triton_line)[-1].split(",")
    return shlex.split(route_line)[1], models


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    repo = str(root / "repo")
    images, npz = own_models.write_image_folder(root / "imgs"), own_models.write_npz(root / "bands.npz")
    prep = user_data.Preprocessing(1 / 255, (0.5,), (0.25,))
    quads = user_data.load(user_data.DataSpec(str(images)), prep)
    for name, seed, epochs in (("resnet", 0, 6), ("member0", 1, 3), ("member1", 2, 3)):
        torch.save(
            own_models.fit(own_models.tiny_resnet(), quads.train.x, quads.train.y, epochs, seed).state_dict(),
            root / f"{name}.pt",
        )
    bands = user_data.load(user_data.DataSpec(str(npz)), user_data.Preprocessing())
    mlp = own_models.fit(own_models.tiny_mlp(), bands.train.x, bands.train.y, epochs=10)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation: a user's file, as they make it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            mlp,
            (torch.zeros(1, 1, 20, 24),),
            str(root / "mlp.onnx"),
            input_names=["pixels"],
            output_names=["scores"],
            dynamo=False,
        )
    common = ("--out", repo, "--device", "cpu")
    _cli(
        "import",
        "--model",
        FACTORY,
        "--checkpoint",
        str(root / "resnet.pt"),
        "--data",
        str(images),
        "--name",
        "quads",
        "--mean",
        "0.5",
        "--std",
        "0.25",
        "--out",
        repo,
    )
    _cli("import", "--onnx", str(root / "mlp.onnx"), "--data", str(npz), "--name", "bands", "--out", repo)
    _cli("parity", "--name", "quads", "--k", "2", "--encoder", "add", "--epochs", "2", *common)
    _cli(
        "parity",
        "--name",
        "bands",
        "--k",
        "2",
        "--encoder",
        "concat",
        "--epochs",
        "2",
        "--parity-model",
        "tests.integration.own_models:tiny_mlp",
        *common,
    )
    _cli("collage", "--name", "bands", "--s", "2", "--epochs", "2", *common)
    _cli(
        "coin",
        "--like",
        "quads",
        "--name",
        "qset",
        "--model",
        FACTORY,
        "--checkpoints",
        str(root / "member0.pt"),
        str(root / "member1.pt"),
        "--method",
        "fisher",
        "--fisher-samples",
        "64",
        *common,
    )
    return Path(repo), root


def test_import_writes_configs_from_the_onnx_signature_and_records_the_preprocessing(built):
    repo, _ = built
    quads, bands = (repo / "quads" / "config.pbtxt").read_text(), (repo / "bands" / "config.pbtxt").read_text()
    assert 'name: "input"' in quads and "dims: [ 3, 32, 32 ]" in quads and "dims: [ 4 ]" in quads
    assert 'name: "pixels"' in bands and "dims: [ 1, 20, 24 ]" in bands and "dims: [ 3 ]" in bands
    assert "kind: KIND_GPU" in (repo / "bands" / "configs" / "gpu.pbtxt").read_text()
    manifest = json.loads((repo / "manifest.json").read_text())["models"]
    assert manifest["quads"]["user"]["preprocessing"] == {"scale": 1 / 255, "mean": [0.5], "std": [0.25]}
    assert manifest["quads_parm_add_k2"]["deployed_model"] == "quads"
    assert {"qset_m0", "qset_m1", "qset_k2_fisher", "bands_parm_concat_k2", "bands_collage_s2"} <= set(manifest)


def test_evaluate_has_a_row_per_coded_model_and_its_a_a_is_the_deployed_accuracy(built, capsys):
    repo, _ = built
    capsys.readouterr()
    _cli("evaluate", "--name", "quads", "--out", str(repo), "--approxifer", "2,1")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "scheme" not in line]
    schemes = [r.split(" | ")[0] for r in rows]
    assert schemes == ["| coin (fisher)", "| parm (add)", "| approxifer (S=1)", "| approxifer systematic (S=1)"]
    served = Served.of(repo, "quads")
    test = served.load_data().test
    accuracy = float((served.model()(test.x).argmax(-1) == test.y).mean())
    parm_row = rows[1].split(" | ")
    assert parm_row[4] == f"{accuracy:.2%}"  # every test image is in a group (48 images, k = 2)


def test_route_names_the_models_the_scheme_calls(built, capsys):
    repo, _ = built
    assert _route(
        capsys, "--name", "quads", "--out", str(repo), "--scheme", "parm", "--k", "2", "--option", "encoder=add"
    ) == ("quads=parm:k=2,encoder=add", ["quads", "quads_parm_add_k2"])
    assert _route(capsys, "--name", "bands", "--out", str(repo), "--scheme", "collage", "--k", "4") == (
        "bands=collage:s=2",
        ["bands", "bands_collage_s2"],
    )
    assert _route(capsys, "--name", "qset", "--out", str(repo), "--scheme", "coin", "--k", "2")[1] == [
        "qset_m0",
        "qset_m1",
        "qset_k2_fisher",
    ]


async def _classify(address: str, model: str, images: np.ndarray, faults: list[str | None]) -> list:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.FrontendStub(channel)

        async def one(i: int):
            metadata = (("codedserve-fault", faults[i]),) if faults[i] else None
            request = pb.ClassifyRequest(model=model, input=from_numpy(images[i]), id=str(i))
            return await stub.Classify(request, timeout=10, metadata=metadata)

        return await asyncio.gather(*(one(i) for i in range(len(images))))


@pytest.fixture(scope="module")
def stack(built, tmp_path_factory):
    repo, _ = built
    from export.own_route import route

    parm, collage = route("quads", "parm", 2, repo, {"encoder": "add"}), route("bands", "collage", 4, repo)
    coin = route("qset", "coin", 2, repo)
    flags = ["--straggler-timeout-ms", "500", "--fill-timeout-ms", "2000", "--allow-fault-metadata"]
    # COIN's one query goes to both members: member 1's instance (worker 1) is made slow for every call
    coin_flags = [
        "--route",
        coin.route,
        "--fill-timeout-ms",
        "1",
        "--straggler-timeout-ms",
        "200",
        "--inject-worker-faults",
        "1=delay=3000",
    ]
    frontends = {
        "parm": FrontendSpec(["--route", parm.route, *flags], tritons=(0,), parity_tritons=(2,)),
        "collage": FrontendSpec(["--route", collage.route, *flags], tritons=(0,), parity_tritons=(2,)),
        "coin": FrontendSpec(coin_flags, tritons=(0, 1), parity_tritons=(2,)),
    }
    models = [*parm.models, *collage.models, *coin.models]
    with Stack(
        models, frontends, model_repository=repo, triton_count=3, log_dir=tmp_path_factory.mktemp("logs")
    ) as running:
        yield running


def test_a_straggling_query_of_the_resnet_is_rebuilt_from_its_parity_exactly_as_offline(built, stack):
    repo, _ = built
    x = Served.of(repo, "quads").load_data().test.x[:2]
    replies = asyncio.run(_classify(stack.address("parm"), "quads", x, [None, "delay=3000"]))
    own = OnnxModel(model_path(repo, "quads"))(x)
    scheme = ParmScheme("add", 2)
    parity = OnnxModel(model_path(repo, "quads_parm_add_k2"))(scheme.encode(x))
    expected, _ = scheme.decode_slots([own[0], None], [parity[0]])
    assert not replies[0].reconstructed
    np.testing.assert_allclose(replies[0].logits, own[0], rtol=1e-4, atol=1e-4)
    assert replies[1].reconstructed and replies[1].scheme == "parm"
    np.testing.assert_allclose(replies[1].logits, expected[1], rtol=1e-4, atol=1e-4)


def test_a_straggling_query_of_the_onnx_mlp_is_read_off_its_collage_cell_exactly_as_offline(built, stack):
    repo, _ = built
    x = Served.of(repo, "bands").load_data().test.x[:4]
    replies = asyncio.run(_classify(stack.address("collage"), "bands", x, [None, None, "delay=3000", None]))
    scheme = CollageScheme(2)
    cells = OnnxModel(model_path(repo, "bands_collage_s2"))(scheme.coded_inputs(x))[0]
    own = OnnxModel(model_path(repo, "bands"))(x)
    for i, reply in enumerate(replies):
        assert reply.reconstructed == (i == 2)
        np.testing.assert_allclose(reply.logits, cells[2] if i == 2 else own[i], rtol=1e-4, atol=1e-4)


def test_a_straggling_coin_member_is_decoded_from_the_coded_model_exactly_as_offline(built, stack):
    repo, _ = built
    x = Served.of(repo, "quads").load_data().test.x[:1]
    (reply,) = asyncio.run(_classify(stack.address("coin"), "qset", x, [None]))
    f0 = OnnxModel(model_path(repo, "qset_m0"))(x)[0]
    coded = OnnxModel(model_path(repo, "qset_k2_fisher"))(x)[0]
    expected, _ = CoinScheme(2).decode_slots([f0, None], [coded])
    outputs = {o.model: o for o in reply.outputs}
    assert reply.scheme == "coin" and list(outputs) == ["qset_m0", "qset_m1"]
    assert not outputs["qset_m0"].reconstructed and outputs["qset_m1"].reconstructed
    np.testing.assert_allclose(outputs["qset_m0"].logits, f0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs["qset_m1"].logits, expected[1], rtol=1e-4, atol=1e-4)
