"""People's corrections from the web page: a SQLite store, exported in MNIST's IDX format.

Each row holds the 28x28 image the model saw (uint8, white ink on black, as MNIST), the
digit the model predicted for it and the digit the person says it is. Exported as a pair
of IDX files, the rows can join the training images (`mnist-digits train --extra-idx DIR`).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import platformdirs

from . import idx
from .data import Mnist, Split, find_file
from .errors import MnistDigitsError
from .files import sha256_hex, write_atomic

IMAGE_SIDE = 28  # pixels; MNIST's images are 28x28
IMAGE_BYTES = IMAGE_SIDE * IMAGE_SIDE
IMAGES_FILE = "feedback-images-idx3-ubyte"
LABELS_FILE = "feedback-labels-idx1-ubyte"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS feedback (
    id        INTEGER PRIMARY KEY,
    created   TEXT    NOT NULL,  -- UTC, ISO 8601
    image     BLOB    NOT NULL CHECK (length(image) = {IMAGE_BYTES}),  -- 28x28 uint8, row-major
    predicted INTEGER CHECK (predicted BETWEEN 0 AND 9),  -- the model's answer; NULL if unknown
    label     INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),  -- the digit it really is
    model     TEXT    NOT NULL  -- the model that made the prediction
)
"""


class FeedbackError(MnistDigitsError):
    """The feedback database cannot be opened, written or read."""


def default_db_path() -> Path:
    """Where feedback is kept unless told otherwise: the platform's user data directory."""
    return Path(platformdirs.user_data_dir("mnist-digits")) / "feedback.sqlite3"


@dataclass(frozen=True)
class ExportResult:
    images: Path  # the IDX images file written
    labels: Path  # the IDX labels file written
    count: int  # samples in them


class FeedbackStore:
    """A SQLite file of corrected samples. Each call opens its own connection, so threads may share it."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # `closing` closes the connection; `with connection` commits or rolls back.
            with closing(sqlite3.connect(self.path, timeout=10)) as connection, connection:
                connection.execute(SCHEMA)
                yield connection
        except (sqlite3.Error, OSError) as e:
            raise FeedbackError(
                f"{self.path}: cannot use the feedback database ({e}).",
                advice="Check that the directory is writable, or choose {feedback_db}.",
            ) from e

    def add(self, image: np.ndarray, label: int, predicted: int | None, model: str) -> int:
        """Store one corrected sample; returns its id. `image` is 28x28 uint8, white on black."""
        if image.dtype != np.uint8 or image.shape != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(f"feedback images are uint8 28x28, not {image.dtype} {image.shape}")
        if not 0 <= label <= 9 or (predicted is not None and not 0 <= predicted <= 9):
            raise ValueError(f"digits are 0-9; got label {label}, predicted {predicted}")
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self._connect() as connection:
            cursor = connection.execute(
                "INSERT INTO feedback (created, image, predicted, label, model) VALUES (?, ?, ?, ?, ?)",
                (created, np.ascontiguousarray(image).tobytes(), predicted, label, model),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def count(self) -> int:
        with self._connect() as connection:
            return int(connection.execute("SELECT count(*) FROM feedback").fetchone()[0])

    def split(self) -> Split:
        """Every stored sample, oldest first, as MNIST-shaped arrays."""
        with self._connect() as connection:
            rows = connection.execute("SELECT image, label FROM feedback ORDER BY id").fetchall()
        images = np.frombuffer(b"".join(row[0] for row in rows), dtype=np.uint8)
        labels = np.array([row[1] for row in rows], dtype=np.uint8)
        return Split(images.reshape(len(rows), IMAGE_SIDE, IMAGE_SIDE), labels)

    def export_idx(self, directory: Path) -> ExportResult:
        """Write every sample as `feedback-images-idx3-ubyte` and `feedback-labels-idx1-ubyte`."""
        if not self.path.is_file():
            raise FeedbackError(
                f"{self.path}: no feedback database here yet.",
                advice="Start `mnist-digits serve` and correct some answers on the page, or choose "
                "{feedback_db}.",
            )
        samples = self.split()
        directory = Path(directory)
        images, labels = directory / IMAGES_FILE, directory / LABELS_FILE
        write_atomic(images, idx.encode_idx(samples.images))
        write_atomic(labels, idx.encode_idx(samples.labels))
        return ExportResult(images, labels, len(samples.labels))


def read_idx(directory: Path) -> Split:
    """The samples of an `export_idx` directory (files raw or .gz), checked like MNIST's."""
    directory = Path(directory)
    arrays = []
    for name, magic in ((IMAGES_FILE, idx.IMAGES_MAGIC), (LABELS_FILE, idx.LABELS_MAGIC)):
        path = find_file(directory, name)
        if path is None:
            raise FeedbackError(
                f"{directory}: {name} is missing.",
                advice="Write the pair with {feedback_export}.",
            )
        arrays.append(idx.parse_idx(idx.read_bytes(path), magic, str(path)))
    images, labels = arrays
    if images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise FeedbackError(f"{directory / IMAGES_FILE}: images are {images.shape[1:]}, not 28x28.")
    if len(images) != len(labels):
        raise FeedbackError(
            f"{directory}: {len(images):,} images but {len(labels):,} labels; "
            "the files do not belong together."
        )
    if (labels > 9).any():
        raise FeedbackError(f"{directory / LABELS_FILE}: holds labels that are not digits 0-9.")
    return Split(images, labels)


def with_feedback_samples(mnist: Mnist, directory: Path) -> Mnist:
    """`mnist` with the samples of an `export_idx` directory added to its training split."""
    extra = read_idx(directory)
    train = Split(
        np.concatenate([mnist.train.images, extra.images]), np.concatenate([mnist.train.labels, extra.labels])
    )
    # Recorded in the model's metadata beside MNIST's checksums, so the model says what it saw.
    sha256 = {
        **mnist.sha256,
        "extra-images": sha256_hex(idx.encode_idx(extra.images)),
        "extra-labels": sha256_hex(idx.encode_idx(extra.labels)),
    }
    return replace(mnist, train=train, sha256=sha256)
