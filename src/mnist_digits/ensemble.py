"""Several trained networks read as one, and test-time augmentation.

An Ensemble averages its members' class probabilities over every view of the input (the
image itself, plus a few slightly turned and scaled copies with test-time
augmentation). Its forward pass returns the log of that average, which works wherever
logits do: softmax gives back the averaged probabilities and argmax the answer. So an
ensemble evaluates, predicts, serves and exports like a single DigitNet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .model import DigitNet

# Test-time views: (degrees, scale, shift in pixels x, y). The identity first; the others are
# the kind of change the training augmentation taught the networks to shrug off, kept small.
TTA_VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 0.0, 0.0),
    (-8.0, 1.0, 0.0, 0.0),
    (8.0, 1.0, 0.0, 0.0),
    (0.0, 0.92, 0.0, 0.0),
    (0.0, 1.08, 0.0, 0.0),
)


def warp(images: torch.Tensor, degrees: float, scale: float, dx: float, dy: float) -> torch.Tensor:
    """The same affine warp for every image of a (N, C, H, W) batch: turn, scale (>1 enlarges), shift."""
    if (degrees, scale, dx, dy) == (0.0, 1.0, 0.0, 0.0):
        return images
    n, _, h, w = images.shape
    angle = math.radians(degrees)
    # theta maps output coordinates to input ones, so it holds the inverse of the wanted warp.
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor(
        [[cos, sin, -2 * dx / w], [-sin, cos, -2 * dy / h]], dtype=images.dtype, device=images.device
    )
    grid = F.affine_grid(theta.expand(n, 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Ensemble(nn.Module):
    """Members' probabilities averaged (over test-time views too); outputs log-probabilities (N, 10)."""

    def __init__(self, members: Sequence[DigitNet], tta: bool = False) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.views = TTA_VIEWS if tta else TTA_VIEWS[:1]

    @property
    def tta(self) -> bool:
        return len(self.views) > 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        total = None
        for view in self.views:
            x = warp(images, *view)
            for member in self.members:
                probs = member(x).float().softmax(1)
                total = probs if total is None else total + probs
        assert total is not None
        return (total / (len(self.views) * len(self.members))).clamp_min(1e-12).log()


def members(model: nn.Module) -> list[DigitNet]:
    """The networks of an ensemble, or the one network of a plain model."""
    networks = list(model.members) if isinstance(model, Ensemble) else [model]
    return [n for n in networks if isinstance(n, DigitNet)]


def as_ensemble(model: nn.Module, tta: bool = False) -> nn.Module:
    """The model with test-time augmentation on or off; one network without TTA stays as it is."""
    networks = members(model)
    if len(networks) == 1 and not tta:
        return networks[0]
    return Ensemble(networks, tta)
