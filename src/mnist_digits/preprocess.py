"""The one path from a person's image to what the model was trained on: an MNIST-like 28x28 digit.

MNIST's digits are white ink on black; the ink's bounding box was scaled, keeping its aspect
ratio and anti-aliased, to 20 px on its longest side, and placed in a 28x28 field with its
centre of mass at the centre (row 14, column 14). A photo or a drawing is brought to that:

1. grayscale with alpha composited (images.to_grayscale), shrunk to at most `work_side` px;
   a small scan whose ink touches its frame is given a margin of its own paper;
2. polarity: the ink is the heavy tail on one side of a wide local median (the paper);
3. the paper and its uneven lighting estimated around the ink (a masked blur) and removed,
   relative to the paper's light for dark ink (shadow dims ink and paper alike);
4. contrast scaled so that the strokes' core is 1; noise away from the strokes set to 0;
5. ink blobs found as connected components; specks, clutter at the border, and a box drawn
   around the digit (a form's field) dropped, its lines taken off the digit where they touch;
6. strokes too thin for their size (a fine pen on a big canvas) thickened to MNIST's width
   (and, if asked, a marker's too thick ones thinned);
7. the ink's box scaled to 20 px on its longest side, centre of mass put at the centre of 28x28;
   black-and-white ink given the soft edges MNIST's anti-aliasing gave its digits.

`segment_digits` does steps 1-5 once, groups the blobs into digits, and 6-7 for each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from . import images
from .errors import InputError
from .filters import blur, gaussian_noise_gain, median, noise_std, pixel_noise, rank_filters, rank_of
from .grouping import Blob, group_blobs
from .grouping import union as bounding

EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)  # diagonal pixels connect strokes, as a pen draws them
CROSS = ndi.generate_binary_structure(2, 1)  # the four nearest neighbours
# A box drawn around the digit (is_box_around): sides in a band this share of its shorter side,
# each inked along this share of its length; at most this share of its ink inside the bands; and
# other ink within it of at least this share of its own area; boxes smaller than this are digits.
BOX_BAND = 0.08
BOX_SIDE_COVER = 0.85
BOX_MAX_WITHIN = 0.1
BOX_MIN_ENCLOSED = 0.1
BOX_MIN_SIDE = 8  # px
# A digit written to its box's edges joins the lines into one blob (box_lines): three or more sides
# lines at most this share of the shorter side thick (a digit's strokes are 10-15%), in boxes at
# least this big, are taken off it.
BOX_MAX_LINE = 0.05
BOX_SPLIT_MIN_SIDE = 32  # px


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image is turned into the model's input. The defaults were tuned on benchmarks/real_world.py,
    the last three changes' on the stress rows of benchmarks/outside_mnist.py."""

    work_side: int = 512  # px; larger images are shrunk to this longest side first (speed)
    field: int = 28  # px; the output is field x field, as MNIST
    box: int = 20  # px; the digit's longest side in the output, as MNIST
    box_level: float = 0.25  # share of the strokes' level that counts as ink for the bounding box
    lighting_grid: int = 32  # px; the paper's lighting is estimated on a grid this coarse
    min_contrast: float = 0.12  # 0-1 gray; fainter marks than this are not ink
    min_snr: float = 3.0  # the strokes must stand this many noise standard deviations above the paper
    speck_fraction: float = 0.04  # ink blobs under this share of the largest blob's area are noise...
    fragment_fraction: float = 0.002  # ...unless within the digit's box and at least this share
    min_stroke: float = 1.6  # px in the output; thinner strokes get thickened (real_world.py's choice)
    target_stroke: float = 2.4  # px in the output; what thin strokes are thickened to (below MNIST's median)
    # Meeting other writers' digits half way, each on only where validation said so
    # (docs/experiments.md, "Preprocessing chosen on validation"; benchmarks/outside_mnist.py
    # --preprocess FIELD=VALUE measures them). MNIST's training digits at 28x28 (stroke_width of
    # the pixels brighter than half): 5th percentile 2.07 px, median 2.70, 95th 3.98, 99th 4.82;
    # this pipeline's own measure (its mask, scaled to the box): 2.21, 2.89, 4.18, 97th 4.48, 5.09.
    thin_thick_strokes: bool = False  # off: +1.6-2.8 points on markers, up to -0.13 on other kinds
    max_stroke: float = 4.5  # px in the output; wider strokes are thinned (MNIST's 97th percentile)
    thin_to: float = 4.0  # px in the output; what they are eroded toward (MNIST's 95th percentile)
    max_thinning: float = 1.7  # px in the output; the most a digit's strokes lose
    frame_filling: bool = True  # a small image whose ink touches its frame gets a margin of its paper
    small_side: int = 32  # px; an image no larger is a scan or a digital digit, not a photo
    smooth_binary: bool = True  # black-and-white ink given soft edges, as MNIST's anti-aliasing gave
    binary_blur: float = 0.6  # px in the output; the Gaussian (sigma) softening them at scale 1 or more


