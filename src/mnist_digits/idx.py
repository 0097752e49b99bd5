"""Reading and writing IDX files, MNIST's storage format, with every field checked."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)


class IdxError(DataError):
    """An IDX file is unreadable or not what MNIST's format says it should be."""


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (by its magic bytes, not its name)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise IdxError(f"{path}: cannot read the file ({e.strerror or e}).") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise IdxError(
            f"{path}: the gzip stream is corrupt or truncated ({e}). "
            "Delete the file and fetch it again with `mnist-digits data --fetch`."
        ) from e


def parse_idx(content: bytes, expected_magic: int, name: str) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic number, dimensions and length."""
    if len(content) < 8:
        raise IdxError(f"{name}: only {len(content)} bytes; an IDX file has at least an 8-byte header.")
    (magic,) = struct.unpack(">i", content[:4])
    if magic != expected_magic:
        kind = {IMAGES_MAGIC: "an images", LABELS_MAGIC: "a labels"}[expected_magic]
        raise IdxError(
            f"{name}: magic number {magic}, expected {expected_magic} for {kind} file. "
            "Is this the right file (images vs labels), and is it MNIST's IDX format?"
        )
    ndim = expected_magic - 2048
    header_len = 4 + 4 * ndim
    if len(content) < header_len:
        raise IdxError(f"{name}: the header is cut short ({len(content)} of {header_len} bytes).")
    dims = struct.unpack(f">{ndim}i", content[4:header_len])
    if any(d < 0 for d in dims):
        raise IdxError(f"{name}: negative dimension in header {dims}.")
    expected_len = header_len + int(np.prod(dims, dtype=np.int64))
    if len(content) != expected_len:
        problem = "truncated" if len(content) < expected_len else "has trailing bytes"
        raise IdxError(
            f"{name}: {problem}: the header promises {dims} = {expected_len:,} bytes, "
            f"the file holds {len(content):,}. Fetch the file again."
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_len).reshape(dims)


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array of 1 (labels) or 3 (images) dimensions."""
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(f"IDX holds uint8 arrays of 1 or 3 dimensions, not {array.dtype} {array.shape}")
    header = struct.pack(f">i{array.ndim}i", 2048 + array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()
