"""On-the-fly augmentation as batched tensor ops: one warp (Keras' ImageDataGenerator's random
rotation, zoom and shift, optionally with Simard et al.'s elastic distortion, 2003), then the
styles of writing and scanning that MNIST's own digits lack (`random_style`): thin and thick
strokes, slant, ink gaps, blur, low resolution, binarization and aliasing, contrast and gamma,
specks. Every style is off unless its probability is set."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import torch
import torch.nn.functional as F

from .errors import MnistDigitsError
from .model import is_number

GAP_SIDE = 3  # px; each ink gap blanks a square this wide, wider than MNIST's median stroke (2.4 px)
SPECK_SIDE = 2  # px; each speck is a square dot this wide
MAX_STROKE_PX = 4.0  # most stroke width thickening may add; beyond it loops close up
MAX_ROUND_TRIP = 27  # px; the largest low-resolution side (28 would be no round trip)

_PROBABILITY = (lambda v: 0.0 <= v <= 1.0, "a probability from 0 to 1 (0: off), such as 0.5")
# What each style's strength may hold: field, test, what to give.
_STRENGTHS: dict[str, tuple[Callable[[float], bool], str]] = {
    "thicken_px": (lambda v: 0 < v <= MAX_STROKE_PX, f"pixels of width above 0, at most {MAX_STROKE_PX:g}"),
    "thin_px": (lambda v: 0 < v <= 3, "pixels of width above 0, at most 3"),
    "slant_shear": (lambda v: 0 < v <= 1, "a shear above 0, at most 1 (columns per row)"),
    "blur_sigma": (lambda v: 0 < v <= 3, "a Gaussian's sigma in pixels above 0, at most 3"),
    "lowres_side": (
        lambda v: 4 <= v <= MAX_ROUND_TRIP,
        f"a whole number of pixels from 4 to {MAX_ROUND_TRIP}",
    ),
    "binarize_spread": (lambda v: 0 <= v < 0.5, "a spread of the threshold around 0.5, from 0 to below 0.5"),
    "alias_side": (
        lambda v: 4 <= v <= MAX_ROUND_TRIP,
        f"a whole number of pixels from 4 to {MAX_ROUND_TRIP}",
    ),
    "contrast_low": (lambda v: 0 < v <= 1, "the faintest ink's level above 0, at most 1"),
    "gamma_max": (lambda v: 1 <= v <= 5, "the largest exponent, from 1 to 5"),
    "gaps_count": (lambda v: 1 <= v <= 20, "a whole number of gaps from 1 to 20"),
    "specks_count": (lambda v: 1 <= v <= 20, "a whole number of specks from 1 to 20"),
}
# The styles in the order `random_style` applies them (pen, then hand, then scanner, then dirt):
# each is a probability field, and its strength field.
STYLES = (
    ("thicken", "thicken_px"),
    ("thin", "thin_px"),
    ("slant", "slant_shear"),
    ("gaps", "gaps_count"),
    ("blur", "blur_sigma"),
    ("lowres", "lowres_side"),
    ("contrast", "contrast_low"),
    ("gamma", "gamma_max"),
    ("binarize", "binarize_spread"),
    ("alias", "alias_side"),
    ("specks", "specks_count"),
)


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 15.0  # degrees; each image turned by an angle uniform in [-15, 15]
    zoom: float = 0.10  # each axis scaled by a factor uniform in [0.9, 1.1], independently
    shift: float = 0.10  # fraction of width and of height; offsets uniform in [-10%, +10%]
    elastic: float = 0.0  # elastic distortion's strength (Simard's alpha, in pixels); 0: none
    elastic_sigma: float = 4.0  # smoothness of the elastic displacement field, in pixels
    # Styles MNIST lacks, applied after the warp: each field without a unit is the probability that
    # an image gets that style (0: off, in every recipe); its strength is drawn per image up to the next.
    thicken: float = 0.0  # strokes widened (a marker), by max-pooling
    thicken_px: float = 2.0  # px of stroke width added, uniform in [0, 2]
    thin: float = 0.0  # strokes narrowed (a fine pen), by min-pooling
    thin_px: float = 1.0  # px of stroke width taken off, uniform in [0, 1]
    slant: float = 0.0  # a horizontal shear: the top leans right or left
    slant_shear: float = 0.3  # columns moved per row from the centre, uniform in [-0.3, 0.3] (17 degrees)
    gaps: float = 0.0  # breaks in the ink (a dry pen, a faint scan)
    gaps_count: int = 2  # squares of GAP_SIDE px blanked, centred on random ink pixels
    blur: float = 0.0  # a Gaussian blur (out of focus)
    blur_sigma: float = 1.0  # px; sigma uniform in [0, 1]
    lowres: float = 0.0  # a round trip through fewer pixels (averaged down, bilinear back up)
    lowres_side: int = 8  # px; the small side is a whole number uniform in [8, 27]
    contrast: float = 0.0  # fainter ink: every pixel scaled down
    contrast_low: float = 0.4  # the ink's brightest level, uniform in [0.4, 1]
    gamma: float = 0.0  # a gamma curve (pixel ** g): lighter or heavier soft edges
    gamma_max: float = 2.0  # g log-uniform in [1/2, 2]
    binarize: float = 0.0  # thresholded to 0 and 1 (a thresholding app or fax)
    binarize_spread: float = 0.2  # the threshold, uniform in [0.3, 0.7]
    alias: float = 0.0  # nearest-neighbour round trip through fewer pixels: jagged, blocky ink
    alias_side: int = 14  # px; the small side is a whole number uniform in [14, 27]
    specks: float = 0.0  # dust and noise dots anywhere
    specks_count: int = 3  # dots of SPECK_SIDE px, brightness uniform in [0.5, 1]

    def __post_init__(self) -> None:
        if self.elastic < 0 or self.elastic_sigma <= 0:
            raise MnistDigitsError(
                f"elastic distortion needs elastic >= 0 and elastic_sigma > 0, "
                f"got {self.elastic} and {self.elastic_sigma}."
            )
        defaults = {f.name: f.default for f in fields(self)}
        for probability, strength in STYLES:
            value = getattr(self, probability)
            if not is_number(value) or not _PROBABILITY[0](value):
                raise MnistDigitsError(f"augment.{probability} {value!r}: give {_PROBABILITY[1]}.")
            value, (valid, what) = getattr(self, strength), _STRENGTHS[strength]
            whole = isinstance(defaults[strength], int)
            if not is_number(value) or (whole and not isinstance(value, int)) or not valid(value):
                raise MnistDigitsError(
                    f"augment.{strength} {value!r}: give {what}, such as {defaults[strength]}."
                )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def enabled(self) -> bool:
        """Whether the warp moves anything."""
        return any((self.rotation, self.zoom, self.shift, self.elastic))

    @property
    def styled(self) -> bool:
        """Whether any style of `random_style` is on."""
        return any(getattr(self, probability) for probability, _ in STYLES)


def random_warp(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rotate, zoom, shift (and elastically distort) each image of a (N, C, H, W) batch by
    its own random amounts, sampling every image once.

    Pixels that come from outside the image are black, MNIST's background (Keras' default
    'nearest' fill gives the same here, since MNIST's borders are black). No flips: a flipped
    digit is another symbol.
    """
    if not config.enabled:
        return images
    n = images.shape[0]
    # Draw on the CPU generator so that a seed gives the same warps on every device.
    u = torch.rand(5, n, generator=generator).mul_(2).sub_(1).to(images.device)  # U(-1, 1)
    angle = u[0] * math.radians(config.rotation)
    zoom_x, zoom_y = 1 + u[1] * config.zoom, 1 + u[2] * config.zoom
    # affine_grid works in normalized coordinates, where the image spans [-1, 1]: width 2.
    shift_x, shift_y = u[3] * config.shift * 2, u[4] * config.shift * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta maps each output pixel to the input location it samples from.
    theta = torch.stack(
        [
            torch.stack([zoom_x * cos, -zoom_x * sin, shift_x], dim=1),
            torch.stack([zoom_y * sin, zoom_y * cos, shift_y], dim=1),
        ],
        dim=1,
    ).to(images.dtype)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if config.elastic:
        grid = grid + elastic_field(images, config, generator)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def elastic_field(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random smooth displacements for `images`, shape (N, H, W, 2), in affine_grid's units.

    Simard et al.: uniform noise in [-1, 1] per pixel and axis, blurred by a Gaussian of
    `elastic_sigma` pixels, scaled by `elastic` pixels. Strength 34 with sigma 4 moves
    pixels by about 1.4 pixels on average, smoothly, like a hand's wobble.
    """
    n, _, height, width = images.shape
    noise = torch.rand(n, 2, height, width, generator=generator).mul_(2).sub_(1).to(images.device)
    radius = math.ceil(3 * config.elastic_sigma)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * config.elastic_sigma**2))
    kernel = (kernel / kernel.sum()).repeat(2, 1)  # one 1-D Gaussian per axis of the field
    blurred = F.conv2d(noise.to(images.dtype), kernel.view(2, 1, 1, -1), padding=(0, radius), groups=2)
    blurred = F.conv2d(blurred, kernel.view(2, 1, -1, 1), padding=(radius, 0), groups=2)
    # Pixels to affine_grid's normalized units, where the width and the height span 2.
    scale = torch.tensor([2 / width, 2 / height], dtype=images.dtype, device=images.device)
    return blurred.permute(0, 2, 3, 1) * config.elastic * scale


# --- styles MNIST lacks -------------------------------------------------------------------------


def random_style(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each style of `config` given to each image of a (N, C, H, W) batch in [0, 1] with its
    probability, at a strength of its own; the styles on are applied in STYLES' order.

    Every random number is drawn on the CPU generator (so a seed gives the same batch on every
    device) and only for the styles that are on: with all of them off the images come back as
    they are and the generator is untouched. Every image is computed and the chosen ones kept
    (torch.where), so no count of chosen images is read back from a GPU; the random numbers are
    copied to the images' device, as random_warp's are.
    """
    for probability, strength in STYLES:
        p = getattr(config, probability)
        if not p:
            continue
        n = images.shape[0]
        chosen = (torch.rand(n, generator=generator) < p).to(images.device).view(-1, 1, 1, 1)
        styled = _STYLE_OPS[probability](images, getattr(config, strength), generator)
        images = torch.where(chosen, styled, images)
    return images


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """n numbers uniform in [low, high] in `like`'s dtype, drawn and kept on the CPU (the ops
    copy them to the images' device; their largest is read on the CPU, not back from a GPU)."""
    return low + (high - low) * torch.rand(n, generator=generator).to(like.dtype)


def change_stroke_width(images: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """Strokes made `pixels[i]` px wider (positive) or narrower (negative) in image i.

    Grayscale dilation (max-pooling) or erosion (min-pooling) by 3x3 at twice the resolution:
    each pass moves both edges of a stroke out or in by half a pixel, so its width changes by one
    pixel of the original; fractions blend two passes. Soft edges keep their shape, moved.
    """
    n = images.shape[0]
    passes = math.ceil(float(pixels.abs().max())) if n else 0
    if passes == 0:
        return images
    n, c, height, width = images.shape
    pixels = pixels.to(images.device, images.dtype)
    sign = torch.where(pixels < 0, -1.0, 1.0).to(images.dtype).view(-1, 1, 1, 1)
    amount = pixels.abs().view(-1, 1, 1, 1)
    # Min-pooling is max-pooling of the negated image: both directions in one pass per level.
    level = (images * sign).repeat_interleave(2, -2).repeat_interleave(2, -1)  # 2x2 copies of each pixel
    blended = level * (1 - amount).clamp(min=0)
    for done in range(1, passes + 1):
        level = _max_filter(level, 1, 1)
        blended += level * (1 - (amount - done).abs()).clamp(min=0)  # weights of 1 and 0 at whole passes
    means = (blended * sign).view(n, c, height, 2, width, 2).mean((3, 5))  # undoes the 2x2 copies
    return means.clamp_(0, 1)


def _max_filter(images: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Each pixel the largest within a square window from `before` px above and left of it to
    `after` px below and right (max-pooling with stride 1: shifted maxima, far faster on a CPU
    than max_pool2d for one channel)."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (before, after, before, after), value=-math.inf)
    rows = padded[..., :height, :]
    for shift in range(1, before + after + 1):
        rows = torch.maximum(rows, padded[..., shift : shift + height, :])
    out = rows[..., :width]
    for shift in range(1, before + after + 1):
        out = torch.maximum(out, rows[..., shift : shift + width])
    return out


def shear(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Image i slanted by a horizontal shear: each row moved `factors[i]` px right per row above
    the centre (left below it); positive factors lean the top to the right, like /."""
    n, _, height, width = images.shape
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    # Output (x, y) samples the input at (x + s * y); in normalized units a row is 2 / height
    # and a column 2 / width, so s columns per row is s * height / width in normalized units.
    theta[:, 0, 1] = factors.to(images.device, images.dtype) * height / width
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Image i blurred by a Gaussian of `sigmas[i]` px (0: unchanged), in one grouped convolution."""
    n, c, height, width = images.shape
    radius = max(1, math.ceil(3 * float(sigmas.max()))) if n else 1
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    sigma = sigmas.to(images.device, images.dtype).clamp(min=1e-3).view(-1, 1)
    kernels = torch.exp(-(x**2) / (2 * sigma**2))
    kernels = (kernels / kernels.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N * C, 2r + 1)
    flat = images.reshape(1, n * c, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="constant")
    flat = F.conv2d(flat, kernels.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernels.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, height, width)


def round_trip(images: torch.Tensor, sides: torch.Tensor, mode: str = "area") -> torch.Tensor:
    """Image i shrunk to `sides[i]` px on each side and enlarged back: averaged down and bilinear
    back up (mode "area", a low-resolution scan), or nearest-neighbour both ways ("nearest",
    aliased, blocky). One matrix product per image: each resize is linear, R @ image @ R^T."""
    _, _, height, width = images.shape
    rows = _round_trip_matrices(height, mode).to(images.device, images.dtype)[sides.to(images.device)]
    cols = _round_trip_matrices(width, mode).to(images.device, images.dtype)[sides.to(images.device)]
    return (rows.unsqueeze(1) @ images @ cols.transpose(1, 2).unsqueeze(1)).clamp_(0, 1)


@lru_cache(maxsize=8)
def _round_trip_matrices(size: int, mode: str) -> torch.Tensor:
    """(size, size, size): for each small side s < size, the matrix of the 1-D round trip size -> s -> size
    (side 0: the identity)."""
    matrices = torch.zeros(size, size, size, dtype=torch.float64)
    matrices[0] = torch.eye(size)
    pixels = torch.arange(size, dtype=torch.float64)
    for side in range(1, size):
        ratio = size / side  # large pixels per small one
        small = torch.arange(side, dtype=torch.float64)
        if mode == "area":
            # Down: each small pixel the mean of the large ones it covers, by overlap (PIL's BOX).
            overlap = torch.minimum(pixels + 1, (small[:, None] + 1) * ratio) - torch.maximum(
                pixels, small[:, None] * ratio
            )
            down = overlap.clamp(min=0) / ratio  # (side, size)
            # Up: bilinear between the two nearest small pixels' centres, held flat past the ends.
            where = ((pixels + 0.5) / ratio - 0.5).clamp(0, side - 1)
            below = where.floor().long().clamp(max=side - 2) if side > 1 else where.long()
            frac = where - below
            up = torch.zeros(size, side, dtype=torch.float64)
            up[pixels.long(), below] = 1 - frac
            if side > 1:
                up[pixels.long(), below + 1] += frac
        else:
            # Nearest both ways, centre to centre: whole pixels kept or dropped, no new levels.
            down = torch.zeros(side, size, dtype=torch.float64)
            down[small.long(), ((small + 0.5) * ratio).floor().long()] = 1
            up = torch.zeros(size, side, dtype=torch.float64)
            up[pixels.long(), ((pixels + 0.5) / ratio).floor().long().clamp(max=side - 1)] = 1
        matrices[side] = up @ down
    return matrices.float()


def binarize(images: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Image i as 1 where brighter than `thresholds[i]`, 0 elsewhere."""
    return (images > thresholds.to(images.device, images.dtype).view(-1, 1, 1, 1)).to(images.dtype)


def scale_contrast(images: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Image i's pixels times `levels[i]`: its brightest ink at that level, the background still black."""
    return images * levels.to(images.device, images.dtype).view(-1, 1, 1, 1)


def apply_gamma(images: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """Image i's pixels raised to `exponents[i]`: above 1 thins the soft edges, below 1 spreads them."""
    return images.clamp(0, 1) ** exponents.to(images.device, images.dtype).view(-1, 1, 1, 1)


def blank_gaps(images: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`count` squares of GAP_SIDE px blanked in each image, centred on ink pixels (brighter than
    half) chosen uniformly: random scores on the ink, the highest `count` win."""
    n, _, height, width = images.shape
    scores = torch.rand(n, height * width, generator=generator).to(images.device)
    ink = images.amax(1).reshape(n, -1) > 0.5
    scores = torch.where(ink, scores, -1.0)
    top, where = scores.topk(min(count, height * width), dim=1)
    centres = torch.zeros(n, height * width, device=images.device).scatter_(1, where, (top >= 0).float())
    gaps = _max_filter(centres.view(n, 1, height, width), GAP_SIDE // 2, GAP_SIDE // 2)
    return images * (1 - gaps.to(images.dtype))


def add_specks(images: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`count` dots of SPECK_SIDE px at random places in each image, each as bright as U(0.5, 1)."""
    n, _, height, width = images.shape
    where = torch.randint(height * width, (n, count), generator=generator).to(images.device)
    brightness = _uniform(n * count, 0.5, 1.0, generator, images).view(n, count).to(images.device)
    dots = torch.zeros(n, height * width, dtype=images.dtype, device=images.device)
    dots = dots.scatter_reduce(1, where, brightness, reduce="amax")
    dots = _max_filter(dots.view(n, 1, height, width), 0, SPECK_SIDE - 1)
    return torch.maximum(images, dots)


def _sides(n: int, low: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(low, MAX_ROUND_TRIP + 1, (n,), generator=generator)


def _signed(n: int, most: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return _uniform(n, -most, most, generator, like)


_STYLE_OPS: dict[str, Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]] = {
    "thicken": lambda x, px, g: change_stroke_width(x, _uniform(len(x), 0, px, g, x)),
    "thin": lambda x, px, g: change_stroke_width(x, -_uniform(len(x), 0, px, g, x)),
    "slant": lambda x, s, g: shear(x, _signed(len(x), s, g, x)),
    "gaps": lambda x, k, g: blank_gaps(x, int(k), g),
    "blur": lambda x, sigma, g: gaussian_blur(x, _uniform(len(x), 0, sigma, g, x)),
    "lowres": lambda x, side, g: round_trip(x, _sides(len(x), int(side), g), "area"),
    "contrast": lambda x, low, g: scale_contrast(x, _uniform(len(x), low, 1, g, x)),
    "gamma": lambda x, most, g: apply_gamma(x, torch.exp(_signed(len(x), math.log(most), g, x))),
    "binarize": lambda x, spread, g: binarize(x, _uniform(len(x), 0.5 - spread, 0.5 + spread, g, x)),
    "alias": lambda x, side, g: round_trip(x, _sides(len(x), int(side), g), "nearest"),
    "specks": lambda x, k, g: add_specks(x, int(k), g),
}
