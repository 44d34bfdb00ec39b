"""The datasets' IDX files, carried in parts to a GPU machine that receives the working tree with a size limit.

A remote run sends the working tree (tracked files, ~43 MiB here) plus the carried paths, 64 MiB in all: the
four datasets' files (110 MB; 36 MB as xz) do not fit beside the tree in one call. ``pack`` (here) splits every
file into pieces, compresses each with xz and bins them into parts ``data/gpu15/part1``, ``part2``, ... that each
fit; each remote command carries one part and ``stage`` (there) unpacks what it finds into ``data/`` and rebuilds every
file whose pieces have all arrived, checked against ``export.datasets.SHA256``. Parts already staged stay on the same
machine (ignored files are kept between commands), so consecutive calls add up.

    python -m export.gpu_data pack            # here; prints the calls to make
    python -m export.gpu_data stage           # there, in every call
    python -m export.gpu_data complete        # the datasets whose files are all in place, comma-separated
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

from export import datasets

TREE_LIMIT = 64 * 2**20  # a remote run's working tree + carried paths
MARGIN = 2 * 2**20  # room left for files the tree gains before the call
PIECE_RAW = 12 * 2**20  # raw bytes per piece: about 6 MB of xz for Fashion-MNIST, so parts pack tightly
INDEX = "index.json"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree_bytes(repo: Path) -> int:
    """Bytes a remote run sends besides the carried paths: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout
    files = {repo / name for name in listed.decode().split("\0") if name}
    return sum(f.stat().st_size for f in files if f.is_file())


def pieces(root: Path, out: Path) -> list[dict]:
    """Every IDX file cut into ``PIECE_RAW``-byte pieces, each xz-compressed into ``out/pieces`` (reused if there)."""
    store = out / "pieces"
    store.mkdir(parents=True, exist_ok=True)
    made = []
    for dataset, files in datasets.SHA256.items():
        for name, sha in files.items():
            data = datasets.read_verified(root / dataset / name, sha)
            for i in range(0, len(data), PIECE_RAW):
                raw = data[i : i + PIECE_RAW]
                piece = store / f"{dataset}.{name}.{i // PIECE_RAW:02d}.xz"
                if not piece.is_file() or _sha(lzma.decompress(piece.read_bytes())) != _sha(raw):
                    print(f"xz {piece.name} ({len(raw)} bytes)", file=sys.stderr, flush=True)
                    piece.write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
                made.append(
                    {
                        "piece": piece.name,
                        "dataset": dataset,
                        "file": name,
                        "order": i // PIECE_RAW,
                        "raw_sha256": _sha(raw),
                    }
                )
    return made


def pack(root: Path, out: Path, room: int) -> list[list[str]]:
    """Bin the pieces into parts of at most ``room`` bytes (first fit, largest first; Fashion-MNIST, the dataset
    most issue rows need, before MNIST); write each part's folder with a copy of the index."""
    index = pieces(root, out)
    size = {p["piece"]: (out / "pieces" / p["piece"]).stat().st_size for p in index}
    order = sorted(index, key=lambda p: (p["dataset"] != "fashion", -size[p["piece"]]))
    parts: list[list[str]] = []
    for p in order:
        if size[p["piece"]] > room:
            raise SystemExit(f"{p['piece']} ({size[p['piece']]} bytes) is larger than the room left ({room} bytes)")
        fit = next((part for part in parts if sum(size[n] for n in part) + size[p["piece"]] <= room), None)
        if fit is None:
            parts.append(fit := [])
        fit.append(p["piece"])
    for old in out.glob("part*"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    for n, part in enumerate(parts, 1):
        folder = out / f"part{n}"
        folder.mkdir()
        for name in part:
            shutil.copyfile(out / "pieces" / name, folder / name)
        (folder / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return parts


def stage(parts_root: Path, root: Path) -> dict[str, list[str]]:
    """Unpack the carried pieces under ``parts_root`` of every IDX file not yet in ``root`` into ``parts_root/raw``;
    write each such file whose pieces are all there into ``root/<dataset>/`` once its sha256 matches. Returns the
    files still missing, by dataset."""
    wanted = {
        (dataset, name): sha
        for dataset, files in datasets.SHA256.items()
        for name, sha in files.items()
        if not ((root / dataset / name).is_file() and _sha((root / dataset / name).read_bytes()) == sha)
    }
    raw_dir = parts_root / "raw"
    index: list[dict] = []
    for index_file in sorted(parts_root.glob(f"part*/{INDEX}")) if wanted else ():
        index = json.loads(index_file.read_text())
        for p in index:
            piece, target = index_file.parent / p["piece"], raw_dir / p["piece"].removesuffix(".xz")
            if (p["dataset"], p["file"]) in wanted and piece.is_file() and not target.is_file():
                raw_dir.mkdir(parents=True, exist_ok=True)
                target.write_bytes(lzma.decompress(piece.read_bytes()))
    missing: dict[str, list[str]] = {}
    for (dataset, name), sha in wanted.items():
        mine = sorted((p for p in index if p["dataset"] == dataset and p["file"] == name), key=lambda p: p["order"])
        chunks = [raw_dir / p["piece"].removesuffix(".xz") for p in mine]
        if not mine or not all(c.is_file() for c in chunks):
            missing.setdefault(dataset, []).append(name)
            continue
        data = b"".join(c.read_bytes() for c in chunks)
        if _sha(data) != sha:
            raise SystemExit(f"{dataset}/{name}: rebuilt from {len(chunks)} pieces, sha256 {_sha(data)} != {sha}")
        (root / dataset).mkdir(parents=True, exist_ok=True)
        (root / dataset / name).write_bytes(data)
        for c in chunks:
            c.unlink()
    return missing


def complete(root: Path) -> list[str]:
    """The datasets whose IDX files are all in place with the pinned sha256."""
    ok = []
    for dataset, files in datasets.SHA256.items():
        try:
            for name, sha in files.items():
                datasets.read_verified(root / dataset / name, sha)
        except datasets.DatasetError:
            continue
        ok.append(dataset)
    return ok


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m export.gpu_data", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["pack", "stage", "complete"])
    p.add_argument("--data", type=Path, default=Path(datasets.DEFAULT_ROOT), help="dataset root (default: data)")
    p.add_argument("--parts", type=Path, default=Path("data/gpu15"), help="where the parts are (default: data/gpu15)")
    p.add_argument("--room", type=int, help="bytes per part (default: 64 MiB - the working tree - 2 MiB)")
    args = p.parse_args(argv)
    if args.command == "pack":
        room = args.room or TREE_LIMIT - tree_bytes(Path(".")) - MARGIN
        parts = pack(args.data, args.parts, room)
        for n, part in enumerate(parts, 1):
            total = sum((args.parts / f"part{n}" / name).stat().st_size for name in part)
            print(f"{args.parts}/part{n}: {len(part)} pieces, {total / 2**20:.1f} MiB (room {room / 2**20:.1f} MiB)")
    elif args.command == "stage":
        missing = stage(args.parts, args.data)
        print(f"complete: {','.join(complete(args.data)) or 'none'}; missing: {missing or 'nothing'}")
    else:
        print(",".join(complete(args.data)))


if __name__ == "__main__":
    main()
