import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from mnist_digits import data, idx
from mnist_digits.errors import DataError

IMAGES = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
LABELS = np.array([7, 2, 1], dtype=np.uint8)


def read(path: Path, magic: int) -> np.ndarray:
    return idx.parse_idx(idx.read_bytes(path), magic, str(path))


# --- good files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_round_trip_through_a_file(tmp_path: Path, compress: bool) -> None:
    for array, magic, name in ((IMAGES, idx.IMAGES_MAGIC, "images"), (LABELS, idx.LABELS_MAGIC, "labels")):
        content = idx.encode_idx(array)
        path = tmp_path / name
        path.write_bytes(gzip.compress(content) if compress else content)
        parsed = read(path, magic)
        assert parsed.dtype == np.uint8
        np.testing.assert_array_equal(parsed, array)


def test_header_is_big_endian_magic_then_dimensions() -> None:
    content = idx.encode_idx(IMAGES)
    assert content[:16] == bytes.fromhex("00000803 00000003 0000001c 0000001c")
    assert len(content) == 16 + IMAGES.size
    assert idx.encode_idx(LABELS) == bytes.fromhex("00000801 00000003") + LABELS.tobytes()


def test_gzip_is_recognised_by_content_not_by_name(tmp_path: Path) -> None:
    content = idx.encode_idx(LABELS)
    gzipped_without_suffix = tmp_path / "labels"
    gzipped_without_suffix.write_bytes(gzip.compress(content))
    raw_with_suffix = tmp_path / "labels.gz"
    raw_with_suffix.write_bytes(content)
    assert idx.read_bytes(gzipped_without_suffix) == content
    assert idx.read_bytes(raw_with_suffix) == content


def test_read_file_finds_the_raw_or_the_gz_file(tmp_path: Path) -> None:
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx.encode_idx(LABELS)))
    labels, digest, path = data.read_file(tmp_path, "t10k-labels-idx1-ubyte", verify=False)
    np.testing.assert_array_equal(labels, LABELS)
    assert path.name == "t10k-labels-idx1-ubyte.gz"
    assert len(digest) == 64


@pytest.mark.parametrize(
    "array", [IMAGES.astype(np.int32), IMAGES[0], IMAGES[None]], ids=["int32", "2d", "4d"]
)
def test_encode_refuses_what_idx_here_cannot_hold(array: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8 arrays of 1 or 3 dimensions"):
        idx.encode_idx(array)


# --- bad files: an IdxError (a DataError) that names the file -----------------------------------


def test_idx_error_is_a_data_error() -> None:
    assert issubclass(idx.IdxError, DataError)


def test_images_and_labels_swapped(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx.encode_idx(LABELS))  # a labels file under the images name
    with pytest.raises(idx.IdxError) as caught:
        data.read_file(tmp_path, "train-images-idx3-ubyte", verify=False)
    message = str(caught.value)
    assert str(path) in message
    assert "magic number 2049, expected 2051" in message
    assert "images vs labels" in message

    with pytest.raises(idx.IdxError, match="magic number 2051, expected 2049 for a labels file"):
        idx.parse_idx(idx.encode_idx(IMAGES), idx.LABELS_MAGIC, "labels")


def test_not_an_idx_file_at_all(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(idx.IdxError, match="magic number") as caught:
        data.read_file(tmp_path, "t10k-labels-idx1-ubyte", verify=False)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_truncated_file(tmp_path: Path, compress: bool) -> None:
    content = idx.encode_idx(IMAGES)[:-1]
    path = tmp_path / "images"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(idx.IdxError) as caught:
        read(path, idx.IMAGES_MAGIC)
    message = str(caught.value)
    assert str(path) in message
    assert "truncated" in message
    assert f"{16 + IMAGES.size:,} bytes" in message
    assert f"holds {16 + IMAGES.size - 1:,}" in message


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx.encode_idx(LABELS) + b"\x00")
    with pytest.raises(idx.IdxError, match="has trailing bytes") as caught:
        read(path, idx.LABELS_MAGIC)
    assert str(path) in str(caught.value)


def test_header_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(struct.pack(">ii", idx.IMAGES_MAGIC, 3))  # magic and count, no rows or columns
    with pytest.raises(idx.IdxError, match=r"header is cut short \(8 of 16 bytes\)") as caught:
        read(path, idx.IMAGES_MAGIC)
    assert str(path) in str(caught.value)


def test_shorter_than_any_header(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(b"\x00\x00\x08")
    with pytest.raises(idx.IdxError, match="only 3 bytes") as caught:
        read(path, idx.LABELS_MAGIC)
    assert str(path) in str(caught.value)


def test_negative_dimension() -> None:
    with pytest.raises(idx.IdxError, match="negative dimension"):
        idx.parse_idx(struct.pack(">ii", idx.LABELS_MAGIC, -1), idx.LABELS_MAGIC, "labels")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(b"")
    with pytest.raises(idx.IdxError, match="only 0 bytes"):
        read(path, idx.LABELS_MAGIC)


def corrupt_gzip(content: bytes) -> bytes:
    compressed = bytearray(gzip.compress(content))
    middle = len(compressed) // 2
    compressed[middle : middle + 8] = bytes(b ^ 0xFF for b in compressed[middle : middle + 8])
    return bytes(compressed)


@pytest.mark.parametrize(
    "damage",
    [corrupt_gzip, lambda content: gzip.compress(content)[:-30]],
    ids=["bytes-flipped", "cut-short"],
)
def test_corrupt_gzip_stream(tmp_path: Path, damage) -> None:
    path = tmp_path / "images.gz"
    path.write_bytes(damage(idx.encode_idx(IMAGES)))
    with pytest.raises(idx.IdxError) as caught:
        idx.read_bytes(path)
    message = str(caught.value)
    assert str(path) in message
    assert "gzip stream is corrupt or truncated" in message
    assert "data.locate(fetch=True)" in message
    assert "mnist-digits data --fetch" in caught.value.explain(fetch="`mnist-digits data --fetch`")


def test_no_more_is_read_than_the_header_promises(tmp_path: Path) -> None:
    content = idx.encode_idx(LABELS)
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(content + bytes(10_000)))
    with pytest.raises(idx.IdxError, match="more than the 11 bytes its header promises"):
        idx.read_bytes(path)
    path.write_bytes(gzip.compress(content))
    assert idx.read_bytes(path, max_bytes=11) == content
    with pytest.raises(idx.IdxError, match="promises \\(3,\\) = 11 bytes, over the limit of 10"):
        idx.read_bytes(path, max_bytes=10)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(idx.IdxError, match="cannot read the file") as caught:
        idx.read_bytes(path)
    assert str(path) in str(caught.value)


# --- well-formed IDX that is not MNIST ----------------------------------------------------------


def test_images_that_are_not_28_by_28(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx.encode_idx(np.zeros((2, 32, 32), dtype=np.uint8)))
    with pytest.raises(DataError, match=r"images are \(32, 32\), MNIST's are \(28, 28\)") as caught:
        data.read_file(tmp_path, "t10k-images-idx3-ubyte", verify=False)
    assert str(path) in str(caught.value)


def test_labels_above_nine_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx.encode_idx(np.array([3, 9, 10, 255], dtype=np.uint8))))
    with pytest.raises(DataError, match="label 10 at index 2 is not a digit 0-9") as caught:
        data.read_file(tmp_path, "train-labels-idx1-ubyte", verify=False)
    assert str(path) in str(caught.value)


def test_read_file_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte \(or t10k-labels-idx1-ubyte.gz\) is missing"
    ):
        data.read_file(tmp_path, "t10k-labels-idx1-ubyte", verify=False)
