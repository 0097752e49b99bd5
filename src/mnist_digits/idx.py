"""Reading and writing IDX files, MNIST's storage format, with every field checked."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
MAX_BYTES = 256 * 2**20  # largest IDX file read: 5 times MNIST's 47 MB of training images
CHUNK = 2**20  # bytes read or decompressed at a time


class IdxError(DataError):
    """An IDX file is unreadable or not what MNIST's format says it should be."""


def read_bytes(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's content, decompressed when it is gzip (by its magic bytes, not its name).

    No more is read or decompressed than the IDX header promises (and never over `max_bytes`):
    a gzip bomb is refused as soon as its output outgrows its header, before it fills memory.
    A content that is not IDX of unsigned bytes comes back as its first bytes, for parse_idx to name.
    """
    try:
        with open(path, "rb") as file:
            if file.read(2) != b"\x1f\x8b":
                file.seek(0)
                return _read_promised(file, path, max_bytes, compressed=False)
            file.seek(0)
            with gzip.GzipFile(fileobj=file) as stream:
                return _read_promised(stream, path, max_bytes, compressed=True)  # type: ignore[arg-type]
    except IdxError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise IdxError(
            f"{path}: the gzip stream is corrupt or truncated ({e}).",
            advice="Delete the file and fetch it again with {fetch}.",
        ) from e
    except OSError as e:
        raise IdxError(f"{path}: cannot read the file ({e.strerror or e}).") from e


def _read_promised(stream: BinaryIO, path: Path, max_bytes: int, compressed: bool) -> bytes:
    head = stream.read(4)
    ndim = head[3] if len(head) == 4 and head[:3] == b"\x00\x00\x08" else 0  # 0x08: unsigned bytes
    if not 1 <= ndim <= 3:
        return head + stream.read(4)  # enough for parse_idx to say what the magic number is
    head += stream.read(4 * ndim)
    if len(head) < 4 + 4 * ndim:
        return head  # parse_idx says the header is cut short
    dims = struct.unpack(f">{ndim}i", head[4:])
    if any(d < 0 for d in dims):
        return head  # parse_idx says which dimension is negative
    promised = len(head) + math.prod(dims)  # Python integers: 2**30 x 2**30 x 16 does not wrap to 0
    if promised > max_bytes:
        raise IdxError(
            f"{path}: the header promises {dims} = {promised:,} bytes, over the limit of {max_bytes:,} "
            "(MNIST's largest file holds 47,040,016). Is this MNIST's IDX format?"
        )
    chunks, size = [head], len(head)
    while size <= promised:
        chunk = stream.read(min(CHUNK, promised + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > promised and compressed:
        raise IdxError(
            f"{path}: the gzip stream holds more than the {promised:,} bytes its header promises "
            f"{dims}; it is damaged, or a decompression bomb. Delete it and fetch it again."
        )
    if size > promised:
        held = f"{path.stat().st_size:,}"
        raise IdxError(
            f"{path}: has trailing bytes: the header promises {dims} = {promised:,} bytes, "
            f"the file holds {held}. Fetch the file again."
        )
    return b"".join(chunks)


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
    expected_len = header_len + math.prod(dims)  # Python integers: a product that wraps is no check
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
