import torch

from mnist_digits.augment import AugmentConfig, random_affine


def _dot(row: int, col: int) -> torch.Tensor:
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, row - 1 : row + 2, col - 1 : col + 2] = 1.0
    return image


def _centroid(images: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(28.0).view(1, 28, 1)
    cols = torch.arange(28.0).view(1, 1, 28)
    mass = images[:, 0].sum((1, 2))
    return torch.stack(
        [(images[:, 0] * rows).sum((1, 2)) / mass, (images[:, 0] * cols).sum((1, 2)) / mass], 1
    )


def test_no_augmentation_returns_the_images_unchanged():
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(random_affine(images, AugmentConfig(0, 0, 0)), images)


def test_zero_ranges_in_the_warp_give_the_identity():
    images = torch.rand(4, 1, 28, 28)
    out = random_affine(images, AugmentConfig(rotation=1e-9, zoom=0, shift=0))
    assert torch.allclose(out, images, atol=1e-4)


def test_shifts_stay_within_ten_percent_and_both_directions_occur():
    images = _dot(14, 14).repeat(400, 1, 1, 1)
    out = random_affine(
        images, AugmentConfig(rotation=0, zoom=0, shift=0.1), torch.Generator().manual_seed(1)
    )
    offsets = _centroid(out) - _centroid(images)
    assert offsets.abs().max() <= 2.8 + 0.05  # 10% of 28 px
    assert offsets.min() < -2.0 and offsets.max() > 2.0


def test_rotation_keeps_the_distance_from_the_centre_and_stays_within_fifteen_degrees():
    images = _dot(4, 14).repeat(400, 1, 1, 1)  # a dot near the top
    out = random_affine(images, AugmentConfig(rotation=15, zoom=0, shift=0), torch.Generator().manual_seed(2))
    centre = torch.tensor([13.5, 13.5])
    before = _centroid(images) - centre
    after = _centroid(out) - centre
    angles = torch.rad2deg(torch.atan2(after[:, 1], -after[:, 0]) - torch.atan2(before[:, 1], -before[:, 0]))
    assert angles.abs().max() <= 15.5
    assert angles.min() < -10 and angles.max() > 10
    assert torch.allclose(after.norm(dim=1), before.norm(dim=1), atol=0.3)


def test_same_seed_same_warp_and_no_flips():
    images = torch.rand(8, 1, 28, 28)
    a = random_affine(images, AugmentConfig(), torch.Generator().manual_seed(3))
    b = random_affine(images, AugmentConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # A dot on the left stays on the left: the warp never mirrors the image.
    left = _dot(14, 5).repeat(200, 1, 1, 1)
    out = random_affine(left, AugmentConfig(), torch.Generator().manual_seed(4))
    assert (_centroid(out)[:, 1] < 13.5).all()
