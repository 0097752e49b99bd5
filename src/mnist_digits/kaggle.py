"""Kaggle's Digit Recognizer files: train.csv and test.csv in, a submission CSV out.

train.csv has a header `label,pixel0,...,pixel783` and one row per image: the digit, then its
784 pixels (0-255, row by row, white on black, as MNIST). test.csv is the same without `label`.
A submission is `ImageId,Label` with ImageId counting from 1 in test.csv's order.
Kaggle's 70,000 digits are MNIST's training and test images together, so a model trained on
train.csv has seen much of MNIST's test set: measure it on its own held-out validation split.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .data import Mnist, Split
from .errors import InputError
from .files import sha256_hex, write_atomic
from .model import IMAGE_SIZE

if TYPE_CHECKING:
    from .predict import Recognizer

PIXELS = IMAGE_SIZE * IMAGE_SIZE  # 784 columns of pixels per row
PIXEL_MAX = 255  # a CSV pixel's full ink; the model's inputs run from 0 to 1
PIXEL_HEADER = [f"pixel{i}" for i in range(PIXELS)]


def read_csv(path: Path | str, labelled: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Images (N, 28, 28) uint8, labels (N,) uint8 or None, and the file's sha256; InputError if bad."""
    path = Path(path)
    what = "train.csv (label + 784 pixel columns)" if labelled else "test.csv (784 pixel columns)"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file.") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror or e}).") from e
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark from spreadsheet exports
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file; expected Kaggle's {what}.") from None
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise InputError(f"{path}: is empty, it has no rows of pixels; expected Kaggle's {what}.")
    columns = PIXELS + (1 if labelled else 0)
    expected_header = (["label"] if labelled else []) + PIXEL_HEADER
    header = [c.strip().strip('"') for c in lines[0].split(",")] if lines else []
    has_header = bool(header) and not header[0].lstrip("-").isdigit()
    if has_header and header != expected_header:
        raise InputError(
            f"{path}: line 1 has {len(header)} columns starting {','.join(header[:3])!r}; "
            f"expected Kaggle's {what}: {','.join(expected_header[:3])},..."
        )
    body = lines[1:] if has_header else lines
    if not any(line.strip() for line in body):
        raise InputError(f"{path}: has no rows of pixels; expected Kaggle's {what}.")
    try:
        values = np.loadtxt(io.StringIO("\n".join(body)), delimiter=",", dtype=np.int32, ndmin=2)
    except (ValueError, OverflowError):
        raise InputError(f"{path}: {_first_bad_line(body, columns, 2 if has_header else 1)}") from None
    if values.shape[1] != columns:
        raise InputError(
            f"{path}: rows have {values.shape[1]} columns, expected {columns} for Kaggle's {what}."
        )
    pixels = values[:, 1:] if labelled else values
    if pixels.min() < 0 or pixels.max() > 255:
        row = int(np.flatnonzero((pixels < 0).any(1) | (pixels > 255).any(1))[0])
        raise InputError(f"{path}: data row {row + 1} has a pixel outside 0-255.")
    labels = None
    if labelled:
        if values[:, 0].min() < 0 or values[:, 0].max() > 9:
            row = int(np.flatnonzero((values[:, 0] < 0) | (values[:, 0] > 9))[0])
            raise InputError(f"{path}: data row {row + 1} has label {values[row, 0]}, not a digit 0-9.")
        labels = values[:, 0].astype(np.uint8)
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, labels, sha256_hex(raw)


def _first_bad_line(body: Sequence[str], columns: int, first_number: int) -> str:
    """Where and how a CSV body breaks, found line by line (only called once parsing failed)."""
    for number, line in enumerate(body, start=first_number):
        if not line.strip():
            continue
        cells = line.split(",")
        if len(cells) != columns:
            return f"line {number} has {len(cells)} columns, expected {columns}."
        for cell in cells:
            if not cell.strip().lstrip("-").isdigit():
                return f"line {number} has {cell.strip()[:20]!r} where a whole number belongs."
    return "it is not a CSV of whole numbers."


def read_train_csv(path: Path | str) -> Mnist:
    """train.csv as an Mnist whose training split is all its rows and whose test split is empty.

    Training holds out its validation split from these rows, as it does from MNIST's 60,000.
    """
    images, labels, digest = read_csv(path, labelled=True)
    assert labels is not None
    empty = Split(np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8), np.zeros(0, np.uint8))
    return Mnist(Split(images, labels), empty, Path(path).resolve().parent, {Path(path).name: digest})


def read_test_csv(path: Path | str) -> np.ndarray:
    """test.csv's images, (N, 28, 28) uint8, in the file's order."""
    images, _, _ = read_csv(path, labelled=False)
    return images


def submission_csv(labels: Sequence[int] | np.ndarray) -> bytes:
    """`ImageId,Label` rows, ImageId from 1, as the competition expects."""
    rows = "".join(f"{i},{int(label)}\n" for i, label in enumerate(labels, start=1))
    return ("ImageId,Label\n" + rows).encode()


def write_submission(path: Path | str, labels: Sequence[int] | np.ndarray) -> None:
    """Write the submission atomically."""
    write_atomic(Path(path), submission_csv(labels))


@dataclass(frozen=True)
class Submission:
    path: Path  # the submission CSV written
    count: int  # predictions in it, one per row of test.csv
    uncertain: int  # of them, answers less probable than the recognizer's threshold


def predict_submission(recognizer: Recognizer, test_csv: Path | str, output: Path | str) -> Submission:
    """Predict every row of test.csv and write the submission to `output`; every row gets a digit.

    The rows are MNIST's format already (centred 28x28, white on black): no preprocessing.
    """
    images = read_test_csv(test_csv)
    # Not predict_pixels: it answers a blank row with no digit, and Kaggle scores every row.
    probs = recognizer.probabilities(images.astype(np.float32) / PIXEL_MAX)
    write_submission(output, probs.argmax(1))
    uncertain = int((probs.max(1) < recognizer.threshold).sum())
    return Submission(Path(output), len(probs), uncertain)
