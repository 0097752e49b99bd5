"""On-the-fly augmentation as one batched warp: Keras' ImageDataGenerator's random rotation,
zoom and shift, optionally with Simard et al.'s elastic distortion (2003) on top."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .errors import MnistDigitsError


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 15.0  # degrees; each image turned by an angle uniform in [-15, 15]
    zoom: float = 0.10  # each axis scaled by a factor uniform in [0.9, 1.1], independently
    shift: float = 0.10  # fraction of width and of height; offsets uniform in [-10%, +10%]
    elastic: float = 0.0  # elastic distortion's strength (Simard's alpha, in pixels); 0: none
    elastic_sigma: float = 4.0  # smoothness of the elastic displacement field, in pixels

    def __post_init__(self) -> None:
        if self.elastic < 0 or self.elastic_sigma <= 0:
            raise MnistDigitsError(
                f"elastic distortion needs elastic >= 0 and elastic_sigma > 0, "
                f"got {self.elastic} and {self.elastic_sigma}."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def enabled(self) -> bool:
        return any((self.rotation, self.zoom, self.shift, self.elastic))


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
