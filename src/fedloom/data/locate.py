"""Find a dataset's files on disk, and download the missing ones where that is allowed.

Roots are searched in order: the ``data_dir`` argument (the config's ``data.dir``),
``$FEDLOOM_DATA``, ``../shared/data`` from the working directory, and ``../shared/data`` next to
the repository that holds this source file. In each root a file may sit in the dataset's folder
(``<root>/mnist/<file>``) or directly in the root (``<root>/<file>``), gzip-compressed
(``<file>.gz``) or not. Checksums are SHA-256 digests of the *decompressed* bytes, so both forms
verify against the same table.

Files found nowhere are downloaded (see :mod:`fedloom.data.download`) unless ``FEDLOOM_OFFLINE``
is set; if that fails too, the :class:`DataError` lists every place searched and how to provide
the files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedloom.core.errors import DataError
from fedloom.data.config import DatasetName
from fedloom.data.download import download_file

#: Environment variable naming an extra data root.
DATA_ENV = "FEDLOOM_DATA"
#: Environment variable that, set to anything but ``""``/``0``/``false``/``no``, disables downloads.
OFFLINE_ENV = "FEDLOOM_OFFLINE"


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetFiles:
    """The files that make up a dataset and how to check them.

    Attributes:
        key: short name, used in messages and as the key of :data:`MIRRORS`.
        folders: sub-folder names accepted under a root; the first one is where downloads go.
        sha256: file name (without ``.gz``) -> SHA-256 of its decompressed bytes.
    """

    key: str
    folders: tuple[str, ...]
    sha256: dict[str, str]

    def __post_init__(self) -> None:
        if not self.sha256:
            raise ValueError(f"DatasetFiles {self.key!r}: sha256 must list at least one file")


_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
_FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
MNIST_FILES = DatasetFiles(key="mnist", folders=("mnist",), sha256=_MNIST_SHA256)
FASHION_MNIST_FILES = DatasetFiles(
    key="fashion_mnist", folders=("fashion-mnist", "fashion_mnist"), sha256=_FASHION_MNIST_SHA256
)
#: The IDX datasets fedloom knows, by config name.
IDX_FILES: dict[DatasetName, DatasetFiles] = {
    DatasetName.MNIST: MNIST_FILES,
    DatasetName.FASHION_MNIST: FASHION_MNIST_FILES,
}
#: Mirror base URLs per :attr:`DatasetFiles.key`; ``<base><file>.gz`` is fetched.
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}


def search_roots(data_dir: str | Path | None) -> list[Path]:
    """The roots searched for data files, in order, without duplicates."""
    roots: list[Path] = []
    env = os.environ.get(DATA_ENV)
    for root in (
        data_dir,
        env or None,
        Path.cwd() / ".." / "shared" / "data",
        Path(__file__).resolve().parents[3] / ".." / "shared" / "data",
    ):
        if root is None or str(root) == "":
            continue
        path = Path(root).expanduser().resolve()
        if path not in roots:
            roots.append(path)
    return roots


def candidate_dirs(files: DatasetFiles, roots: Sequence[Path]) -> list[Path]:
    """Every directory a file of ``files`` may be in, in search order."""
    return [d for root in roots for d in (*(root / f for f in files.folders), root)]


def find_local(files: DatasetFiles, dirs: Sequence[Path]) -> dict[str, Path]:
    """The first existing copy (``.gz`` preferred, then raw) of each file, by file name."""
    found: dict[str, Path] = {}
    for name in files.sha256:
        for directory in dirs:
            hit = next(
                (p for p in (directory / f"{name}.gz", directory / name) if p.is_file()), None
            )
            if hit is not None:
                found[name] = hit
                break
    return found


def downloads_disabled() -> bool:
    """Whether ``FEDLOOM_OFFLINE`` forbids downloads."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    return value not in ("", "0", "false", "no")


def download_targets(data_dir: str | Path | None) -> list[Path]:
    """Roots a download may be written to, in order of preference."""
    env = os.environ.get(DATA_ENV)
    roots = [Path(r).expanduser() for r in (data_dir, env) if r]
    return [*roots, Path.home() / ".cache" / "fedloom" / "data"]


def locate_files(
    files: DatasetFiles,
    data_dir: str | Path | None,
    *,
    mirrors: Sequence[str] | None = None,
) -> dict[str, Path]:
    """The path of every file of ``files``, downloading the missing ones if allowed.

    Local files are only found here, not verified: :func:`fedloom.data.checksum.read_verified`
    checks them when they are read. Downloaded files are verified before they are kept.

    Args:
        files: the dataset's files and checksums.
        data_dir: an explicit root searched first (``data.dir`` in the config).
        mirrors: base URLs to download from; default ``MIRRORS[files.key]``.

    Raises:
        DataError: a file is missing and cannot be downloaded; the message lists every place
            searched, every download tried, and how to provide the files. Downloads stop at the
            first file that no mirror provides.
    """
    dirs = candidate_dirs(files, search_roots(data_dir))
    found = find_local(files, dirs)
    missing = [name for name in files.sha256 if name not in found]
    if not missing:
        return found
    bases = tuple(MIRRORS.get(files.key, ()) if mirrors is None else mirrors)
    failures: list[str] = []
    if downloads_disabled():
        failures.append(offline_reason())
    elif not bases:
        failures.append("no download mirrors configured")
    else:
        targets = [t / files.folders[0] for t in download_targets(data_dir)]
        for name in list(missing):
            try:
                found[name] = download_file(name, files.sha256[name], bases, targets)
            except DataError as exc:  # the mirrors are likely down for all: stop here
                failures.append(str(exc))
                break
            missing.remove(name)
    if missing:
        names = ", ".join(f"{n}.gz" for n in files.sha256)
        raise DataError(not_found_message(
            files.key, f"{', '.join(missing)} (as .gz or uncompressed)", dirs, failures,
            provide=f"put {names} (gzip or uncompressed) in <dir>/{files.folders[0]}/ or <dir>/"))
    return found


def offline_reason() -> str:
    """Why nothing is downloaded (when :func:`downloads_disabled`)."""
    return f"download disabled by {OFFLINE_ENV}={os.environ.get(OFFLINE_ENV, '')}"


def not_found_message(key: str, missing: str, dirs: Sequence[Path], failures: Sequence[str],
                      *, provide: str) -> str:
    """Dataset ``key``'s files (``missing``) are nowhere: the folders searched, the downloads
    tried and how to ``provide`` them, then point ``data.dir`` (or the environment) there."""
    looked = "\n".join(f"  {d}" for d in dirs)
    tried = "\n".join(f"  {f}" for f in failures)
    return (
        f"{key}: cannot find {missing}. Looked in:\n{looked}\nDownload:\n{tried}\n"
        f"To provide the data, {provide}, then set data.dir=<dir> in the config or "
        f"{DATA_ENV}=<dir> in the environment."
    )
