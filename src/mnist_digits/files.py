"""Writing files safely: a temporary file renamed into place, a directory locked against a
second writer, and errors that say why."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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


LOCK_NAME = ".lock"  # the lock file `directory_lock` keeps in a directory (left there, empty)
_LOCK_BYTE = 1 << 20  # Windows locks a byte range: one far past the holder's note, which stays readable
_BUSY = {errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK}  # flock's and msvcrt's "held"
_held: dict[Path, int] = {}  # the directories this process holds locked, and by which thread
_held_guard = threading.Lock()


class DirectoryBusy(MnistDigitsError):
    """Another process (or another thread of this one) holds the directory's lock."""


if sys.platform == "win32":
    import msvcrt

    def _try_lock(fd: int) -> None:
        os.lseek(fd, _LOCK_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, _LOCK_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    # flock, not fcntl's record locks: those do not exclude a second open file in the same
    # process, and closing any descriptor of the file would drop them.
    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold `directory`'s lock (created if needed) for the block; DirectoryBusy at once if another
    process holds it, naming that process.

    The lock is the operating system's (flock on Linux and macOS, msvcrt.locking on Windows) on
    an open file: it goes when the block ends and when the process dies, however it dies, so a
    crash never leaves the directory locked. Taking it again in the same thread nests.
    """
    directory = Path(directory)
    key = directory.resolve()
    me = threading.get_ident()
    with _held_guard:
        holder = _held.get(key)
    if holder is not None and holder != me:
        raise DirectoryBusy(
            f"{directory} is in use by another thread of this process (pid {os.getpid()}); "
            "give each run its own directory."
        )
    if holder is not None:  # taken again inside its own block: the outer block releases it
        yield
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise MnistDigitsError(_explain_write_error(directory, e)) from e
    try:
        try:
            _try_lock(fd)
        except OSError as e:
            if e.errno not in _BUSY:
                raise MnistDigitsError(
                    f"{directory / LOCK_NAME}: cannot lock it ({e.strerror or e}); this file system "
                    "may not support locks. Choose a directory on a local disk."
                ) from e
            raise DirectoryBusy(
                f"{directory} is in use by another process ({_read_note(fd)}). Wait for it to "
                "finish or stop it, or choose another directory."
            ) from None
        with _held_guard:
            _held[key] = me
        try:
            _write_note(fd)
            yield
        finally:
            with _held_guard:
                del _held[key]
            with suppress(OSError):
                os.ftruncate(fd, 0)  # no stale note once released
            _unlock(fd)
    finally:
        os.close(fd)


def _write_note(fd: int) -> None:
    """Who holds the lock, for the error a second process shows."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("python")
    name = f"python -m {program.parent.name}" if program.name == "__main__.py" else program.name
    command = " ".join([name, *sys.argv[1:]])[:160]
    since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    note = f"pid {os.getpid()} on {socket.gethostname()}, since {since}: {command}"
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, note.encode(errors="replace"))
    except OSError:
        pass  # a full disk: the lock holds all the same, and the work will say what is wrong


def _read_note(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        note = os.read(fd, 1024).decode(errors="replace").strip()
    except OSError:
        note = ""
    return note or "one that has just taken the lock and not yet said which it is"


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
