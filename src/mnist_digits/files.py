"""Writing files safely: a temporary file renamed into place, and errors that say why."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import MnistDigitsError


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """Yield a file open on `path.tmp`; on success it replaces `path`, on failure it vanishes.

    A crash, a full disk or Ctrl-C therefore never leaves a partial file where a good one was.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MnistDigitsError(_explain_write_error(path, e)) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def ensure_writable_dir(directory: Path) -> Path:
    """Create `directory` if needed and prove it takes files, before any long work starts."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistDigitsError(_explain_write_error(directory, e)) from e
    write_atomic(directory / ".write-test", b"ok")
    (directory / ".write-test").unlink()
    return directory


def write_atomic(path: Path, content: bytes) -> None:
    """Write `content` to `path` atomically (see `atomic_writer`)."""
    with atomic_writer(path) as f:
        f.write(content)


def _explain_write_error(path: Path, e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return f"{path}: no space left on the device. Free some space and run again; nothing was overwritten."
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: not allowed to write here ({e.strerror}). Choose a writable directory."
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{path}: a file stands where a folder is needed ({e.strerror}). Choose another path."
    return (
        f"{path}: cannot write here ({e.strerror or e}). Check the path and its permissions, and run again."
    )


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
