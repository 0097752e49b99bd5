"""The stress sets: each kind does what it says to real MNIST digits, the same for a seed, and
reads through the preprocessing like anyone's image."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from mnist_digits import pretrained, stress
from mnist_digits.augment import change_stroke_width
from mnist_digits.data import Split
from mnist_digits.errors import MnistDigitsError
from mnist_digits.preprocess import PreprocessConfig, stroke_width
from mnist_digits.recipes import held_out

COUNT = 60  # held-out digits per kind: enough to see each change, seconds to prepare


@pytest.fixture(scope="module")
def validation(mnist) -> Split:
    """The first COUNT of the shipped reference network's own held-out validation digits."""
    split = held_out(pretrained.load("reference").members_metadata, mnist)
    return Split(split.images[:COUNT], split.labels[:COUNT])


def _ink(images) -> np.ndarray:
    return np.array([np.asarray(image, float).sum() / 255 for image in images])


def test_thin_strokes_are_narrow_but_in_full_ink(validation):
    thin = stress.stress_images("thin", validation.images)
    assert [image.shape for image in thin] == [(28, 28)] * COUNT
    # the same strokes' length in half the width or less: half the ink (MNIST's median stroke is 2.4 px)
    assert np.median(_ink(thin) / _ink(validation.images)) < stress.THIN_WIDTH / 2.4 + 0.1
    peaks = np.array([image.max() for image in thin])  # a fine pen's ink is still dark...
    assert (peaks >= 0.7 * 255).all() and np.mean(peaks == 255) >= 0.9  # ...where it covers a pixel
    inside = [
        ((image > 0) <= (original > 0)).all() for image, original in zip(thin, validation.images, strict=True)
    ]
    assert all(inside)  # thinned inside the strokes, never beside them


def test_thin_strokes_keep_each_stroke_and_draw_a_blot_as_its_outline():
    """A stroke thinner than the digit's blot keeps its centre line (one erosion for the whole
    digit wiped it out and left the blot), and the blot, a filled loop, becomes its outline."""
    rows, cols = np.indices((28, 28))
    blot = (rows - 18) ** 2 + (cols - 14) ** 2 <= 6**2  # a filled loop, 13 px across
    stem = (abs(cols - 17) <= 0) & (rows >= 3) & (rows <= 12)  # a pen stroke 1 px wide rising from it
    image = np.where(blot | stem, 255, 0).astype(np.uint8)
    thin = stress.thin_strokes(image)
    assert (thin[4:11, 16:19].max(axis=1) >= 128).all()  # the stroke is there all along its length
    assert thin[16:21, 12:17].max() == 0  # the blot's inside is empty...
    assert (thin[18, 7:10] > 0).any() and (thin[18, 19:22] > 0).any()  # ...and its rim drawn
    assert ((thin > 0) <= ndi.binary_dilation(image > 0)).all()  # never beside the ink


def test_thick_strokes_are_wider_by_the_pixels_asked(validation):
    thick = stress.stress_images("thick", validation.images)
    assert [image.shape for image in thick] == [(28 + 2 * stress.MARGIN,) * 2] * COUNT
    widths = [stroke_width(np.asarray(image) > 127) for image in (*validation.images, *thick)]
    wider = np.median(widths[COUNT:]) - np.median(widths[:COUNT])
    assert stress.THICK_PX - 1 < wider < stress.THICK_PX + 2  # stroke_width reads small widths coarsely
    # about (2.4 + 3) / 2.4 the ink, less where strokes merge, more where soft edges fill in
    assert 1.6 < np.median(_ink(thick) / _ink(validation.images)) < 3.5
    # every digit keeps as many loops as it had, or is left as it is when no width keeps them
    padded = np.pad(validation.images, ((0, 0), (stress.MARGIN,) * 2, (stress.MARGIN,) * 2))
    for image, original in zip(thick, padded, strict=True):
        kept = stress.loops(image > 127) == stress.loops(original > 127, stress.MIN_LOOP)
        assert kept or (image == original).all()


def _as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).float().div(255).view(1, 1, *image.shape)


def _widened(image: np.ndarray, pixels: float) -> np.ndarray:
    widened = change_stroke_width(_as_batch(image), torch.tensor([pixels]))[0, 0]
    return (widened * 255).round().to(torch.uint8).numpy()


def test_a_marker_keeps_small_loops_and_gaps_and_widens_what_it_can():
    """A 0 with a small hole and a C whose ends nearly meet get less than the full width (the full
    width fills the hole and closes the C into an O); a straight stroke gets all of it."""
    rows, cols = np.indices((40, 40))
    radius = np.hypot(rows - 20, cols - 20)
    ring = (radius >= 2.5) & (radius <= 5)  # a loop 4 px across inside a 3 px stroke
    c_shape = (radius >= 6) & (radius <= 8.5) & ~((cols > 20) & (abs(rows - 20) <= 1))  # a 3 px gap
    for shape, want in ((ring, 1), (c_shape, 0)):
        image = np.where(shape, 255, 0).astype(np.uint8)
        assert stress.loops(_widened(image, stress.THICK_PX) > 127) != want  # the full width changes it...
        thick = stress.marker_strokes(_as_batch(image))[0]
        assert stress.loops(thick > 127) == want  # ...the marker keeps it...
        assert np.count_nonzero(thick > 127) > np.count_nonzero(image > 127)  # ...and still widens it
    bar = np.where((abs(cols - 20) <= 1) & (rows >= 10) & (rows <= 30), 255, 0).astype(np.uint8)
    assert (stress.marker_strokes(_as_batch(bar))[0] == _widened(bar, stress.THICK_PX)).all()


