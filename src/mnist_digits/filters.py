"""The image filters preprocessing is made of: exact rank (percentile) filters that are fast where
one value covers much of the image, a Gaussian blur, and an estimate of pixel noise."""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage as ndi

MIN_MODE_SHARE = 0.25  # rank_filters: a value covering this share of the image settles windows unsorted
MAX_WINDOW_VALUES = 4_000_000  # rank_filters copies at most this many windows' values out, else scipy


def rank_of(percentile: float, size: int) -> int:
    """The rank (0 = smallest) that scipy's percentile_filter takes in a size x size window."""
    area = size * size
    return area - 1 if percentile == 100 else int(float(area) * percentile / 100.0)


def percentile_filter(image: np.ndarray, percentile: float, size: int) -> np.ndarray:
    """scipy.ndimage.percentile_filter(image, percentile, size, mode="nearest"), for an odd `size`."""
    return rank_filters(image, (rank_of(percentile, size),), size)[0]


def rank_filters(
    image: np.ndarray, ranks: tuple[int, ...], size: int, mode: str = "nearest"
) -> list[np.ndarray]:
    """scipy.ndimage.rank_filter(image, rank, size, mode=mode) for each rank, for an odd `size` and
    mode "nearest" (the edge repeated) or "reflect" (the image mirrored at its edge): the same
    values, in a fraction of the time. scipy sorts each window on its own; here numpy sorts them
    all at once, and where one value (a drawing's paper) fills a window, it is the answer.
    """
    area = size * size
    if image.size * area > MAX_WINDOW_VALUES:  # a fine lighting grid: too many values to copy out
        return [ndi.rank_filter(image, rank, size=size, mode=mode) for rank in ranks]
    padded = _pad(image, size // 2, mode)
    windows = sliding_window_view(padded, (size, size))
    values, counts = np.unique(image, return_counts=True)
    if counts.max() < MIN_MODE_SHARE * image.size:
        # No value fills the windows, the one case where numpy's partition is slow (its sort is
        # not): the windows partitioned for one rank, sorted once for several.
        flat = windows.reshape(-1, area)
        if len(ranks) == 1:
            return [np.partition(flat, ranks[0], axis=1)[:, ranks[0]].reshape(image.shape)]
        ordered = np.sort(flat, axis=1)
        return [ordered[:, rank].reshape(image.shape) for rank in ranks]
    mode = values[counts.argmax()]
    below, equal = _window_sums(padded < mode, size), _window_sums(padded == mode, size)
    # Sorted, a window holds `below` values under the mode, then `equal` copies of it: where the
    # rank falls among the copies, the mode is the answer, and only the other windows are sorted.
    open_ = np.zeros(image.shape, dtype=bool)
    for rank in ranks:
        open_ |= (rank < below) | (rank >= below + equal)
    ordered = np.sort(windows[open_].reshape(-1, area), axis=1)
    filtered = []
    for rank in ranks:
        answer = np.full(image.shape, mode, dtype=image.dtype)
        answer[open_] = ordered[:, rank]
        filtered.append(answer)
    return filtered


def _pad(image: np.ndarray, pad: int, mode: str) -> np.ndarray:
    """np.pad(image, pad) with scipy's mode "nearest" (numpy's "edge") or "reflect" (numpy's
    "symmetric"), without np.pad's overhead."""
    if mode not in ("nearest", "reflect"):
        raise ValueError(f"rank_filters pads by 'nearest' or 'reflect', not {mode!r}")
    rows, cols = (_padded_indices(length, pad, mode) for length in image.shape)
    return image[np.ix_(rows, cols)]


def _padded_indices(length: int, pad: int, mode: str) -> np.ndarray:
    indices = np.arange(-pad, length + pad)
    if mode == "nearest":
        return np.clip(indices, 0, length - 1)
    # Mirrored about the edge, the edge pixel itself repeated (-1 -> 0, length -> length - 1),
    # and again for a pad wider than the image: the pattern repeats every 2 * length.
    folded = indices % (2 * length)
    return np.where(folded < length, folded, 2 * length - 1 - folded)


def _window_sums(inside: np.ndarray, size: int) -> np.ndarray:
    """How many pixels of each size x size window of `inside` are True: a summed-area table."""
    table = np.zeros((inside.shape[0] + 1, inside.shape[1] + 1), dtype=np.int32)
    table[1:, 1:] = inside.cumsum(0, dtype=np.int32).cumsum(1)
    return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]


def blur(image: np.ndarray, sigma: float, mode: str, axes: tuple[int, ...] = (0, 1)) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(image, sigma, mode=mode, axes=axes): the same passes with the same
    kernel, which is made once per sigma (on a small image, making it took half of the time)."""
    weights = _gaussian_weights(sigma)
    blurred = ndi.correlate1d(image, weights, axes[0], mode=mode)
    for axis in axes[1:]:
        ndi.correlate1d(blurred, weights, axis, output=blurred, mode=mode)
    return blurred


@functools.lru_cache(maxsize=64)
def _gaussian_weights(sigma: float) -> np.ndarray:
    """gaussian_filter's kernel for `sigma` (4 sigma each side), as its response to a single pixel."""
    radius = int(4.0 * sigma + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    return ndi.gaussian_filter1d(impulse, sigma, mode="constant")


def pixel_noise(gray: np.ndarray) -> float:
    """Standard deviation of pixel noise, from differences of neighbours (blind to smooth shapes).

    Neighbouring pixels of paper or of a stroke differ by noise alone; edges are too few to move
    the median. The difference of two noisy pixels has sqrt(2) times the noise.
    """
    if gray.shape[1] < 2:
        return 0.0
    rows = gray[:: max(1, gray.shape[0] // 128)]  # 128 rows are plenty, and 4x faster at 512
    return noise_std(np.diff(rows, axis=1)) / math.sqrt(2)


def noise_std(values: np.ndarray) -> float:
    """Standard deviation of the bulk of `values` (median absolute deviation), blind to the ink's tail."""
    if values.size == 0:
        return 0.0
    if np.count_nonzero(values) < values.size / 2:
        return 0.0  # mostly zeros (a clean image's neighbours): both medians are 0
    return 1.4826 * float(median(np.abs(values - median(values))))


def median(values: np.ndarray) -> np.floating:
    """np.median of finite floating-point values, the same number without its overhead (a third of
    the time on small images): the middle value, or the mean of the middle two in their type."""
    flat = values.ravel()
    middle = flat.size // 2
    if flat.size % 2:
        return np.partition(flat, middle)[middle]
    low, high = np.partition(flat, (middle - 1, middle))[middle - 1 : middle + 1]
    return (low + high) / flat.dtype.type(2)


def gaussian_noise_gain(sigma: float) -> float:
    """How much a Gaussian blur of `sigma` px shrinks the standard deviation of white pixel noise."""
    return min(1.0, 1.0 / (2.0 * math.sqrt(math.pi) * sigma))
