"""MNIST digits rendered as the images people actually give us, for tests and benchmarks.

Each kind takes one 28x28 MNIST digit (uint8, white on black) and returns a PIL image: drawn
large, inverted, off-centre on a big page, photographed on noisy or unevenly lit paper, saved
as JPEG, exported from an HTML canvas with a transparent background, or written in a form's
box, with room to spare or to its edges. `render_number` puts several digits side by side, as
a written number.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

Renderer = Callable[[np.ndarray, np.random.Generator], Image.Image]


def enlarge(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit scaled to size x size as float ink in [0, 1]: thick, smooth strokes."""
    image = Image.fromarray(np.asarray(digit, dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(values, 0.0, 1.0) * 255).round().astype(np.uint8))


def _on_paper(ink: np.ndarray, paper: float | np.ndarray, pen: float) -> np.ndarray:
    """Dark ink on paper: ink 1 gives the pen's gray, ink 0 the paper's."""
    return paper + (pen - paper) * ink


def large(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """400x400, white on black like MNIST itself, strokes 14 times as thick."""
    return _gray(enlarge(digit, 400))


def inverted(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """400x400, black ink on white paper: how people draw."""
    return _gray(1.0 - enlarge(digit, 400))


def off_centre(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 640x480 page with the digit small (70-140 px tall) anywhere on it."""
    size = int(rng.integers(100, 200))
    page = np.full((480, 640), rng.uniform(0.85, 1.0), dtype=np.float32)
    top, left = int(rng.integers(0, 480 - size)), int(rng.integers(0, 640 - size))
    ink = np.zeros_like(page)
    ink[top : top + size, left : left + size] = enlarge(digit, size)
    return _gray(_on_paper(ink, page, rng.uniform(0.0, 0.25)))


def noisy(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """320x320 on gray paper with strong sensor noise (sigma 10% of full scale) and dirt specks."""
    ink = enlarge(digit, 320)
    values = _on_paper(ink, 0.8, 0.2) + rng.normal(0.0, 0.10, ink.shape)
    specks = rng.random(ink.shape) < 0.002
    values[specks] = rng.uniform(0.0, 1.0, int(specks.sum()))
    return _gray(values)


def lighting(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Uneven light on a page: a gradient in a random direction times a vignette, 0.35-1."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    rows, cols = rows / shape[0] - 0.5, cols / shape[1] - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    gradient = 0.5 + np.cos(angle) * cols + np.sin(angle) * rows  # 0-1 across the page, roughly
    vignette = 1.0 - 0.6 * (rows**2 + cols**2)
    return (0.35 + 0.6 * np.clip(gradient, 0, 1)) * vignette


def graded(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """360x360 photo of paper under uneven light: the page is 3 times brighter on one side."""
    ink = enlarge(digit, 360)
    light = lighting(ink.shape, rng)
    values = light * _on_paper(ink, 0.92, 0.12) + rng.normal(0.0, 0.02, ink.shape)
    return _gray(values)


def jpeg(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """300x300 blue ballpoint on cream paper, a little uneven light, saved as JPEG at quality 30."""
    ink = enlarge(digit, 300)[:, :, None]
    paper = (
        np.array([0.94, 0.92, 0.85], np.float32) * (0.85 + 0.15 * lighting(ink.shape[:2], rng))[:, :, None]
    )
    pen = np.array([0.12, 0.18, 0.55], np.float32)
    values = paper + (pen - paper) * ink + rng.normal(0.0, 0.02, paper.shape)
    rgb = Image.fromarray((np.clip(values, 0, 1) * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=30)
    buffer.seek(0)
    return Image.open(buffer)


def rgba(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """400x400 as an HTML canvas exports a drawing: ink colour with alpha, transparent black elsewhere."""
    alpha = (enlarge(digit, 400) * 255).round().astype(np.uint8)
    pixels = np.zeros((400, 400, 4), np.uint8)
    pixels[alpha > 0, :3] = rng.integers(0, 60, 3)  # a dark pen colour
    pixels[:, :, 3] = alpha
    return Image.fromarray(pixels)  # mode RGBA


def _box_lines(side: int, inset: int, line: int) -> np.ndarray:
    """The pixels of a square box's lines, `line` px wide and `inset` px inside a side x side crop."""
    far, near = inset + line, side - inset
    lines = np.zeros((side, side), dtype=bool)
    lines[inset:far, inset:near] = lines[side - far : near, inset:near] = True
    lines[inset:near, inset:far] = lines[inset:near, side - far : near] = True
    return lines


def boxed(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """240x240 crop of a form or a digit sheet: the digit written inside a printed box whose lines
    (2-5 px, black to mid-gray) run 0-12 px inside the crop's edge, on white paper."""
    side = 240
    inset, line = int(rng.integers(0, 13)), int(rng.integers(2, 6))
    page = np.full((side, side), rng.uniform(0.9, 1.0), dtype=np.float32)
    inner = side - 2 * (inset + line)  # the box's inside
    far = inset + line
    page[_box_lines(side, inset, line)] = rng.uniform(0.0, 0.5)
    size = int(rng.uniform(0.8, 1.0) * inner)  # the digit's 28x28 field: its ink keeps a margin
    top, left = (far + int(rng.integers(0, inner - size + 1)) for _ in range(2))
    ink = np.zeros_like(page)
    ink[top : top + size, left : left + size] = enlarge(digit, size)
    return _gray(_on_paper(ink, page, rng.uniform(0.0, 0.2)))


def cramped(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """240x240 crop of a form whose digit was written to the edges of its box: the ink's box,
    scaled to the box's inside, runs across the lines (to their outer edge) at two opposite
    sides or more, and the scan is turned up to 1.5 degrees either way (the box 4-12 px inside
    the crop's edge, whole)."""
    side = 240
    inset, line = int(rng.integers(4, 13)), int(rng.integers(2, 6))  # turned, the box stays in the crop
    paper = float(rng.uniform(0.9, 1.0))
    page = np.full((side, side), paper, dtype=np.float32)
    far = inset + line
    inner = side - 2 * far
    page[_box_lines(side, inset, line)] = rng.uniform(0.0, 0.5)
    rows, cols = np.nonzero(np.asarray(digit) > 127)  # the strokes' core, not their faint edge
    crop = np.asarray(digit, dtype=np.uint8)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    span = inner + 2 * line  # the ink's longer side, from one line's outer edge to the other's
    height, width = (min(span, round(length * span / max(crop.shape))) for length in crop.shape)
    ink = np.zeros_like(page)
    top, left = (inset + int(rng.integers(0, span - length + 1)) for length in (height, width))
    resized = Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC)
    ink[top : top + height, left : left + width] = np.asarray(resized, dtype=np.float32) / 255.0
    scan = _gray(_on_paper(ink, page, rng.uniform(0.0, 0.2)))
    return scan.rotate(rng.uniform(-1.5, 1.5), Image.Resampling.BICUBIC, fillcolor=round(paper * 255))


KINDS: dict[str, Renderer] = {
    "large": large,
    "inverted": inverted,
    "off_centre": off_centre,
    "noisy": noisy,
    "graded": graded,
    "jpeg": jpeg,
    "rgba": rgba,
    "boxed": boxed,
    "cramped": cramped,
}


def render_number(digits: Sequence[np.ndarray], rng: np.random.Generator, scale: int = 4) -> Image.Image:
    """Digits side by side, dark on white paper, with uneven gaps and a little vertical jitter."""
    inks = [enlarge(d, 28 * scale) for d in digits]
    boxes = []
    for ink in inks:
        cols = np.flatnonzero(ink.max(0) > 0.1)
        boxes.append((cols[0], cols[-1] + 1) if cols.size else (0, ink.shape[1]))
    height = 28 * scale
    gaps = [int(rng.uniform(0.1, 0.4) * 20 * scale) for _ in inks]  # between ink boxes, 10-40% of a digit
    width = sum(b[1] - b[0] for b in boxes) + sum(gaps) + 2 * height // 4
    page = np.zeros((height + height // 2, width), np.float32)
    x = height // 4
    for ink, (first, last), gap in zip(inks, boxes, gaps, strict=True):
        y = height // 4 + int(rng.integers(-height // 10, height // 10 + 1))
        region = page[y : y + height, x : x + last - first]
        np.maximum(region, ink[:, first:last], out=region)
        x += last - first + gap
    return _gray(1.0 - page)