DEFAULT_CONFIG = PreprocessConfig()


@dataclass(frozen=True)
class InkMap:
    """An image's ink, light on black, with the paper, its lighting and its noise removed."""

    ink: np.ndarray  # float32 (H, W) in [0, 1]: 1 is the strokes' core, 0 the paper
    labels: np.ndarray  # int32 (H, W): connected components of the confident ink, 0 elsewhere
    blobs: list[Blob]  # the components kept (specks and border clutter dropped)
    scale: float  # working-image pixels per source pixel (<= 1)
    fringe: int  # px; how far the ink's soft edge reaches beyond the labelled pixels
    margin: int = 0  # px of paper added around a small image whose ink touched its frame


@dataclass(frozen=True)
class PreparedDigit:
    """An image of one digit, ready for the model."""

    image: np.ndarray  # float32 (28, 28): the model's input
    digits_seen: int  # separate digits its ink seems to form; more than 1 means a number


@dataclass(frozen=True)
class DigitSegment:
    """One digit found by `segment_digits`."""

    box: tuple[int, int, int, int]  # left, top, right, bottom in the source image's pixels
    image: np.ndarray  # float32 (28, 28): the model's input


def preprocess(
    source: Image.Image | np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG
) -> np.ndarray | None:
    """The MNIST-like (28, 28) float32 input for an image of one digit; None if there is no ink."""
    prepared = prepare_digit(source, config)
    return None if prepared is None else prepared.image


def prepare_digit(
    source: Image.Image | np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG
) -> PreparedDigit | None:
    """`preprocess`, also saying how many digits the ink seems to form; None if there is no ink."""
    ink_map = find_ink(source, config)
    if ink_map is None:
        return None
    image = normalize_digit(ink_of(ink_map, ink_map.blobs), config)
    return PreparedDigit(image, len(group_blobs(ink_map.blobs)))


def segment_digits(
    source: Image.Image | np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG
) -> list[DigitSegment]:
    """The digits of a written number, left to right, each as an MNIST-like input; [] if no ink."""
    ink_map = find_ink(source, config)
    if ink_map is None:
        return []
    segments = []
    for group in group_blobs(ink_map.blobs):
        union = bounding(group)
        left, top, right, bottom = (
            round(max(0, v - ink_map.margin) / ink_map.scale)
            for v in (union.left, union.top, union.right, union.bottom)
        )
        if ink_map.margin:  # a box is of the image, not of the paper added around it
            height, width = (side - 2 * ink_map.margin for side in ink_map.ink.shape)
            right, bottom = min(right, width), min(bottom, height)
        segments.append(
            DigitSegment((left, top, right, bottom), normalize_digit(ink_of(ink_map, group), config))
        )
    return segments


Prepared = TypeVar("Prepared")


def prepare_inputs(
    prepare: Callable[[Image.Image | np.ndarray, PreprocessConfig], Prepared],
    inputs: Sequence[tuple[str, object]],
    config: PreprocessConfig = DEFAULT_CONFIG,
) -> list[Prepared | str]:
    """`prepare` (prepare_digit or segment_digits) of each (name, input), opened first if it is a
    file's path or bytes: its result, or why it cannot be read, starting with its name.

    Called in this process or in a pool's workers: the same answers either way.
    """
    results: list[Prepared | str] = []
    for name, item in inputs:
        try:
            results.append(prepare(images.open_input(item, config.work_side, name), config))
        except InputError as e:
            message = str(e)  # files' messages start with their name already
            results.append(message if message.startswith(f"{name}: ") else f"{name}: {message}")
    return results


# --- steps 1-5: the ink of a whole image --------------------------------------------------------


