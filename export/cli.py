"""``python -m export``: your own model, served with coded redundancy.

    python -m export import   --model model.py:build --checkpoint weights.pt --data images/ --name shapes
    python -m export parity   --name shapes --k 2 --encoder add
    python -m export collage  --name shapes --s 2
    python -m export coin     --like shapes --name shapes_set --model model.py:build --checkpoints a.pt b.pt
    python -m export evaluate --name shapes
    python -m export route    --name shapes --scheme parm --k 2

Every command takes ``--out`` (the model repository, default ``model_repository``). docs/own-model.md walks
through them. The built-in models are made by the same commands (``make models``): ``--data mnist`` (or
``fashion``) names a built-in data set, ``--model export.models:cnn`` the built-in CNN, ``--profile`` one of
export.train_all's training profiles (``import --profile`` trains the model first), ``parity --recipe parm``
ParM's own recipe, and ``coin --relabel-k`` export.coin's relabelled members instead of your checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from coding.parm import ENCODERS
from export import coin, degraded, own_coded, own_import, own_route, train
from export.manifest import RunInfo
from export.own_coded import device_of
from export.train import TrainConfig
from export.train_all import PROFILES
from export.user_data import BUILTIN_VAL_FRACTION, LAYOUTS, DataError, DataSpec, Preprocessing, builtin
from export.user_model import ModelError

log = logging.getLogger("export")


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _shape(text: str) -> tuple[int, ...]:
    shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected C,H,W (three positive numbers)")
    return shape


def _common(p: argparse.ArgumentParser, name_help: str = "the imported (served) model's name") -> None:
    p.add_argument("--name", required=True, help=name_help)
    p.add_argument("--out", type=Path, default=Path("model_repository"), help="the model repository")


def _data_args(p: argparse.ArgumentParser, recorded: bool = True) -> None:
    p.add_argument(
        "--data",
        help="image folder (one subfolder per class; or train/ and test/ of those), .npz (x, y), or a built-in "
        "data set: mnist, fashion (data/<name>, make data)"
        + ("; default: the one recorded at import" if recorded else ""),
    )


def _profile_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        help=f"a training profile of export.train_all (tiny, cpu, full, ...): its {what} recipe; given flags override",
    )


def _train_args(p: argparse.ArgumentParser, what: str, default: TrainConfig) -> None:
    p.set_defaults(default_train=default)
    _profile_arg(p, what)
    p.add_argument("--epochs", type=int, help=f"default: the profile's, else {default.epochs}")
    p.add_argument("--batch-size", type=int, help=f"coding groups (or images) per step; default {default.batch_size}")
    p.add_argument("--lr", type=float, help=f"default: the profile's, else {default.lr}")
    p.add_argument("--time-budget-s", type=float, help="stop (annealed) after this many seconds")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (CUDA where torch sees one)")


_OVERRIDES = ("epochs", "batch_size", "lr", "time_budget_s", "seed")


def _config(args: argparse.Namespace, base: TrainConfig | None = None, **extra) -> TrainConfig:
    """``base`` (the profile's recipe, else the command's default) with the flags given on the command line."""
    given = {name: getattr(args, name) for name in _OVERRIDES if getattr(args, name) is not None}
    extra = {name: value for name, value in extra.items() if value is not None}
    return dataclasses.replace(base or args.default_train, **extra, **given)


def _add_import(p: argparse.ArgumentParser) -> None:
    _common(p, "the name clients and routes use")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="package.module:factory or path/to/model.py:factory (returns an nn.Module)")
    source.add_argument("--onnx", type=Path, help="an ONNX file (one image input, one output of scores)")
    p.add_argument("--checkpoint", type=Path, help="the model's state_dict (torch.save)")
    p.add_argument("--input-shape", type=_shape, help="C,H,W (default: the data's)")
    _data_args(p, recorded=False)
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help=".npz images: N x C x H x W or N x H x W x C")
    p.add_argument("--seed", type=int, default=0, help="draws the splits where the data has none")
    p.add_argument("--val-fraction", type=float, help=f"default 0.1 (built-in data: {BUILTIN_VAL_FRACTION:.4g})")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--limit", type=int, help="only the first N images of each split (default: the profile's)")
    _profile_arg(p, "deployed-model")
    p.add_argument("--device", default="auto", help="where --profile trains: cpu, cuda, or auto")
    p.add_argument("--scale", type=float, default=1 / 255, help="pixels are multiplied by this first")
    p.add_argument("--mean", type=_floats, default=(0.0,), help="then this is subtracted (one, or one per channel)")
    p.add_argument("--std", type=_floats, default=(1.0,), help="and the result divided by this")


def _add_parity(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--encoder", choices=sorted(ENCODERS), default="add")
    p.add_argument("--parity-model", help="the parity model's factory (default: the deployed model's)")
    p.add_argument("--decode-ce-weight", type=float, help="adds the decoded outputs' cross-entropy (default 0)")
    p.add_argument("--warm-start", action="store_const", const=True, help="start from the deployed model's weights")
    p.add_argument("--checkpoint", type=Path, help="--warm-start's weights (default: those imported)")
    p.add_argument(
        "--recipe",
        choices=train.RECIPES,
        default="ours",
        help="parm: ParM's published recipe (MSE alone, from scratch, Adam; the name ends _recipe_parm)",
    )
    _train_args(p, "parity-model", TrainConfig(20, 64, augment=False))
    _data_args(p)


def _add_collage(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--s", type=int, default=2, help="cells a side: 2, 3 or 4")
    p.add_argument("--width", type=int, default=64, help="channels of the per-cell CNN")
    p.add_argument("--shift", action="store_const", const=True, help="shift each image by up to 2 px while training")
    _train_args(p, "collage-model", TrainConfig(20, 64, augment=False))
    _data_args(p)


def _add_coin(p: argparse.ArgumentParser) -> None:
    _common(p, "the set's name: members NAME_m0.., the coded model NAME_k{k}_{method}")
    p.add_argument("--like", required=True, help="an imported model whose input, preprocessing and data to share")
    members = p.add_mutually_exclusive_group(required=True)
    members.add_argument("--checkpoints", type=Path, nargs="+", help="one per member (k >= 2), with --model")
    members.add_argument(
        "--relabel-k",
        help="export.coin's experiment instead: members fine-tuned from --like under relabellings, coded for "
        "each k of this comma-separated list (--name must be <prefix of --like>_coin)",
    )
    p.add_argument("--model", help="the members' factory (with --checkpoints)")
    p.add_argument("--method", choices=own_coded.COIN_METHODS, default="fisher")
    p.add_argument("--fisher-samples", type=int, default=512)
    p.add_argument("--bn", choices=coin.BN_MODES, default="average", help="BatchNorm statistics")
    p.add_argument("--settings", default="shared", help=f"--relabel-k: comma-separated, of {sorted(coin.SETTINGS)}")
    p.add_argument("--results", type=Path, help="--relabel-k: its Markdown tables, e.g. export/results/coin-mnist.md")
    _train_args(p, "distillation", TrainConfig(10, 128, lr=1e-3, augment=False))
    _data_args(p)


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--rounds", type=int, default=2, help="random partitions into coding groups")
    p.add_argument("--approxifer", default="2,1;4,1;8,1;8,2", help="K,S settings, ';'-separated ('' for none)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test images")
    p.add_argument("--seed", type=int, default=0)
    _data_args(p)


def _add_route(p: argparse.ArgumentParser) -> None:
    _common(p, "the served model (COIN: the set's name)")
    p.add_argument("--scheme", choices=own_route.SCHEMES, required=True)
    p.add_argument("--k", type=int, default=2, help="queries per group (collage: s², COIN: members)")
    p.add_argument("--option", action="append", default=[], help="KEY=VALUE scheme option, e.g. encoder=concat")


def run_import(args: argparse.Namespace, run: RunInfo) -> None:
    if args.onnx and (args.checkpoint or args.input_shape):
        raise ModelError("--onnx takes neither --checkpoint nor --input-shape (the file declares its input)")
    profile = PROFILES[args.profile] if args.profile else None
    limit = args.limit if args.limit is not None else (profile.limit if profile else None)
    val = args.val_fraction
    if val is None:
        val = BUILTIN_VAL_FRACTION if args.data and builtin(args.data) else 0.1
    data = DataSpec(args.data, args.layout, args.seed, val, args.test_fraction, limit) if args.data else None
    prep = Preprocessing(args.scale, args.mean, args.std)
    spec = own_import.ImportArgs(
        args.name,
        args.out,
        prep,
        args.model,
        args.checkpoint,
        args.onnx,
        args.input_shape,
        data,
        profile.deployed if profile else None,
        device_of(args.device),
    )
    entry = own_import.import_model(spec, run)
    user = entry["user"]
    print(f"{args.name}: input {user['input_shape']} float32, {user['classes']} classes {user['class_names'] or ''}")
    print(f"preprocessing: (pixels * {prep.scale:.6g} - mean {list(prep.mean)}) / std {list(prep.std)}")
    print(f"wrote {args.out / entry['onnx']['path']} (sha256 {entry['onnx']['sha256'][:16]}…)")
    print(f"wrote {args.out / args.name / 'config.pbtxt'} and configs/gpu.pbtxt")
    if entry["metrics"]:
        sizes = ", ".join(f"{part} {n}" for part, n in user["splits"].items())
        drawn = "as given" if user["given_splits"] else f"drawn with seed {user['data']['seed']}"
        print(f"splits: {sizes} images ({drawn})")
        print(f"test accuracy {entry['metrics']['test_accuracy']:.2%}")


def _print_coded(entry: dict, what: str) -> None:
    print(f"{entry['name']}: {what}; wrote {entry['onnx']['path']}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        device = device_of(getattr(args, "device", "cpu"))
        profile = getattr(args, "profile", None) or "user"
        run = RunInfo.current(profile, device, argv=sys.argv[1:] if argv is None else argv, module="export")
        COMMANDS[args.command][2](args, run)
    except (ModelError, DataError, ValueError, FileNotFoundError) as exc:
        print(f"python -m export {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


def run_parity(args: argparse.Namespace, run: RunInfo) -> None:
    profile = PROFILES[args.profile] if args.profile else None
    base = profile.parity_for(args.k) if profile else None
    cfg = _config(args, base, decode_ce_weight=args.decode_ce_weight, warm_start=args.warm_start)
    if args.recipe == "parm":  # ParM's settings, under the budget, seed and clock ours would get (train_all's)
        cfg = train.parm_recipe(args.k, time_budget_s=cfg.time_budget_s, arch=cfg.arch, seed=cfg.seed, clock=cfg.clock)
    spec = own_coded.ParityArgs(
        args.name,
        args.out,
        args.encoder,
        args.k,
        cfg,
        args.device,
        args.parity_model,
        args.checkpoint,
        args.data,
        profile.test_rounds if profile else 4,
    )
    e = own_coded.parity(spec, run)
    m = e["metrics"]
    _print_coded(e, f"A_a {m['deployed_accuracy']:.2%}, A_d {m['degraded_accuracy']:.2%} (test, every slot erased)")


def run_collage(args: argparse.Namespace, run: RunInfo) -> None:
    cfg = _config(args, PROFILES[args.profile].collage if args.profile else None, augment=args.shift)
    spec = own_coded.CollageArgs(args.name, args.out, args.s, cfg, args.width, args.device, args.data)
    e = own_coded.collage(spec, run)
    _print_coded(e, f"per-cell test accuracy {e['metrics']['cell_accuracy']:.2%}")


def run_coin(args: argparse.Namespace, run: RunInfo) -> None:
    if args.relabel_k:
        _run_relabelled(args, run)
        return
    if not args.model:
        raise ValueError("--checkpoints needs --model (the members' factory)")
    cfg = _config(args)
    spec = own_coded.CoinArgs(
        args.name,
        args.out,
        args.like,
        args.model,
        tuple(args.checkpoints),
        args.method,
        cfg,
        args.fisher_samples,
        args.bn,
        args.device,
        args.data,
    )
    for e in own_coded.coin(spec, run):
        if e["role"] == "coin_member":
            _print_coded(e, f"member, test accuracy {e['metrics']['test_accuracy']:.2%}")
            continue
        agree = e["metrics"]["decoded_agrees_with_member"]
        text = ", ".join(f"{a:.2%}" for a in agree)
        _print_coded(e, f"coded model ({e['encoder']}); a missing member decoded agrees with it: {text}")
        if min(agree) < 0.5:
            print(
                "warning: members trained from different starting points do not merge; COIN's members are "
                "fine-tunes of one base model",
                file=sys.stderr,
            )


def _run_relabelled(args: argparse.Namespace, run: RunInfo) -> None:
    expected = own_coded.relabel_set_name(args.like)
    if args.name != expected:
        raise ValueError(f"--relabel-k names the set after --like: --name {expected}")
    ks = sorted(int(k) for k in args.relabel_k.split(","))
    settings = args.settings.split(",")
    if not set(ks) <= set(range(2, len(coin.LABELLINGS) + 1)) or not set(settings) <= set(coin.SETTINGS):
        raise ValueError(f"--relabel-k must be within 2..{len(coin.LABELLINGS)}, --settings of {sorted(coin.SETTINGS)}")
    plan = coin.Plan(ks, settings, args.fisher_samples, bn=args.bn, export_setting=settings[0])
    spec = own_coded.RelabelArgs(args.like, args.out, plan, args.results, args.device, args.data)
    for e in own_coded.coin_relabelled(spec, run):
        _print_coded(e, e["role"])


def run_evaluate(args: argparse.Namespace, run: RunInfo) -> None:
    settings = [(int(k), int(s)) for k, s in (item.split(",") for item in args.approxifer.split(";") if item)]
    result = degraded.evaluate(args.out, args.name, args.data, args.rounds, args.seed, settings, args.limit)
    print(degraded.markdown(args.name, result))


def run_route(args: argparse.Namespace, run: RunInfo) -> None:
    options = dict(o.split("=", 1) for o in args.option)
    print("\n".join(own_route.route(args.name, args.scheme, args.k, args.out, options).lines(args.out)))


COMMANDS = {
    "import": ("your PyTorch model or ONNX file into the repository, with its configs", _add_import, run_import),
    "parity": ("a ParM parity model for k and an encoder", _add_parity, run_parity),
    "collage": ("a Collage-CNN collage model for s x s queries", _add_collage, run_collage),
    "coin": ("COIN: k member models and their coded model", _add_coin, run_coin),
    "evaluate": ("every scheme's degraded-mode accuracy on the test split (onnxruntime)", _add_evaluate, run_evaluate),
    "route": ("the frontend's --route and the models to load for a scheme", _add_route, run_route),
}


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = root.add_subparsers(dest="command", required=True)
    for name, (help_text, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text))
    return root
