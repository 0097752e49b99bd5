"""What reading many inputs at once is made of: the pool's size and tasks, and the network's batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .threads import usable_cpus

if TYPE_CHECKING:
    from .predict import ImageInput

BATCH_SIZE = 512  # images per forward pass
CHUNK_SIZE = 32  # inputs per task given to a pool's worker...
CHUNK_BYTES = 32_000_000  # ...and at most this much of in-memory images (copied to the worker)


def default_workers() -> int:
    """The pool's processes when `workers` is None: one per core this process may run on."""
    return len(usable_cpus())


class Batches:
    """Model inputs run through the network BATCH_SIZE at a time, in the order given; with
    `beside_pool`, in a thread, so that the pool's workers are kept busy meanwhile.

    Either way the batches are the same, so are the probabilities (N, 10), ready on leaving `with`.
    """

    def __init__(self, probabilities: Callable[[np.ndarray], np.ndarray], beside_pool: bool) -> None:
        self._run, self._beside_pool = probabilities, beside_pool
        self._waiting: list[np.ndarray] = []
        self._done: list[Future[np.ndarray] | np.ndarray] = []
        self._thread: ThreadPoolExecutor | None = None
        self.probabilities = np.zeros((0, 10), np.float32)

    def __enter__(self) -> Batches:
        return self

    def add(self, image: np.ndarray) -> None:
        self._waiting.append(image)
        if len(self._waiting) == BATCH_SIZE:
            self._flush()

    def _flush(self) -> None:
        batch, self._waiting = np.stack(self._waiting), []
        if not self._beside_pool:
            self._done.append(self._run(batch))
            return
        # Started after the pool's first task, so that no thread is running when workers are forked.
        self._thread = self._thread or ThreadPoolExecutor(1, thread_name_prefix="mnist-digits-network")
        self._done.append(self._thread.submit(self._run, batch))

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is None:
                if self._waiting:
                    self._flush()
                parts = [part if isinstance(part, np.ndarray) else part.result() for part in self._done]
                if parts:
                    self.probabilities = np.concatenate(parts)
        finally:
            if self._thread is not None:
                self._thread.shutdown(cancel_futures=True)


def tasks(named: list[tuple[str, ImageInput]]) -> Iterator[list[tuple[str, ImageInput]]]:
    """The pool's tasks: CHUNK_SIZE inputs each, fewer where images in memory reach CHUNK_BYTES."""
    chunk: list[tuple[str, ImageInput]] = []
    size = 0
    for name, item in named:
        if isinstance(item, np.ndarray | bytes):
            size += len(item) if isinstance(item, bytes) else item.nbytes
        elif isinstance(item, Image.Image):
            size += item.width * item.height * len(item.getbands())
        chunk.append((name, item))
        if len(chunk) == CHUNK_SIZE or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk
