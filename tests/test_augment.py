import math

import pytest
import torch

from mnist_digits import augment
from mnist_digits.augment import STYLES, AugmentConfig, random_style, random_warp
from mnist_digits.errors import MnistDigitsError


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
    with pytest.raises(MnistDigitsError, match="elastic_sigma > 0"):
        AugmentConfig(elastic=10, elastic_sigma=0)


# --- styles MNIST lacks ---------------------------------------------------------------------------

ALL_ON = AugmentConfig(**{probability: 1.0 for probability, _ in STYLES})


def _bar(n: int = 1, width: int = 3) -> torch.Tensor:
    """A hard vertical stroke, rows 4-23, `width` px wide from column 12."""
    images = torch.zeros(n, 1, 28, 28)
    images[:, :, 4:24, 12 : 12 + width] = 1.0
    return images


def _ink_per_row(images: torch.Tensor, row: int = 14) -> torch.Tensor:
    return images[:, 0, row].sum(1)


@pytest.mark.parametrize("pixels", [1.0, 2.0, 3.0, 1.5, 0.25])
def test_a_thickened_stroke_is_wider_by_the_pixels_asked(pixels):
    out = augment.change_stroke_width(_bar(2), torch.tensor([pixels, 0.0]))
    assert _ink_per_row(out).tolist() == pytest.approx([3 + pixels, 3.0], abs=1e-4)
    # it grows on both sides, staying centred on the stroke
    cols = torch.arange(28.0)
    assert float((out[0, 0, 14] * cols).sum() / out[0, 0, 14].sum()) == pytest.approx(13.0, abs=1e-4)
    assert torch.equal(out[1], _bar(1)[0])  # 0 px: unchanged


@pytest.mark.parametrize("pixels", [1.0, 2.0, 0.5])
def test_a_thinned_stroke_is_narrower_by_the_pixels_asked(pixels):
    out = augment.change_stroke_width(_bar(1, width=4), torch.tensor([-pixels]))
    assert _ink_per_row(out).item() == pytest.approx(4 - pixels, abs=1e-4)
    assert out[0, 0, 14, :12].sum() == 0 and out[0, 0, 14, 16:].sum() == 0  # nothing outside the stroke


def test_binarized_values_are_only_zero_and_one_and_follow_the_threshold():
    images = torch.rand(4, 1, 28, 28)
    thresholds = torch.tensor([0.3, 0.5, 0.7, 0.5])
    out = augment.binarize(images, thresholds)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    for i, t in enumerate(thresholds):
        assert torch.equal(out[i].bool(), images[i] > t)
    styled = random_style(images, AugmentConfig(binarize=1.0), torch.Generator().manual_seed(0))
    assert set(styled.unique().tolist()) == {0.0, 1.0}


def _digit_like(n: int) -> torch.Tensor:
    """Soft rings and bars: strokes with detail finer than 8 px."""
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    images = []
    for i in range(n):
        radius = 5 + i % 4
        ring = (1 - ((rows - 14) ** 2 + (cols - 14) ** 2).sqrt().sub(radius).abs() / 1.5).clamp(0, 1)
        images.append(torch.maximum(ring, ((cols - 8 - i % 5).abs() < 1).float() * (rows > 6) * (rows < 22)))
    return torch.stack(images).unsqueeze(1)


@pytest.mark.parametrize("mode", ["area", "nearest"])
def test_a_low_resolution_round_trip_loses_detail_but_keeps_the_ink(mode):
    images = _digit_like(8)
    small = augment.round_trip(images, torch.full((8,), 8), mode)
    near = augment.round_trip(images, torch.full((8,), 20), mode)
    assert small.shape == images.shape

    def detail(x: torch.Tensor) -> torch.Tensor:  # the ink's edges: differences of neighbours
        return (x[..., 1:] - x[..., :-1]).abs().sum()

    assert (small - images).abs().mean() > 1.5 * (near - images).abs().mean() > 0
    assert detail(small) < 0.8 * detail(near) < 0.8 * detail(images)  # fewer pixels, less detail
    if mode == "area":  # averaged down, bilinear back up: the same ink, spread
        assert torch.allclose(small.sum((1, 2, 3)), images.sum((1, 2, 3)), rtol=0.03)
    else:  # nearest-neighbour keeps or drops whole pixels: aliased, with no new in-between levels
        assert set(small.unique().tolist()) <= set(images.unique().tolist())
    assert torch.equal(augment.round_trip(images, torch.zeros(8, dtype=torch.long)), images)  # side 0: as is


def test_shear_moves_the_top_row_by_the_expected_amount():
    images = torch.zeros(2, 1, 28, 28)
    images[:, 0, 1, 12:16] = 1.0  # a short dash near the top: row 1, 12.5 rows above the centre (13.5)
    images[:, 0, 26, 12:16] = 1.0  # and one near the bottom, 12.5 rows below
    out = augment.shear(images, torch.tensor([0.2, -0.2]))
    cols = torch.arange(28.0)

    def centre(image: torch.Tensor, row: int) -> float:
        return float((image[row] * cols).sum() / image[row].sum())

    assert centre(out[0, 0], 1) == pytest.approx(13.5 + 0.2 * 12.5, abs=0.05)  # top leans right: /
    assert centre(out[0, 0], 26) == pytest.approx(13.5 - 0.2 * 12.5, abs=0.05)
    assert centre(out[1, 0], 1) == pytest.approx(13.5 - 0.2 * 12.5, abs=0.05)  # and left: \
    assert out[:, 0, 13:15].sum() == 0  # the middle rows stay empty: nothing moved vertically


def test_blur_spreads_ink_and_keeps_it():
    out = augment.gaussian_blur(_bar(2), torch.tensor([1.0, 0.0]))
    assert torch.allclose(out[1], _bar(1)[0], atol=1e-6)  # sigma 0: unchanged
    assert out[0, 0, 14, 10] > 0.05 and out[0, 0, 14, 13] < 0.9  # spread sideways, the core dimmer
    assert out[0].sum() == pytest.approx(_bar(1).sum().item(), rel=0.02)


def test_gaps_blank_ink_and_specks_add_dots_off_it():
    generator = torch.Generator().manual_seed(0)
    images = _bar(64)
    gapped = augment.blank_gaps(images, 2, generator)
    lost = images.sum((1, 2, 3)) - gapped.sum((1, 2, 3))
    assert (lost >= augment.GAP_SIDE).all() and (lost <= 2 * augment.GAP_SIDE**2).all()
    assert (gapped <= images).all()  # only ink is taken away
    blank = torch.zeros(64, 1, 28, 28)
    assert torch.equal(augment.blank_gaps(blank, 2, generator), blank)  # no ink: nothing to break
    specked = augment.add_specks(blank, 3, generator)
    dots = (specked > 0).sum((1, 2, 3))
    assert (dots >= augment.SPECK_SIDE**2).all() and (dots <= 3 * augment.SPECK_SIDE**2).all()
    assert specked.max() <= 1 and specked[specked > 0].min() >= 0.5


def test_contrast_and_gamma_change_levels_not_shapes():
    images = _digit_like(2)
    faint = augment.scale_contrast(images, torch.tensor([0.4, 1.0]))
    assert faint[0].max() == pytest.approx(0.4 * images[0].max().item()) and torch.equal(faint[1], images[1])
    curved = augment.apply_gamma(images, torch.tensor([2.0, 0.5]))
    assert torch.equal(curved > 0, images > 0) and torch.equal(curved == 1, images == 1)
    soft = (images > 0) & (images < 1)
    assert (curved[0][soft[0]] < images[0][soft[0]]).all() and (curved[1][soft[1]] > images[1][soft[1]]).all()


@pytest.mark.parametrize("style", [probability for probability, _ in STYLES])
def test_each_style_at_probability_0_is_the_identity_and_at_1_always_applies(style):
    images = _digit_like(16)
    generator = torch.Generator().manual_seed(7)
    state = generator.get_state()
    assert torch.equal(random_style(images, AugmentConfig(), generator), images)
    assert torch.equal(generator.get_state(), state)  # all off: draws nothing, as before styles existed
    config = AugmentConfig(**{style: 1.0})
    out = random_style(images, config, torch.Generator().manual_seed(7))
    # Every image styled: the same as the style's op on the whole batch, after the draw that chose them.
    generator = torch.Generator().manual_seed(7)
    torch.rand(16, generator=generator)
    strength = getattr(config, dict(STYLES)[style])
    assert torch.equal(out, augment._STYLE_OPS[style](images, strength, generator))
    changed = (out - images).abs().amax((1, 2, 3)) > 1e-3  # strengths near 0 may change little
    assert changed.float().mean() > 0.75, f"{style} changed {int(changed.sum())} of 16 images"
    half = random_style(_digit_like(200), AugmentConfig(**{style: 0.5}), torch.Generator().manual_seed(8))
    share = ((half - _digit_like(200)).abs().amax((1, 2, 3)) > 1e-3).float().mean()
    assert 0.3 < share < 0.7


def test_styles_are_reproducible_from_a_seed_and_vary_between_images():
    images = _digit_like(32)
    a = random_style(images, ALL_ON, torch.Generator().manual_seed(9))
    b = random_style(images, ALL_ON, torch.Generator().manual_seed(9))
    c = random_style(images, ALL_ON, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == images.shape
    same_input = random_style(_digit_like(1).repeat(8, 1, 1, 1), ALL_ON, torch.Generator().manual_seed(9))
    assert not torch.equal(same_input[0], same_input[1])  # each image its own strengths


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_styles_on_a_gpu_give_the_cpu_batch():
    images = _digit_like(32)
    cpu = random_style(images, ALL_ON, torch.Generator().manual_seed(11))
    gpu = random_style(images.cuda(), ALL_ON, torch.Generator().manual_seed(11))
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-4)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"thicken": 1.5}, "augment.thicken 1.5: give a probability from 0 to 1"),
        ({"thin": -0.1}, "augment.thin -0.1: give a probability"),
        ({"thicken_px": 0}, "augment.thicken_px 0: give pixels of width above 0, at most 4"),
        ({"thin_px": 5.0}, "augment.thin_px 5.0: give pixels of width above 0, at most 3"),
        ({"slant_shear": 2.0}, "augment.slant_shear 2.0: give a shear"),
        ({"lowres_side": 2}, "augment.lowres_side 2: give a whole number of pixels from 4 to 27"),
        ({"lowres_side": 8.5}, "augment.lowres_side 8.5: give a whole number"),
        ({"binarize_spread": 0.5}, "augment.binarize_spread 0.5: give a spread"),
        ({"gamma_max": 0.5}, "augment.gamma_max 0.5: give the largest exponent, from 1 to 5"),
        ({"specks_count": 0}, "augment.specks_count 0: give a whole number of specks"),
        ({"blur_sigma": math.nan}, "augment.blur_sigma nan: give a Gaussian's sigma"),
    ],
)
def test_style_settings_are_checked_with_one_line_errors(setting, message):
    with pytest.raises(MnistDigitsError, match=message) as caught:
        AugmentConfig(**setting)
    assert "\n" not in str(caught.value) and "such as" in str(caught.value)


def test_every_style_is_off_by_default_and_in_every_recipe_but_robust():
    from mnist_digits.recipes import RECIPES

    assert not AugmentConfig().styled and ALL_ON.styled
    assert [name for name, config in RECIPES.items() if config.augment.styled] == ["robust"]


def test_an_augment_config_stored_before_styles_existed_reads_with_them_off():
    stored = AugmentConfig(rotation=8.0, zoom=0.06, shift=0.06).to_dict()
    for probability, strength in STYLES:
        del stored[probability], stored[strength]
    assert AugmentConfig(**stored) == AugmentConfig(rotation=8.0, zoom=0.06, shift=0.06)


def test_styles_are_reachable_from_train_set():
    from mnist_digits.recipes import recipe, with_settings

    config = with_settings(
        recipe("fast"), ["augment.thicken=0.3", "augment.thicken_px=3", "augment.lowres_side=12"]
    )
    assert (config.augment.thicken, config.augment.thicken_px, config.augment.lowres_side) == (0.3, 3.0, 12)
    with pytest.raises(MnistDigitsError, match=r"augment\.alias 2\.0: give a probability"):
        with_settings(recipe("fast"), ["augment.alias=2"])


def test_a_tiny_training_runs_with_every_style_on(mnist, tmp_path, monkeypatch):
    """The training step styles every batch after the warp, and a network trains on them."""
    from dataclasses import replace

    from mnist_digits import recipes, train
    from mnist_digits.data import Mnist, Split
    from mnist_digits.model import ModelConfig

    tiny = Mnist(
        Split(mnist.train.images[:480], mnist.train.labels[:480]),
        Split(mnist.test.images[:10], mnist.test.labels[:10]),
        mnist.directory,
        mnist.sha256,
    )
    config = recipes.TrainConfig(
        epochs=1, batch_size=32, val_fraction=0.2, model=ModelConfig(channels=(8, 16, 16), hidden=32)
    )
    config = replace(config, augment=replace(config.augment, **{p: 0.5 for p, _ in STYLES}))
    batches = []

    def watched(images, augment_config, generator):
        styled = random_style(images, augment_config, generator)
        batches.append(bool((styled != images).any()))
        return styled

    monkeypatch.setattr(train, "random_style", watched)
    result = train.fit(config, tiny, tmp_path / "run", progress=False, log=lambda m: None)
    assert len(batches) == 12 and all(batches)  # 384 training images in batches of 32, each styled
    assert math.isfinite(result.history[0].train_loss) and result.best_val_accuracy is not None
