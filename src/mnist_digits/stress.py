"""Stress sets: MNIST digits made to look like other people's, for validation.

People's digits are not MNIST's: thin pens and thick markers, thresholded ink, slant, small
scans that fill their frame. Each kind here turns (N, 28, 28) uint8 MNIST digits into images a
person might hold, the same for a seed on every machine, and `prepare` reads them like anyone's
image: through `predict`'s preprocessing. Build them from a model's held-out validation images
(`train.held_out`, `evaluate --split val`) to choose anything by them, never from the test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi

from .augment import binarize, change_stroke_width, shear
from .data import Split
from .errors import MnistDigitsError
from .preprocess import DEFAULT_CONFIG, PreprocessConfig, prepare_digit

SEED = 0  # the stress sets' seed: fixed, so that every model is measured on the same images
MARGIN = 6  # px of background around a 28x28 digit before it is changed: slant and ink never leave it
THIN_WIDTH = 1.2  # px; thin: strokes redrawn this wide at full ink, half MNIST's median (2.4 px): a fine pen
THIN_SCALE = 4  # thin strokes are cut at this many times the resolution, then averaged back down
BLOT_DEPTH = 2.0  # ink this many times deeper than the strokes' median is a blot: thin, it is an outline
THICK_PX = 3.0  # px of stroke width added at most: 2.4 becomes 5.4, a marker's
THICK_STEP = 0.5  # px; a digit whose loops the full width would change gets this much less, and again
MIN_LOOP = 2  # px; paper a digit encloses that is smaller than this is a speck of its scan, not a loop
THRESHOLDS = (0.3, 0.7)  # binarized: each digit's threshold uniform in this range (0-1 gray)
SHEAR = (0.25, 0.5)  # slanted: columns per row, uniform in this range (14-27 degrees), either way
FRAME = 16  # px; the frame-filling kind's side, as postal (USPS) and form scans
UCI_BITMAP = 32  # px; UCI's digits were 32x32 bitmaps...
UCI_BLOCK = 4  # ...stored as the count of inked pixels in each 4x4 block: 8x8 values, 0-16
UCI_MARGIN = 8  # px of background added around a UCI digit scaled back up to 32x32

KINDS = {
    "plain": "unchanged: the baseline, read through the same preprocessing as the others",
    "thin": f"strokes {THIN_WIDTH:g} px wide in full ink (a fine pen on an image too small to thicken)",
    "thick": f"strokes up to {THICK_PX:g} px wider, as far as the digit's loops allow (a marker)",
    "binarized": f"thresholded to black and white at a level from {THRESHOLDS[0]} to {THRESHOLDS[1]}",
    "slanted": f"sheared {SHEAR[0]}-{SHEAR[1]} columns per row, leaning either way",
    "16x16": f"the ink's box scaled to fill a {FRAME}x{FRAME} frame, no margin (postal and form scans)",
    "8x8": "UCI's format: a 32x32 bitmap counted in 4x4 blocks, scaled back up with a margin",
}


@dataclass(frozen=True)
class StressSet:
    """One kind of stress, read like anyone's images: the model's inputs and their labels."""

    kind: str  # a key of KINDS
    inputs: np.ndarray  # float32 (N, 28, 28), what the preprocessing made of each image
    found: np.ndarray  # bool (N,): whether the preprocessing found ink (False: an empty input)
    labels: np.ndarray  # int64 (N,)
    images: list[np.ndarray]  # uint8, white on black: what a person would hold, before the preprocessing


def stress_images(kind: str, images: np.ndarray, seed: int = SEED) -> list[np.ndarray]:
    """The images a person might hold for MNIST digits (N, 28, 28) uint8, white on black, as `kind`."""
    if kind not in KINDS:
        raise MnistDigitsError(f"unknown stress kind {kind!r}; choose one of {', '.join(KINDS)}.")
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise MnistDigitsError(
            f"stress sets are made from MNIST digits, (N, 28, 28) uint8; got {images.shape} {images.dtype}."
        )
    # One stream per kind: adding a kind, or asking for fewer, leaves the others' images as they were.
    rng = np.random.default_rng([seed, list(KINDS).index(kind)])
    n = len(images)
    if kind == "plain":
        return list(images)
    if kind == "thin":
        return [thin_strokes(image) for image in images]
    if kind == "16x16":
        return [fill_frame(image, FRAME) for image in images]
    if kind == "8x8":
        return [uci_as_image(counts) for counts in mnist_as_uci(images)]
    padded = torch.from_numpy(np.pad(images, ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN))))
    batch = padded.unsqueeze(1).float() / 255
    if kind == "thick":
        return marker_strokes(batch)
    if kind == "binarized":
        batch = binarize(batch, torch.from_numpy(rng.uniform(*THRESHOLDS, n)))
    else:  # slanted
        factors = rng.uniform(*SHEAR, n) * rng.choice([-1.0, 1.0], n)
        batch = shear(batch, torch.from_numpy(factors))
    return _as_images(batch)


def _as_images(batch: torch.Tensor) -> list[np.ndarray]:
    """(N, 1, H, W) floats in [0, 1] as N uint8 images."""
    return list((batch[:, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy())


def prepare(
    user_images: Sequence[np.ndarray], config: PreprocessConfig = DEFAULT_CONFIG
) -> tuple[np.ndarray, np.ndarray]:
    """Each image through `predict`'s preprocessing (with `config`): model inputs (N, 28, 28), and
    whether ink was found."""
    prepared = [prepare_digit(image, config) for image in user_images]
    found = np.array([p is not None for p in prepared], dtype=bool)
    inputs = [p.image if p is not None else np.zeros((28, 28), np.float32) for p in prepared]
    return (np.stack(inputs) if inputs else np.zeros((0, 28, 28), np.float32)), found


def stress_sets(
    split: Split,
    kinds: Sequence[str] = tuple(KINDS),
    seed: int = SEED,
    config: PreprocessConfig = DEFAULT_CONFIG,
) -> list[StressSet]:
    """Each kind of stress made from `split`'s digits (a model's held-out validation images) and
    prepared with `config`."""
    sets = []
    for kind in kinds:
        images = stress_images(kind, split.images, seed)
        inputs, found = prepare(images, config)
        sets.append(StressSet(kind, inputs, found, split.labels.astype(np.int64), images))
    return sets


def thin_strokes(image: np.ndarray, width: float = THIN_WIDTH) -> np.ndarray:
    """A digit's strokes redrawn `width` px wide in full ink: its shape (brighter than half) at
    THIN_SCALE times the size, kept within `width` / 2 of its skeleton (scikit-image's), averaged
    back down.

    Each stroke keeps its own centre line, so a stroke thinner than the rest, or a digit with one
    blot of ink, loses nothing else (erosion by one depth for the whole digit wiped such strokes
    out and left the blot); a blot, whose skeleton is a point or a short line, keeps its outline.
    Grayscale erosion alone would leave strokes faint rather than thin, and the preprocessing's
    contrast stretch would make them wide again; a fine pen's ink is as dark as a marker's.
    """
    try:
        from skimage.morphology import skeletonize
    except ImportError:
        raise MnistDigitsError(
            "the thin stress set draws each stroke along its skeleton, which needs scikit-image: "
            "pip install scikit-image"
        ) from None
    large = np.asarray(Image.fromarray(image).resize((28 * THIN_SCALE,) * 2, Image.Resampling.BILINEAR))
    inked = np.kron(image > 0, np.ones((THIN_SCALE, THIN_SCALE), dtype=bool))  # never beside the ink
    shape = (large > 127) & inked
    if not shape.any():
        return image
    depth = _depth(shape)
    ridge = skeletonize(shape)
    half = width * THIN_SCALE / 2
    # A blot (a loop filled in: ink far deeper than the digit's strokes) has a point or a short
    # line for a skeleton: a fine pen draws its outline instead.
    blot_ridge = ridge & (depth > BLOT_DEPTH * np.median(depth[ridge]))
    blot = np.zeros_like(shape)
    if blot_ridge.any():
        distance, (rows, cols) = ndi.distance_transform_edt(~blot_ridge, return_indices=True)
        blot = distance <= depth[rows, cols]
    filled = ndi.binary_fill_holes(shape)  # the outline is the blot's outside, not a hole's rim
    outline = blot & (_depth(filled) <= 2 * half)
    kept = shape & ((ndi.distance_transform_edt(~(ridge & ~blot)) <= half) | outline)
    small = Image.fromarray(kept.astype(np.float32)).resize((28, 28), Image.Resampling.BOX)
    return (np.asarray(small) * 255).round().clip(0, 255).astype(np.uint8)


def marker_strokes(batch: torch.Tensor) -> list[np.ndarray]:
    """Each digit of (N, 1, H, W) with its strokes THICK_PX wider, or less where that would change
    its loops: the widest of THICK_PX, THICK_PX - THICK_STEP, ... that leaves it as many loops as
    it has; the digit as it is when none does.

    A writer with a marker writes the digit large enough for its loops: a 3 whose ends nearly
    touch its middle stays a 3, an 8 keeps both holes, a 4 open at the top stays open. Widening
    every stroke by the full amount closed those (3s into 8s, 4s into 9s, filled 8s), digits no
    one could read as what they were (docs/experiments.md, "what the thick row's mistakes are").
    """
    n = len(batch)
    chosen = _as_images(batch)
    wanted = [loops(image > 127, MIN_LOOP) for image in chosen]
    left = np.ones(n, dtype=bool)
    width = THICK_PX
    while width > 0 and left.any():
        widened = _as_images(change_stroke_width(batch, torch.full((n,), width)))
        for i in np.flatnonzero(left):
            if loops(widened[i] > 127) == wanted[i]:
                chosen[i], left[i] = widened[i], False
        width -= THICK_STEP
    return chosen


def loops(ink: np.ndarray, min_area: int = 1) -> int:
    """How many areas of paper the ink (bool, strokes 8-connected) encloses, of at least `min_area` px."""
    paper, count = ndi.label(~ink)  # 4-connected: paper crossing a diagonal of ink is cut there
    areas = np.bincount(paper.ravel(), minlength=count + 1)
    areas[0] = 0  # the ink
    areas[np.concatenate([paper[0], paper[-1], paper[:, 0], paper[:, -1]])] = 0  # the paper around it
    return int(np.count_nonzero(areas >= min_area))


def _depth(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the background in px, beyond the image's edge counting as background."""
    return ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]


