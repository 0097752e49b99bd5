import torch

from mnist_digits.augment import AugmentConfig, random_warp


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
    assert torch.equal(random_warp(images, AugmentConfig(0, 0, 0)), images)


def test_zero_ranges_in_the_warp_give_the_identity():
    images = torch.rand(4, 1, 28, 28)
    out = random_warp(images, AugmentConfig(rotation=1e-9, zoom=0, shift=0))
    assert torch.allclose(out, images, atol=1e-4)


def test_shifts_stay_within_ten_percent_and_both_directions_occur():
    images = _dot(14, 14).repeat(400, 1, 1, 1)
    out = random_warp(images, AugmentConfig(rotation=0, zoom=0, shift=0.1), torch.Generator().manual_seed(1))
    offsets = _centroid(out) - _centroid(images)
    assert offsets.abs().max() <= 2.8 + 0.05  # 10% of 28 px
    assert offsets.min() < -2.0 and offsets.max() > 2.0


def test_rotation_keeps_the_distance_from_the_centre_and_stays_within_fifteen_degrees():
    images = _dot(4, 14).repeat(400, 1, 1, 1)  # a dot near the top
    out = random_warp(images, AugmentConfig(rotation=15, zoom=0, shift=0), torch.Generator().manual_seed(2))
    centre = torch.tensor([13.5, 13.5])
    before = _centroid(images) - centre
    after = _centroid(out) - centre
    angles = torch.rad2deg(torch.atan2(after[:, 1], -after[:, 0]) - torch.atan2(before[:, 1], -before[:, 0]))
    assert angles.abs().max() <= 15.5
    assert angles.min() < -10 and angles.max() > 10
    assert torch.allclose(after.norm(dim=1), before.norm(dim=1), atol=0.3)


def test_same_seed_same_warp_and_no_flips():
    images = torch.rand(8, 1, 28, 28)
    a = random_warp(images, AugmentConfig(), torch.Generator().manual_seed(3))
    b = random_warp(images, AugmentConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # A dot on the left stays on the left: the warp never mirrors the image.
    left = _dot(14, 5).repeat(200, 1, 1, 1)
    out = random_warp(left, AugmentConfig(), torch.Generator().manual_seed(4))
    assert (_centroid(out)[:, 1] < 13.5).all()


def test_elastic_distortion_moves_pixels_smoothly_and_keeps_the_digit_in_place():
    from mnist_digits.augment import elastic_field

    images = torch.zeros(64, 1, 28, 28)
    images[:, :, 6:22, 12:16] = 1.0  # a thick vertical bar, like a "1"
    config = AugmentConfig(rotation=0, zoom=0, shift=0, elastic=34.0, elastic_sigma=4.0)
    field = elastic_field(images, config, torch.Generator().manual_seed(5)) * 14  # in pixels
    assert field.shape == (64, 28, 28, 2)
    magnitude = field.norm(dim=-1)
    assert 0.3 < magnitude.mean() < 4.0  # it moves pixels, by a pixel or two
    # Smooth: neighbours move alike, far more alike than independent noise would.
    assert (field[:, 1:] - field[:, :-1]).abs().mean() < 0.2 * field.abs().mean()
    out = random_warp(images, config, torch.Generator().manual_seed(5))
    assert not torch.allclose(out, images, atol=0.05)
    moved = (_centroid(out) - _centroid(images)).norm(dim=1)
    assert moved.mean() < 1.5 and moved.max() < 5  # wobbles, does not wander off
    # Strokes stretch here and squeeze there, but on average keep their ink.
    assert abs(out.sum((1, 2, 3)).mean() / images.sum((1, 2, 3)).mean() - 1) < 0.15


def test_elastic_distortion_is_off_by_default_and_draws_nothing_extra():
    """Without it, a seed gives exactly the warps it gave before elastic existed."""
    images = torch.rand(8, 1, 28, 28)
    generator = torch.Generator().manual_seed(6)
    random_warp(images, AugmentConfig(), generator)
    assert torch.equal(generator.get_state(), _state_after_five_draws(8, seed=6))


def _state_after_five_draws(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    torch.rand(5, n, generator=generator)
    return generator.get_state()


def test_elastic_settings_are_checked():
    import pytest

    from mnist_digits.errors import MnistDigitsError

    with pytest.raises(MnistDigitsError, match="elastic_sigma > 0"):
        AugmentConfig(elastic=10, elastic_sigma=0)