def working_gray(source: Image.Image | np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Grayscale (white = 1) with its longest side at most `max_side`, and the scale applied."""
    if isinstance(source, Image.Image):
        small = images.shrink(source, max_side)
        return images.to_grayscale(small), small.width / source.width
    gray = images.to_grayscale(source)
    scale = max_side / max(gray.shape)
    if scale >= 1:
        return gray, 1.0
    return _resize(gray, scale, Image.Resampling.BOX), scale


def is_dark_on_light(gray: np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG) -> bool:
    """Whether the ink is darker than the paper: which side of the local background has the heavy tail.

    The background is the median over half the image, with the windows beyond the image's edge
    filled twice: by the edge repeated, and by the image mirrored. A pixel is ink only where it
    stands out from both. Repeated, a line along the edge (a form's box cropped at its border, a
    scanner's dark edge) fills half of the edge's windows and turns the white paper beside it
    into "ink"; mirrored, a gradient of light that runs into the edge looks like ink there.
    """
    backgrounds = [
        _coarse_percentile(gray, config.lighting_grid, 50, mode) for mode in ("nearest", "reflect")
    ]
    return _is_dark_on(gray, np.minimum(*backgrounds), config, np.maximum(*backgrounds))


def _is_dark_on(
    gray: np.ndarray,
    background: np.ndarray,
    config: PreprocessConfig,
    light_background: np.ndarray | None = None,
) -> bool:
    """is_dark_on_light, given the local background (the median over half the image): dark ink is
    measured below `background`, light ink above `light_background` (by default the same)."""
    threshold = max(4 * pixel_noise(gray), config.min_contrast / 2)
    dark = np.clip(background - gray - threshold, 0, None).sum()
    above = background if light_background is None else light_background
    light = np.clip(gray - above - threshold, 0, None).sum()
    return bool(dark > light)


def find_ink(source: Image.Image | np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG) -> InkMap | None:
    """Steps 1-5 of the module docstring; None when nothing in the image is ink."""
    gray, scale = working_gray(source, config.work_side)
    if gray.size == 0:
        return None
    margin = 0
    if config.frame_filling and max(gray.shape) <= config.small_side:
        gray, margin = _pad_with_paper(gray, config)
    first_paper = None
    if max(gray.shape) <= config.lighting_grid:
        # No coarse grid: the percentiles are of the pixels themselves, and one sort of each window
        # gives the median (polarity) and the paper's first estimate, the 25th percentile of gray
        # or, for dark ink, of 1 - gray: 1 minus gray's value at the mirrored rank.
        size = _window_side(gray.shape)
        quarter = rank_of(25, size)
        ranks = (rank_of(50, size), quarter, size * size - 1 - quarter)
        middle, quartile, mirrored = rank_filters(gray, ranks, size)
        dark_ink = _is_dark_on(gray, middle, config)
        first_paper = 1.0 - mirrored if dark_ink else quartile
    else:
        dark_ink = is_dark_on_light(gray, config)
    if dark_ink:
        gray = 1.0 - gray  # from here on ink is light, as in MNIST
    paper = estimate_paper(gray, config, first_paper)
    residual = gray - paper
    if dark_ink:
        # Light multiplies: ink on paper in shadow is as much darker as the paper is. Contrast
        # relative to the paper's own light makes a stroke equally strong in light and shadow.
        residual /= np.maximum(1.0 - paper, 0.1)
    ink = np.clip(residual, 0.0, None)
    noise = pixel_noise(residual)

    # Smoothing before thresholding keeps pixel noise out of the mask; sigma grows with the image.
    sigma = max(0.5, max(gray.shape) / 512)
    # Where there is no ink nearby, the blur and the mask are 0: a clean drawing's are found on the
    # ink's box alone (one 2 kernel radii wider is blurred just as the whole image would be).
    box = _inked_box(ink, 2 * int(4.0 * sigma + 0.5))
    smooth = np.zeros_like(ink)
    smooth[box] = blur(ink[box], sigma, "reflect")
    smooth_noise = noise * gaussian_noise_gain(sigma)
    candidates = smooth[smooth > max(config.min_contrast / 2, 5 * smooth_noise)]
    if candidates.size == 0:
        return None
    # The strokes' level: the typical value of their stronger half (robust to noise and to edges).
    strong = candidates[candidates >= 0.5 * np.percentile(candidates, 95)]
    level = float(median(strong))
    if level < config.min_contrast or level < config.min_snr * noise:
        return None

    labels = np.zeros(ink.shape, dtype=np.int32)
    labels[box], count = ndi.label(smooth[box] >= 0.5 * level, structure=EIGHT_NEIGHBOURS)
    blobs = _keep_ink_blobs(labels, count, config)
    if not blobs:
        return None

    floor = min(2 * noise, 0.4 * level)  # most pixel noise on the paper becomes exactly 0
    normalized = np.clip((ink - floor) / (level - floor), 0.0, 1.0)
    fringe = math.ceil(2 * sigma) + 1  # the soft edge outside the half-level mask
    return InkMap(
        normalized.astype(np.float32, copy=False),
        labels.astype(np.int32, copy=False),
        blobs,
        scale,
        fringe,
        margin,
    )


def _pad_with_paper(gray: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, int]:
    """A small image whose ink touches its frame (a scan that the digit fills) with a margin of
    its own paper around it, and the margin's width; the image itself if no ink touches.

    The steps that follow then see a digit on paper: polarity from a majority of paper, no stroke
    at the border taken for clutter, the box the ink's. The paper is the frame's median, with the
    frame's noise (most of a frame is paper, even where strokes touch it).
    """
    ring = np.concatenate([gray[0], gray[1:, -1], gray[-1, -2::-1], gray[-2:0:-1, 0]])  # around the frame
    paper = float(np.median(ring))
    if np.abs(ring - paper).max() < config.min_contrast:
        return gray, 0
    noise = noise_std(np.diff(ring)) / math.sqrt(2)  # neighbours' differences, as pixel_noise
    margin = math.ceil(max(gray.shape) / 4)
    shape = (gray.shape[0] + 2 * margin, gray.shape[1] + 2 * margin)
    padded = np.random.default_rng(0).normal(paper, noise, shape).clip(0.0, 1.0).astype(np.float32)
    padded[margin:-margin, margin:-margin] = gray
    return padded, margin


def _inked_box(image: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The box of the nonzero pixels, `margin` px wider; the whole image if that is most of it."""
    rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    top, bottom = max(0, rows[0] - margin), rows[-1] + 1 + margin
    left, right = max(0, cols[0] - margin), cols[-1] + 1 + margin
    if (min(bottom, image.shape[0]) - top) * (min(right, image.shape[1]) - left) > 0.6 * image.size:
        return slice(None), slice(None)
    return slice(top, bottom), slice(left, right)


def estimate_paper(
    ink_is_light: np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG, first: np.ndarray | None = None
) -> np.ndarray:
    """The paper's own brightness at every pixel (ink light, paper dark), varying across a photo.

    A low percentile over half the image gives a first estimate of the paper (unless given as
    `first`) that even a thick, bold 0 covering most of a window does not lift. Pixels well above
    it are ink; the paper is then estimated again from the other pixels alone (a blur weighted to
    skip the ink), twice.
    """
    paper = _coarse_percentile(ink_is_light, config.lighting_grid, 25) if first is None else first
    noise = pixel_noise(ink_is_light)
    last: np.ndarray | None = None
    for _ in range(2):
        residual = ink_is_light - paper
        suspect = residual > max(config.min_contrast / 2, 4 * noise)
        if not suspect.any() or (last is not None and np.array_equal(suspect, last)):
            break  # no ink, or the same pixels as last time: the same paper again (a clean drawing)
        paper, last = _paper_around(ink_is_light, suspect, config), suspect
    return paper.astype(np.float32)


def _paper_around(ink_is_light: np.ndarray, suspect: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """The paper's brightness everywhere, from the pixels that are not `suspect`: a weighted blur."""
    weight = (~suspect).astype(np.float32)
    factor = max(ink_is_light.shape) / config.lighting_grid
    if factor <= 1:
        coarse_sum, coarse_weight = ink_is_light * weight, weight
    else:
        coarse_sum = _resize(ink_is_light * weight, 1 / factor, Image.Resampling.BOX)
        coarse_weight = _resize(weight, 1 / factor, Image.Resampling.BOX)
        # Cells mostly of ink also hold its soft edge, a little above the paper: leave them out.
        keep = coarse_weight >= 0.75
        coarse_sum, coarse_weight = coarse_sum * keep, coarse_weight * keep
    spread = max(coarse_sum.shape) / 6  # the lighting varies slowly: a sixth of the image
    # Both blurred in one call (each plane on its own): the same numbers for half the overhead.
    numerator, denominator = blur(np.stack([coarse_sum, coarse_weight]), spread, "nearest", axes=(1, 2))
    if denominator.min() < 1e-3:  # ink everywhere in some region: fall back to the global paper level
        fallback = float(np.median(ink_is_light[~suspect])) if (~suspect).any() else 0.0
        paper = np.where(denominator < 1e-3, fallback, numerator / np.maximum(denominator, 1e-3))
    else:
        paper = numerator / denominator
    if paper.shape != ink_is_light.shape:
        paper = _resize_to(paper.astype(np.float32), ink_is_light.shape, Image.Resampling.BILINEAR)
    return paper


def _coarse_percentile(gray: np.ndarray, grid: int, percentile: float, mode: str = "nearest") -> np.ndarray:
    """A percentile over half the image, computed on a coarse grid and smoothly enlarged back;
    beyond the edge the windows hold the edge repeated ("nearest") or the image mirrored ("reflect")."""
    factor = max(gray.shape) / grid
    coarse = _resize(gray, 1 / factor, Image.Resampling.BOX) if factor > 1 else gray
    size = _window_side(coarse.shape)
    [filtered] = rank_filters(coarse, (rank_of(percentile, size),), size, mode)
    if filtered.shape == gray.shape:
        return filtered
    value = filtered.flat[0] + np.float32(0.0)  # -0 as +0, like Pillow's sums, which start at +0
    if (filtered == value).all():
        # One value everywhere (a drawing's paper): Pillow's weights sum to 1, so it would enlarge
        # to the same value to the last bit; this skips a third of a millisecond of resampling.
        return np.full(gray.shape, value, dtype=np.float32)
    return _resize_to(filtered, gray.shape, Image.Resampling.BILINEAR)


def _window_side(shape: tuple[int, ...]) -> int:
    """The percentiles' window: half the (coarse) image's longest side, odd, at least 3 px."""
    return max(3, max(shape) // 2 | 1)


def _keep_ink_blobs(labels: np.ndarray, count: int, config: PreprocessConfig) -> list[Blob]:
    if count == 0:
        return []
    if count == 1:  # a clean drawing: the rules below keep a lone blob, and this finds it faster
        rows, cols = np.flatnonzero(labels.any(1)), np.flatnonzero(labels.any(0))
        top, left, bottom, right = int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
        blobs = [Blob(1, top, left, bottom, right, int(np.count_nonzero(labels)))]
        unboxed = take_off_box_lines(blobs, labels, count)
        if unboxed is blobs:
            return blobs
        blobs = unboxed
    else:
        areas = np.bincount(labels.ravel(), minlength=count + 1)
        slices = ndi.find_objects(labels)
        blobs = [
            Blob(i + 1, rows.start, cols.start, rows.stop, cols.stop, int(areas[i + 1]))
            for i, (rows, cols) in enumerate(slices)
            if rows is not None
        ]
        blobs = take_off_box_lines(blobs, labels, count)
    # A form's box or a cell of a digit sheet drawn around the digit is not part of it.
    blobs = [b for b in blobs if not is_box_around(b, blobs, labels)] or blobs
    largest = max(b.area for b in blobs)
    big = [b for b in blobs if b.area >= config.speck_fraction * largest]
    # Small pieces touching the big blobs' box are parts of the digit: the detached bar of a 5, a
    # stroke broken by a dry pen. Away from it they are dirt; the tiniest dots are noise anywhere.
    box = bounding(big)
    margin = 0.1 * max(box.height, box.width)
    blobs = [
        b
        for b in blobs
        if b in big
        or (
            b.area >= config.fragment_fraction * largest
            and b.bottom >= box.top - margin
            and b.top <= box.bottom + margin
            and b.right >= box.left - margin
            and b.left <= box.right + margin
        )
    ]
    # In a photo the paper's edge, the table or a shadow reach into the image from its border:
    # along a whole side, or as more ink than everything inside. A digit's stroke that touches
    # the border (a tight crop) is neither.
    height, width = labels.shape
    inside = [b for b in blobs if b.top > 0 and b.left > 0 and b.bottom < height and b.right < width]
    inside_area = sum(b.area for b in inside)
    if not inside:
        return blobs
    return [
        b
        for b in blobs
        if b in inside or (b.height < 0.9 * height and b.width < 0.9 * width and b.area < inside_area)
    ]


def is_box_around(blob: Blob, blobs: Sequence[Blob], labels: np.ndarray) -> bool:
    """Whether `blob` is a box drawn around other ink (a form's field, a cell of a digit sheet):
    at least three of its sides straight lines along its bounding box, little of it inside them,
    and other ink, BOX_MIN_ENCLOSED of its own at least, within. A digit's loop is none of these:
    an oval touches its box at four points, and holds no other ink."""
    if min(blob.height, blob.width) < BOX_MIN_SIDE:
        return False
    enclosed = sum(
        b.area
        for b in blobs
        if b.top > blob.top and b.left > blob.left and b.bottom < blob.bottom and b.right < blob.right
    )
    if enclosed < BOX_MIN_ENCLOSED * blob.area:
        return False
    mine, band = _own_pixels_and_band(blob, labels)
    straight = sum(_inked_along(np.rot90(mine, turns)[:band]) for turns in range(4))
    within = np.count_nonzero(mine[band:-band, band:-band])
    return bool(straight >= 3 and within <= BOX_MAX_WITHIN * blob.area)


def _own_pixels_and_band(blob: Blob, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """`blob`'s own pixels in its bounding box, and how far in from each side a box's line is looked for."""
    mine = labels[blob.top : blob.bottom, blob.left : blob.right] == blob.label
    return mine, max(2, round(BOX_BAND * min(blob.height, blob.width)))


def _inked_along(band: np.ndarray) -> bool:
    """Whether the rows along a side (turned to the top) hold ink along BOX_SIDE_COVER of its length."""
    return float(band.any(0).mean()) >= BOX_SIDE_COVER


def take_off_box_lines(blobs: list[Blob], labels: np.ndarray, count: int) -> list[Blob]:
    """`blobs` with each digit that touches the box it was written in taken out of it: the box's
    lines (box_lines) set to 0 in `labels`, and what is left of the blob labelled anew (from
    `count` + 1) as blobs of its own. The list itself when no blob is such a box."""
    out, changed = [], False
    for blob in blobs:
        lines = box_lines(blob, labels) if min(blob.height, blob.width) >= BOX_SPLIT_MIN_SIDE else None
        if lines is None:
            out.append(blob)
            continue
        window = labels[blob.top : blob.bottom, blob.left : blob.right]
        mine = window == blob.label
        rest = mine & ~lines
        # What the lines' edges leave (a pixel of a tilted line's step) lies along them: not ink.
        near_lines = ndi.binary_dilation(lines, EIGHT_NEIGHBOURS, iterations=2)
        parts, _ = ndi.label(rest, structure=EIGHT_NEIGHBOURS)
        away = np.unique(parts[rest & ~near_lines])
        rest = np.isin(parts, away[away > 0])
        if np.count_nonzero(rest) < BOX_MIN_ENCLOSED * np.count_nonzero(lines):
            out.append(blob)  # nothing written in it: an empty box, or a squarish 0 (is_box_around's)
            continue
        parts, found = ndi.label(rest, structure=EIGHT_NEIGHBOURS)
        window[mine] = 0
        window[rest] = parts[rest] + count
        areas = np.bincount(parts.ravel(), minlength=found + 1)
        for i, (rows, cols) in enumerate(ndi.find_objects(parts)):
            out.append(
                Blob(
                    count + i + 1,
                    blob.top + rows.start,
                    blob.left + cols.start,
                    blob.top + rows.stop,
                    blob.left + cols.stop,
                    int(areas[i + 1]),
                )
            )
        count += found
        changed = True
    return out if changed else blobs


def box_lines(blob: Blob, labels: np.ndarray) -> np.ndarray | None:
    """The pixels of a box's lines in `blob`, as a mask of its bounding box, when at least three
    of its sides are thin straight lines along that box (a digit written to the edges of a form's
    field joins them into one blob); None otherwise. A side's line may lean (a scan's tilt) and
    strokes may join it: each column loses only the line's thickness from the line's first pixel."""
    mine, band = _own_pixels_and_band(blob, labels)
    thickest = max(1.0, BOX_MAX_LINE * min(blob.height, blob.width))
    lines = np.zeros_like(mine)
    sides = 0
    for turns in range(4):  # each side turned to the top: the views write through to `lines`
        line = _line_along_top(np.rot90(mine, turns), band, thickest)
        if line is not None:
            np.rot90(lines, turns)[line] = True
            sides += 1
    return lines if sides >= 3 else None


def _line_along_top(mine: np.ndarray, band: int, thickest: float) -> np.ndarray | None:
    """The pixels of a straight line along the top of `mine`, no thicker than `thickest`; None if
    there is none."""
    top = mine[:band]
    if not _inked_along(top):
        return None
    cols = np.flatnonzero(top.any(0))
    first = top.argmax(0)[cols]
    run = np.zeros(len(cols), dtype=np.int64)  # each column's ink downward from its first pixel
    going = np.ones(len(cols), dtype=bool)
    for offset in range(band):
        rows = first + offset
        going &= (rows < mine.shape[0]) & mine[np.minimum(rows, mine.shape[0] - 1), cols]
        if not going.any():
            break
        run += going
    thickness = int(np.percentile(run, 25))  # strokes joining the line only lengthen its runs
    plain = run <= thickness + 1
    if thickness > thickest or np.count_nonzero(plain) < 2:
        return None
    slope, intercept = np.polyfit(cols[plain], first[plain], 1)
    on = np.abs(first - (slope * cols + intercept)) <= 2  # where its first ink is the line's
    line = np.zeros_like(mine)
    for offset in range(thickness + 2):  # one row more: a tilted line's steps
        rows = first[on] + offset
        keep = rows < mine.shape[0]
        line[rows[keep], cols[on][keep]] = True
    return line & mine


def ink_of(ink_map: InkMap, blobs: list[Blob]) -> tuple[np.ndarray, np.ndarray]:
    """The ink of some blobs (with their soft edges, without their neighbours), and their mask."""
    union, pad = bounding(blobs), ink_map.fringe
    rows = slice(max(0, union.top - pad), union.bottom + pad)
    cols = slice(max(0, union.left - pad), union.right + pad)
    labels = ink_map.labels[rows, cols]
    mask = labels == blobs[0].label if len(blobs) == 1 else np.isin(labels, [b.label for b in blobs])
    # `pad` dilations by a 3x3 square are one by a square of side 2 pad + 1: a separable maximum
    # filter, several times faster than binary_dilation's iterations, and the same pixels.
    region = ndi.maximum_filter(mask.view(np.uint8), size=2 * pad + 1, mode="constant", cval=0)
    return ink_map.ink[rows, cols] * region.view(bool), mask


# --- steps 6-7: one digit into the 28x28 field ------------------------------------------------


def normalize_digit(
    ink_and_mask: tuple[np.ndarray, np.ndarray], config: PreprocessConfig = DEFAULT_CONFIG
) -> np.ndarray:
    """One digit's ink (light on black) as MNIST draws it: 20 px box, centre of mass at the centre."""
    ink, mask = ink_and_mask
    ink, mask = _crop(ink, mask, ink >= config.box_level)
    binary = config.smooth_binary and is_binary(ink)
    changed = thicken_thin_strokes(ink, mask, config)
    if changed is ink and config.thin_thick_strokes:
        changed = thin_thick_strokes(ink, mask, config)
    if changed is not ink:
        ink, _ = _crop(changed, changed, changed >= config.box_level)  # the strokes' change moved the box
    scale = config.box / max(ink.shape)
    digit = np.clip(_resize(ink, scale, Image.Resampling.LANCZOS), 0.0, 1.0)
    placed = place_by_center_of_mass(digit, config.field)
    if binary:
        # Shrinking anti-aliases already (a big black-and-white canvas comes out soft); at the
        # output's own size or larger (a scan, a 28x28 drawing) the edges stay hard without this.
        # In the field, so the box and the centring are those of the ink itself.
        placed = soften_edges(placed, config.binary_blur * min(scale, 1.0))
    return placed


def _crop(ink: np.ndarray, mask: np.ndarray, inked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`ink` and `mask` cut to the bounding box of `inked`."""
    rows, cols = np.flatnonzero(inked.any(1)), np.flatnonzero(inked.any(0))
    if rows.size == 0:
        return ink, mask
    box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    return ink[box], mask[box]


def stroke_width(mask: np.ndarray) -> float:
    """Typical stroke width of a binary drawing, in its pixels.

    Across a stroke w pixels wide, the distance to the paper rises from 1 to w/2 and falls back,
    averaging (w/2 + 1)/2; hence w = 4 x mean distance - 2.
    """
    if not mask.any():
        return 0.0
    return _width(ndi.distance_transform_edt(np.pad(mask, 1)))


def _width(distances: np.ndarray) -> float:
    return max(1.0, 4 * float(distances[distances > 0].mean()) - 2)


def thicken_thin_strokes(
    ink: np.ndarray, mask: np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG
) -> np.ndarray:
    """Strokes that would be thinner than MNIST's after scaling, dilated until they are not.

    A 2 px pen on a 600 px canvas shrinks to a 0.1 px hairline at 20 px: MNIST has no such digit.
    `mask` is the ink's smoothed outline (pixel noise would punch holes in a plain threshold).
    Images near the output size are left alone: their strokes are already what the model sees.
    """
    longest = max(ink.shape)
    if longest < 2 * config.box:
        return ink
    scale = config.box / longest
    # The chessboard distance to the paper is at most the Euclidean one, and several times faster
    # to find: when the width it gives is already thick enough, so is the true width.
    if mask.any():
        chessboard = ndi.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")
        if _width(chessboard) * scale >= config.min_stroke:
            return ink
    width = stroke_width(mask)
    if width * scale >= config.min_stroke:
        return ink
    radius = (config.target_stroke / scale - width) / 2
    pad = math.ceil(radius) + 1
    padded = np.pad(ink, pad)
    distance_to_ink = ndi.distance_transform_edt(~np.pad(mask, pad))
    return np.maximum(padded, (distance_to_ink <= radius).astype(np.float32))


def thin_thick_strokes(
    ink: np.ndarray, mask: np.ndarray, config: PreprocessConfig = DEFAULT_CONFIG
) -> np.ndarray:
    """Strokes that would be wider than max_stroke after scaling, eroded toward thin_to.

    Grayscale erosion, so the soft edges move inward whole, by at most max_thinning; no stroke
    is eroded below min_stroke (its local thickness says how far it can go), so none vanishes.
    A big canvas comes back at twice the output's resolution, a small image at its own.
    """
    if not mask.any():
        return ink
    scale = config.box / max(ink.shape)
    # The taxicab distance to the paper is at least the Euclidean one, and several times faster
    # to find: when the width it gives is thin enough, so is the true width.
    if _width(ndi.distance_transform_cdt(np.pad(mask, 1), metric="taxicab")) * scale <= config.max_stroke:
        return ink
    width = stroke_width(mask) * scale  # px in the output
    if width <= config.max_stroke:
        return ink
    # Loops a marker filled in make the width read high: the erosion is capped, not the width.
    amount = min(width - config.thin_to, config.max_thinning)  # px of width to take off, in the output
    if scale < 0.5:  # twice the output's resolution moves an edge by fractions of an output pixel
        ink = np.clip(_resize(ink, 2 * scale, Image.Resampling.BOX), 0.0, 1.0)
    unit = config.box / max(ink.shape)  # output px per pixel of `ink`
    ink = np.pad(ink, 1)
    inked = ink >= 0.5
    # Local thickness: the radius of the largest disk inside the strokes that covers each pixel
    # (a disk's radius is its centre's depth); the soft edge beside a stroke takes its stroke's.
    depth = ndi.distance_transform_edt(inked)
    radius = np.zeros(depth.shape)
    for level in np.unique(depth[inked]):
        radius[ndi.distance_transform_edt(depth < level) < level] = level
    _, nearest = ndi.distance_transform_edt(~inked, return_indices=True)
    local_width = 2 * radius[nearest[0], nearest[1]] * unit  # px in the output
    # Each erosion pass takes one pixel off both sides of a stroke: 2 unit px of its width.
    passes = np.clip(np.minimum(amount, local_width - config.min_stroke) / (2 * unit), 0.0, None)
    eroded, level = ink.copy(), ink
    for done in range(1, math.ceil(float(passes.max())) + 1):
        footprint = EIGHT_NEIGHBOURS if done % 2 else CROSS  # alternated: an octagon, near round
        level = ndi.grey_erosion(level, footprint=footprint, mode="constant", cval=0.0)
        eroded += np.clip(passes - (done - 1), 0.0, 1.0) * (level - eroded)  # a fraction of the last pass
    return eroded.astype(np.float32)


def is_binary(ink: np.ndarray) -> bool:
    """Whether a digit's ink is (nearly) black and white only: almost none of it between the levels."""
    inked = ink > 0
    if not inked.any():
        return False
    between = np.count_nonzero((ink > 0.15) & (ink < 0.85))
    return bool(between <= 0.05 * np.count_nonzero(inked))


def soften_edges(field: np.ndarray, sigma: float) -> np.ndarray:
    """A black-and-white digit in its field with soft edges, as MNIST's anti-aliasing gave them:
    a Gaussian of `sigma` output px (symmetric: the centre of mass stays), brightest pixel 1."""
    if sigma < 0.05:
        return field
    soft = blur(field, sigma, "constant")
    return soft / max(float(soft.max()), 1e-6)


def place_by_center_of_mass(digit: np.ndarray, field: int = 28) -> np.ndarray:
    """Paste `digit` into a field x field black image so its centre of mass lands on (field/2, field/2).

    MNIST translated by whole pixels; so do we. A digit whose mass is far off its box's centre is
    kept whole, nearer the edge, rather than cut.
    """
    out = np.zeros((field, field), dtype=np.float32)
    total = float(digit.sum())
    if total <= 0:
        return out
    height, width = digit.shape
    rows, cols = np.arange(height), np.arange(width)
    center_row = float(digit.sum(1) @ rows) / total
    center_col = float(digit.sum(0) @ cols) / total
    top = min(max(round(field / 2 - center_row), 0), field - height)
    left = min(max(round(field / 2 - center_col), 0), field - width)
    out[top : top + height, left : left + width] = digit
    return out / max(float(out.max()), 1e-6)


# --- resizing float images with Pillow --------------------------------------------------------


def _resize(array: np.ndarray, scale: float, resample: Image.Resampling) -> np.ndarray:
    height, width = array.shape
    return _resize_to(array, (max(1, round(height * scale)), max(1, round(width * scale))), resample)


def _resize_to(array: np.ndarray, shape: tuple[int, ...], resample: Image.Resampling) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))  # mode "F"
    return np.asarray(image.resize((shape[1], shape[0]), resample), dtype=np.float32)