def fill_frame(image: np.ndarray, side: int = FRAME) -> np.ndarray:
    """A digit's ink box scaled, keeping its shape, until its longer side fills a side x side frame."""
    rows, cols = np.nonzero(image)
    frame = np.zeros((side, side), np.uint8)
    if not len(rows):
        return frame
    box = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = side / max(box.shape)
    height, width = (min(side, max(1, round(length * scale))) for length in box.shape)
    # Area-averaged, as a scanner's sensor sees it (no sharpening ring at this size).
    scaled = np.asarray(Image.fromarray(box).resize((width, height), Image.Resampling.BOX))
    top, left = (side - height) // 2, (side - width) // 2
    frame[top : top + height, left : left + width] = scaled
    return frame


def mnist_as_uci(images: np.ndarray) -> np.ndarray:
    """MNIST digits (N, 28, 28) uint8 put into UCI's format: the digit's box scaled, keeping its
    shape, to fill a 32x32 bitmap (ink where brighter than half), then counted in 4x4 blocks:
    (N, 8, 8), 0-16."""
    cells = UCI_BITMAP // UCI_BLOCK
    out = np.zeros((len(images), cells, cells), np.float32)
    for i, image in enumerate(images):
        rows, cols = np.nonzero(image > 127)
        if not len(rows):
            continue
        box = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        scale = UCI_BITMAP / max(box.shape)
        height, width = (max(1, round(length * scale)) for length in box.shape)
        scaled = np.asarray(Image.fromarray(box).resize((width, height), Image.Resampling.BILINEAR)) > 127
        bitmap = np.zeros((UCI_BITMAP, UCI_BITMAP), bool)
        top, left = (UCI_BITMAP - height) // 2, (UCI_BITMAP - width) // 2
        bitmap[top : top + height, left : left + width] = scaled
        out[i] = bitmap.reshape(cells, UCI_BLOCK, cells, UCI_BLOCK).sum((1, 3))
    return out


def uci_as_image(counts: np.ndarray) -> np.ndarray:
    """An 8x8 UCI digit as a grayscale image a person might hold: 32x32 plus a margin, white on black."""
    gray = Image.fromarray((counts * (255 / UCI_BLOCK**2)).astype(np.uint8))
    large = np.asarray(gray.resize((UCI_BITMAP, UCI_BITMAP), Image.Resampling.BICUBIC))
    return np.pad(large, UCI_MARGIN)