def test_binarized_digits_hold_only_black_and_white(validation):
    binarized = np.stack(stress.stress_images("binarized", validation.images))
    assert set(np.unique(binarized)) == {0, 255}
    original = np.pad(validation.images, ((0, 0), (stress.MARGIN,) * 2, (stress.MARGIN,) * 2))
    assert ((binarized > 0) <= (original > 0.25 * 255)).all()  # thresholds stay within 0.3-0.7
    assert ((original > 0.75 * 255) <= (binarized > 0)).all()


def test_slanted_digits_lean_by_the_shear_either_way(validation):
    slanted = np.stack(stress.stress_images("slanted", validation.images)).astype(float)
    original = np.pad(validation.images, ((0, 0), (stress.MARGIN,) * 2, (stress.MARGIN,) * 2)).astype(float)
    rows, cols = np.indices(original.shape[1:])

    def lean(images):  # columns per row of the ink's axis: covariance of column with row over row's variance
        mass = images.sum((1, 2))
        r = (images * rows).sum((1, 2)) / mass
        c = (images * cols).sum((1, 2)) / mass
        cov = (images * (rows - r[:, None, None]) * (cols - c[:, None, None])).sum((1, 2)) / mass
        var = (images * (rows - r[:, None, None]) ** 2).sum((1, 2)) / mass
        return -cov / var  # rows count downwards: a top leaning right has negative covariance

    change = lean(slanted) - lean(original)
    assert (np.abs(change) > 0.8 * stress.SHEAR[0]).all() and (np.abs(change) < 1.2 * stress.SHEAR[1]).all()
    assert (change > 0).any() and (change < 0).any()
    assert slanted[:, :, :2].sum() == 0 and slanted[:, :, -2:].sum() == 0  # the margin keeps all the ink


def test_frame_filling_digits_touch_their_frame_with_no_margin(validation):
    framed = stress.stress_images("16x16", validation.images)
    assert [image.shape for image in framed] == [(16, 16)] * COUNT
    for image in framed:
        rows, cols = np.flatnonzero(image.any(1)), np.flatnonzero(image.any(0))
        assert (rows[0] == 0 and rows[-1] == 15) or (cols[0] == 0 and cols[-1] == 15)


def test_eight_by_eight_digits_are_in_uci_format(validation):
    counts = stress.mnist_as_uci(validation.images)
    assert counts.shape == (COUNT, 8, 8) and counts.min() == 0 and counts.max() == 16
    images = stress.stress_images("8x8", validation.images)
    assert [image.shape for image in images] == [(48, 48)] * COUNT
    # each image is its counts scaled up: its 4x4 blocks' mean ink follows them
    large = images[0][stress.UCI_MARGIN : -stress.UCI_MARGIN, stress.UCI_MARGIN : -stress.UCI_MARGIN]
    blocks = large.reshape(8, 4, 8, 4).mean((1, 3))
    assert np.corrcoef(blocks.ravel(), counts[0].ravel())[0, 1] > 0.9


def test_a_seed_gives_the_same_images_and_another_seed_others(validation):
    for kind in stress.KINDS:
        a, b = (
            stress.stress_images(kind, validation.images, 3),
            stress.stress_images(kind, validation.images, 3),
        )
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), kind
    for kind in ("binarized", "slanted"):  # the kinds that draw
        a, c = (
            stress.stress_images(kind, validation.images, 3),
            stress.stress_images(kind, validation.images, 4),
        )
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True)), kind


def test_every_kind_reads_through_the_preprocessing_and_stays_readable(validation, reference_recognizer):
    sets = stress.stress_sets(validation)
    assert [s.kind for s in sets] == list(stress.KINDS)
    accuracy = {}
    for s in sets:
        assert s.inputs.shape == (COUNT, 28, 28) and s.inputs.dtype == np.float32 and s.found.all()
        assert s.inputs.min() >= 0 and s.inputs.max() <= 1
        held = stress.stress_images(s.kind, validation.images)  # what the inputs were made from
        assert len(s.images) == COUNT and all(
            np.array_equal(a, b) for a, b in zip(s.images, held, strict=True)
        )
        predicted = reference_recognizer.probabilities(s.inputs).argmax(1)
        accuracy[s.kind] = float((predicted == s.labels).mean())
    assert all(value > 0.8 for value in accuracy.values()), accuracy  # changed, not destroyed
    assert accuracy["plain"] >= 0.95


def test_the_stress_sets_are_read_with_the_preprocessing_asked_for(validation):
    [default] = stress.stress_sets(validation, ("binarized",), config=PreprocessConfig(smooth_binary=False))
    [smoothed] = stress.stress_sets(validation, ("binarized",), config=PreprocessConfig(smooth_binary=True))
    assert np.array_equal(smoothed.labels, default.labels) and smoothed.found.all()

    def gray(inputs):  # the share of inked pixels between black and white
        return float(((inputs > 0.05) & (inputs < 0.95)).sum() / (inputs > 0.05).sum())

    assert gray(default.inputs) < 0.05 < 0.3 < gray(smoothed.inputs)


def test_bad_kinds_and_inputs_are_refused(validation):
    with pytest.raises(MnistDigitsError, match="unknown stress kind 'bold'; choose one of plain, thin"):
        stress.stress_images("bold", validation.images)
    with pytest.raises(MnistDigitsError, match=r"\(N, 28, 28\) uint8; got \(4, 28, 28\) float64"):
        stress.stress_images("thin", np.zeros((4, 28, 28)))
