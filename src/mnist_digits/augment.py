"""On-the-fly augmentation as one batched affine warp, like Keras' ImageDataGenerator."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation: float = 15.0  # degrees; each image turned by an angle uniform in [-15, 15]
    zoom: float = 0.10  # each axis scaled by a factor uniform in [0.9, 1.1], independently
    shift: float = 0.10  # fraction of width and of height; offsets uniform in [-10%, +10%]

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def enabled(self) -> bool:
        return any((self.rotation, self.zoom, self.shift))


def random_affine(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rotate, zoom and shift each image of a (N, C, H, W) batch by its own random amounts.

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
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
