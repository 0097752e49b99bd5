"""Each preprocessing step, and the whole path from realistic images to MNIST-like inputs."""

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from mnist_digits import filters, grouping, preprocess, render
from mnist_digits.preprocess import (
    Blob,
    group_blobs,
    is_dark_on_light,
    place_by_center_of_mass,
    segment_digits,
    stroke_width,
)


def center_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(image.shape)
    return float((rows * image).sum() / image.sum()), float((cols * image).sum() / image.sum())


def ink_box(image: np.ndarray, level: float = 0.0) -> tuple[int, int]:
    """Height and width of the pixels above `level`."""
    rows, cols = np.flatnonzero((image > level).any(1)), np.flatnonzero((image > level).any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def drawing(shapes, size=(400, 300), width=12, paper=255, ink=0) -> Image.Image:
    """Lines drawn with a round pen, like a finger or a marker on a canvas."""
    image = Image.new("L", size, paper)
    pen = ImageDraw.Draw(image)
    for points in shapes:
        pen.line(points, fill=ink, width=width, joint="curve")
    return image


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Of two digits, aligned as well as a shift of up to 1 px allows (centring rounds to whole pixels)."""
    shifted = (np.roll(b, (dy, dx), axis=(0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return max(float(np.corrcoef(a.ravel(), s.ravel())[0, 1]) for s in shifted)


# --- the steps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("paper", "ink", "dark"), [(255, 0, True), (0, 255, False), (200, 60, True)])
def test_polarity_is_detected(paper, ink, dark):
    gray = np.asarray(drawing([[(100, 50), (120, 250)]], paper=paper, ink=ink), np.float32) / 255
    assert is_dark_on_light(gray) is dark


def test_polarity_survives_uneven_light():
    light = render.lighting((300, 300), np.random.default_rng(0))  # one side 3x brighter than the other
    ink = np.asarray(drawing([[(120, 60), (160, 240)]], size=(300, 300), paper=0, ink=255), np.float32) / 255
    photo = light * (0.9 - 0.75 * ink)
    assert is_dark_on_light(photo)
    assert not is_dark_on_light(1 - photo)


@pytest.mark.parametrize("line", [1, 3, 6])
def test_polarity_survives_a_box_cropped_at_its_border(test_digits, line):
    """A form's box along the image's edge once filled half the windows of the background there,
    and the white paper beside it counted as light ink."""
    for digit in test_digits.images[:10]:
        page = 1 - render.enlarge(digit, 112)
        page[:line], page[-line:], page[:, :line], page[:, -line:] = 0.1, 0.1, 0.1, 0.1
        assert is_dark_on_light(page)
        assert not is_dark_on_light(1 - page)


def test_a_box_drawn_around_the_digit_is_not_part_of_it(test_digits):
    for index, digit in enumerate(test_digits.images[:10]):
        for inset in (0, 5, 10):
            page = np.full((160, 160), 0.95, np.float32)
            page[inset : -inset or None, inset : -inset or None][[0, 1, -2, -1]] = 0.2
            page[inset : -inset or None, inset : -inset or None][:, [0, 1, -2, -1]] = 0.2
            page[24:136, 24:136] -= 0.9 * render.enlarge(digit, 112)
            ink_map = preprocess.find_ink(page)
            assert ink_map is not None and len(ink_map.blobs) >= 1, (index, inset)
            box = grouping.union(ink_map.blobs)
            assert box.top >= 24 and box.bottom <= 136 and box.left >= 24 and box.right <= 136, (index, inset)
            image = preprocess.preprocess(page)
            assert correlation(image, preprocess.preprocess(digit)) > 0.9, (index, inset)


def test_a_digit_written_to_the_edges_of_its_box_is_taken_out_of_it(test_digits, monkeypatch):
    """Its strokes run into the lines, so box and digit are one blob: the lines come off it, the
    digit stays (the scan a little turned). Without that, the box was read as part of the digit."""
    rng = np.random.default_rng(3)
    pages = [np.asarray(render.cramped(digit, rng), np.float32) / 255 for digit in test_digits.images[:20]]
    clean = [preprocess.preprocess(digit) for digit in test_digits.images[:20]]
    taken_off = []
    for index, page in enumerate(pages):
        ink_map = preprocess.find_ink(page)
        assert ink_map is not None, index
        assert all(preprocess.box_lines(b, ink_map.labels) is None for b in ink_map.blobs), index
        taken_off.append(correlation(preprocess.preprocess(page), clean[index]))
        assert taken_off[-1] > 0.85, index
    monkeypatch.setattr(preprocess, "take_off_box_lines", lambda blobs, labels, count: blobs)
    kept = []
    for page, digit in zip(pages, clean, strict=True):
        ink_map = preprocess.find_ink(page)
        assert ink_map is not None
        assert any(preprocess.box_lines(b, ink_map.labels) is not None for b in ink_map.blobs)  # joined
        kept.append(correlation(preprocess.preprocess(page), digit))
    assert np.mean(kept) < np.mean(taken_off) - 0.05 and min(kept) < 0.6


@pytest.mark.parametrize("kind", ["large", "inverted", "jpeg"])
def test_no_digit_is_taken_for_lines_of_a_box(test_digits, kind):
    """A 7's straight bar, a 4's stem, a 1's base: none is three thin straight sides of a box."""
    rng = np.random.default_rng(0)
    for index, digit in enumerate(test_digits.images[:60]):
        ink_map = preprocess.find_ink(render.KINDS[kind](digit, rng))
        assert ink_map is not None
        assert all(preprocess.box_lines(b, ink_map.labels) is None for b in ink_map.blobs), index


def test_a_square_drawn_with_a_fine_pen_is_a_zero_not_an_empty_box():
    """Thin straight sides and nothing inside them: a squarish 0, which stays as it was drawn."""
    square = np.full((200, 200), 255, np.uint8)
    square[30:170, 50:150] = 0
    square[33:167, 53:147] = 255  # 3 px strokes: a form's line would be this thin
    ink_map = preprocess.find_ink(square)
    assert ink_map is not None and len(ink_map.blobs) == 1
    box = grouping.union(ink_map.blobs)
    assert (box.height, box.width) == (140, 100)


def test_a_loop_holding_a_speck_is_a_digit_not_a_box(test_digits):
    """0s, 6s, 8s and 9s with ink in a loop, and squarish 0s, stay digits."""
    pairs = zip(test_digits.images, test_digits.labels, strict=True)
    loops = [d for d, label in pairs if label in (0, 6, 8, 9)]
    assert len(loops) >= 20
    for digit in loops[:20]:
        page = 1 - render.enlarge(digit, 112)
        holes = ndi.binary_fill_holes(page < 0.5) & (page >= 0.5)
        if not holes.any():
            continue
        row, col = (int(np.median(axis)) for axis in np.nonzero(holes))
        page[row - 1 : row + 2, col - 1 : col + 2] = 0.0  # a dot of ink in the loop
        ink_map = preprocess.find_ink(page)
        assert ink_map is not None
        assert not any(preprocess.is_box_around(b, ink_map.blobs, ink_map.labels) for b in ink_map.blobs)
    square = np.full((120, 120), 255, np.uint8)
    square[20:100, 30:90] = 0
    square[30:90, 40:80] = 255  # a 0 drawn as a rectangle, 10 px strokes...
    square[55:65, 55:65] = 0  # ...round a blot
    ink_map = preprocess.find_ink(square)
    assert ink_map is not None and len(ink_map.blobs) == 2
    assert not any(preprocess.is_box_around(b, ink_map.blobs, ink_map.labels) for b in ink_map.blobs)


def test_longest_side_is_20_px_and_the_aspect_ratio_is_kept():
    tall = preprocess.preprocess(drawing([[(200, 40), (200, 260)]], width=40))  # 260 x 40 px stroke
    assert tall is not None
    height, width = ink_box(tall)
    assert height == 20 and width in (3, 4, 5)  # 40/260 x 20 = 3.1, plus anti-aliasing
    wide = preprocess.preprocess(drawing([[(60, 150), (340, 150)]], width=56))  # 336 x 56 px
    assert wide is not None
    assert ink_box(wide) in ((3, 20), (4, 20), (5, 20))


@pytest.mark.parametrize("corner", [(30, 30), (330, 30), (30, 230), (300, 200)])
def test_center_of_mass_lands_on_the_centre_wherever_the_digit_was(corner):
    x, y = corner
    seven = drawing([[(x, y), (x + 60, y), (x + 25, y + 70)]], width=10)
    image = preprocess.preprocess(seven)
    assert image is not None and image.shape == (28, 28) and image.dtype == np.float32
    row, col = center_of_mass(image)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    assert image.max() == pytest.approx(1.0) and image.min() == 0.0


def test_place_by_center_of_mass_puts_the_mass_at_14_14():
    digit = np.full((20, 12), 0.25, np.float32)
    digit[:10] = 1.0  # heavy at the top: the box must sit lower than centred
    placed = place_by_center_of_mass(digit)
    row, col = center_of_mass(placed)
    assert abs(row - 14) <= 0.5 and abs(col - 14) <= 0.5
    assert ink_box(placed) == (20, 12)


def test_a_digit_whose_mass_is_far_off_centre_is_kept_whole():
    digit = np.zeros((20, 10), np.float32)
    digit[:2] = 1.0  # centring its mass would push the box 6 px out of the field
    placed = place_by_center_of_mass(digit)
    assert placed.sum() == pytest.approx(digit.sum())
    assert np.flatnonzero(placed.any(1))[0] == 8  # the 20 px box as low as it goes: rows 8-27


def test_stroke_width_of_a_bar():
    bar = np.zeros((100, 100), bool)
    bar[10:90, 45:55] = True
    assert stroke_width(bar) == pytest.approx(10, abs=1.0)


def test_a_fine_pen_on_a_big_canvas_is_thickened_to_mnist_strokes():
    thin = preprocess.preprocess(drawing([[(200, 30), (200, 270)], [(170, 60), (200, 30)]], width=2))
    thick = preprocess.preprocess(drawing([[(200, 30), (200, 270)], [(170, 60), (200, 30)]], width=24))
    assert thin is not None and thick is not None
    # Without thickening the 2 px pen would shrink to a 0.2 px hairline of faint gray.
    assert (thin > 0.5).sum() >= 0.6 * (thick > 0.5).sum()
    assert thin.max() == pytest.approx(1.0)


def test_mnist_digits_come_back_almost_unchanged(test_digits):
    """A 28x28 MNIST digit is already in the model's form: preprocessing must not disturb it."""
    for digit in test_digits.images[:50]:
        image = preprocess.preprocess(digit)
        assert image is not None
        assert correlation(image, digit / 255.0) > 0.9


@pytest.mark.parametrize("kind", sorted(render.KINDS))
def test_every_kind_of_realistic_image_becomes_its_mnist_digit(test_digits, kind):
    rng = np.random.default_rng(7)
    scores = []
    for digit in test_digits.images[:20]:
        image = preprocess.preprocess(render.KINDS[kind](digit, rng))
        assert image is not None
        scores.append(correlation(image, preprocess.preprocess(digit)))
        row, col = center_of_mass(image)
        assert abs(row - 14) <= 1 and abs(col - 14) <= 1
        assert ink_box(image)[0] == 20 or ink_box(image)[1] == 20
    assert np.median(scores) > 0.85


def test_noise_on_the_paper_becomes_exact_zero(test_digits):
    for index, digit in enumerate(test_digits.images[:10]):
        noisy = preprocess.preprocess(render.noisy(digit, np.random.default_rng(index)))
        clean = preprocess.preprocess(render.inverted(digit, np.random.default_rng(index)))
        assert noisy is not None and clean is not None
        away = ~ndi.binary_dilation(clean > 0, iterations=2)
        assert (noisy[away] == 0).all()  # MNIST's paper is exactly black


# --- meeting other writers' digits half way: each change on its own ---------------------------------

# Each change alone, against none of them (the defaults keep those validation supports).
NONE = preprocess.PreprocessConfig(thin_thick_strokes=False, frame_filling=False, smooth_binary=False)
THINNING = dataclasses.replace(NONE, thin_thick_strokes=True)
FRAME_FILLING = dataclasses.replace(NONE, frame_filling=True)
SMOOTHING = dataclasses.replace(NONE, smooth_binary=True)
MNIST_99TH_STROKE = 4.82  # px: MNIST's training digits at 28x28 (PreprocessConfig's comment)


def soft_share(image: np.ndarray) -> float:
    """Of the inked pixels, the share that are gray rather than black or white: soft edges."""
    return float(((image > 0.05) & (image < 0.95)).sum() / (image > 0.05).sum())


@pytest.mark.parametrize(
    ("shape", "size", "pen"),
    [
        ([(9, 6), (21, 6), (21, 24), (9, 24), (9, 6)], (32, 32), 6),  # a 6 px marker at MNIST's size
        ([(100, 80), (300, 80), (180, 330)], (400, 400), 100),  # a marker's 7 on a big canvas
    ],
    ids=["small", "big-canvas"],
)
def test_a_marker_drawing_is_thinned_to_mnist_strokes(shape, size, pen):
    image = drawing([shape], size=size, width=pen)
    thick, thinned = preprocess.preprocess(image, NONE), preprocess.preprocess(image, THINNING)
    assert thick is not None and thinned is not None
    assert stroke_width(thick > 0.5) > MNIST_99TH_STROKE  # wider than nearly all of MNIST without it
    assert 2.0 < stroke_width(thinned > 0.5) < MNIST_99TH_STROKE
    assert max(ink_box(thinned, 0.1)) == 20  # the thinner ink's own box is scaled to 20 px
    row, col = center_of_mass(thinned)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1
    assert soft_share(thinned) > 0.1  # soft edges eroded, not cut off


def test_thinning_never_erases_a_fine_stroke_of_a_thick_digit():
    image = drawing([[(16, 4), (16, 36)]], size=(48, 40), width=9)
    ImageDraw.Draw(image).line([(20, 20), (44, 20)], fill=0, width=2)  # a fine stroke off the marker's
    before, after = preprocess.preprocess(image, NONE), preprocess.preprocess(image, THINNING)
    assert before is not None and after is not None and not np.array_equal(before, after)
    fine = slice(None), slice(17, None)  # columns right of the thick bar
    assert after[fine].max() > 0.8 and after[fine].sum() > 0.8 * before[fine].sum()


def frame_filling_one() -> np.ndarray:
    """A 16x16 scan whose stroke runs from its top edge to its bottom, beside a small separate mark."""
    scan = np.zeros((16, 16), np.uint8)
    scan[:, 6:9] = 255
    scan[5:8, 11:13] = 255
    return scan


def test_a_frame_filling_small_digit_keeps_all_its_ink_and_is_boxed_like_mnist():
    scan = frame_filling_one()
    before, after = preprocess.preprocess(scan, NONE), preprocess.preprocess(scan, FRAME_FILLING)
    assert before is not None and after is not None
    assert after.shape == (28, 28)
    # Without the change the stroke touching the frame was taken for a photo's border clutter.
    assert correlation(before, after) < 0.8
    height, width = ink_box(after, 0.25)
    assert height == 20 and width < 20  # the ink's box, scaled as MNIST's: 20 px on its longest side
    stroke, mark = after[:, 10:17], after[:, 17:]  # both pieces of ink are there, the stroke's whole length
    assert (stroke > 0.5).any(1).sum() >= 19 and (mark > 0.5).sum() >= 4
    row, col = center_of_mass(after)
    assert abs(row - 14) <= 1 and abs(col - 14) <= 1


def test_segments_of_a_frame_filling_scan_are_boxed_in_its_own_pixels():
    scan = frame_filling_one()
    boxes = [segment.box for segment in segment_digits(scan, FRAME_FILLING)]
    assert (6, 0, 9, 16) in boxes  # the stroke's, top edge to bottom edge: not the margin's
    assert all(0 <= left < right <= 16 and 0 <= top < bottom <= 16 for left, top, right, bottom in boxes)


def test_frame_filling_digits_from_mnist_read_as_the_digits_themselves(test_digits):
    from mnist_digits.stress import fill_frame

    scores = []
    for digit in test_digits.images[:60]:
        after = preprocess.preprocess(fill_frame(digit, 16), FRAME_FILLING)
        assert after is not None
        scores.append(correlation(after, preprocess.preprocess(digit, NONE)))
    assert min(scores) > 0.75 and np.median(scores) > 0.9


def test_a_tight_crop_of_a_one_mostly_ink_keeps_its_polarity(test_digits):
    """Cropped to its ink, a 1 is more ink than paper: its frame, mostly paper, says which is which."""
    ones = [d for d, label in zip(test_digits.images, test_digits.labels, strict=True) if label == 1][:20]
    before, after = [], []
    for digit in ones:
        rows, cols = np.flatnonzero((digit > 25).any(1)), np.flatnonzero((digit > 25).any(0))
        crop = 255 - digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]  # dark on white, no margin
        expected = preprocess.preprocess(digit, NONE)
        for scores, config in ((before, NONE), (after, FRAME_FILLING)):
            image = preprocess.preprocess(crop, config)
            scores.append(-1.0 if image is None else correlation(image, expected))
    misread_before = sum(score < 0.8 for score in before)  # read as their paper, or as nothing
    misread_after = sum(score < 0.8 for score in after)
    assert misread_before >= 3 and misread_after <= 1  # a 4 px wide crop may show no paper at all


def test_a_binarized_digit_gets_soft_edges(test_digits):
    for digit in test_digits.images[:10]:
        binarized = np.where(digit > 127, 255, 0).astype(np.uint8)
        hard, soft = preprocess.preprocess(binarized, NONE), preprocess.preprocess(binarized, SMOOTHING)
        assert hard is not None and soft is not None
        assert soft_share(hard) < 0.05  # at its own size nothing else softens it
        assert soft_share(soft) > 0.3  # MNIST's own digits: about 0.5
        original = preprocess.preprocess(digit, NONE)
        assert correlation(soft, original) > correlation(hard, original)
        assert soft.max() == pytest.approx(1.0)


def test_a_big_black_and_white_canvas_is_softened_by_the_shrinking_alone():
    image = drawing([[(100, 80), (300, 80), (180, 330)]], size=(400, 400), width=40)
    plain, smoothed = preprocess.preprocess(image, NONE), preprocess.preprocess(image, SMOOTHING)
    assert plain is not None and smoothed is not None
    assert soft_share(plain) > 0.3  # shrinking 14 times anti-aliases
    assert correlation(plain, smoothed) > 0.98


@pytest.mark.parametrize("config", [THINNING, FRAME_FILLING, SMOOTHING], ids=["thin", "frame", "smooth"])
def test_mnist_like_digits_are_left_unchanged_by_each_change(test_digits, config):
    typical = [d for d in test_digits.images[:60] if stroke_width(d > 127) < 3.5]  # MNIST's median: 2.7 px
    assert len(typical) > 30
    same = 0
    for digit in typical:
        changed, unchanged = preprocess.preprocess(digit, config), preprocess.preprocess(digit, NONE)
        assert changed is not None and unchanged is not None
        same += np.array_equal(changed, unchanged)
        # A digit whose stroke touches its 28x28 frame is given a margin: the same ink, a hair apart.
        assert np.abs(changed - unchanged).max() < 0.05
    assert same >= len(typical) - 1


# --- honest answers: no ink, no digit -------------------------------------------------------------


@pytest.mark.parametrize(
    "blank",
    [
        np.zeros((50, 50), np.uint8),
        np.full((300, 200), 255, np.uint8),
        np.full((1, 1), 128, np.uint8),
        np.clip(np.random.default_rng(0).normal(128, 25, (300, 300)), 0, 255).astype(np.uint8),
        (render.lighting((300, 300), np.random.default_rng(1)) * 255).astype(np.uint8),
    ],
    ids=["black", "white", "one-pixel", "noise", "uneven-light"],
)
def test_images_without_ink_have_no_digit(blank):
    assert preprocess.preprocess(blank) is None
    assert segment_digits(blank) == []


def test_faint_but_real_ink_is_found():
    faint = drawing([[(200, 40), (200, 260)]], paper=230, ink=180, width=20)  # contrast 0.2
    assert preprocess.preprocess(faint) is not None


# --- numbers: several digits --------------------------------------------------------------------


def test_segment_digits_reads_a_number_left_to_right(test_digits):
    rng = np.random.default_rng(3)
    for start in range(0, 40, 4):
        digits = test_digits.images[start : start + 4]
        segments = segment_digits(render.render_number(digits, rng))
        assert len(segments) == 4
        lefts = [s.box[0] for s in segments]
        assert lefts == sorted(lefts)
        for segment, digit in zip(segments, digits, strict=True):
            assert segment.image.shape == (28, 28)
            assert correlation(segment.image, preprocess.preprocess(digit)) > 0.8


def blob(label, top, left, bottom, right):
    return Blob(label, top, left, bottom, right, (bottom - top) * (right - left))


def test_pieces_of_one_digit_are_merged_and_far_dots_dropped():
    body = blob(1, 40, 100, 100, 140)  # the bowl of a 5
    bar = blob(2, 0, 105, 8, 150)  # its detached top bar, stacked above
    neighbour = blob(3, 0, 170, 100, 220)  # the next digit, side by side
    dot = blob(4, 95, 300, 100, 305)  # a full stop far away
    groups = group_blobs([neighbour, dot, bar, body])
    assert [sorted(b.label for b in g) for g in groups] == [[1, 2], [3]]


def test_a_thin_one_beside_a_digit_stays_a_digit():
    one = blob(1, 0, 100, 100, 108)  # a slanted 1's box overlaps the next digit's a little
    zero = blob(2, 2, 104, 98, 170)
    assert len(group_blobs([one, zero])) == 2


def test_a_shadow_at_the_border_of_a_photo_is_not_part_of_the_digit():
    strokes = [[(180, 60), (240, 60), (200, 240)]]
    clean = preprocess.preprocess(drawing(strokes, width=14))
    photo = drawing(strokes, width=14)
    ImageDraw.Draw(photo).rectangle((0, 0, 30, 299), fill=40)  # the table beyond the paper's edge
    shadowed = preprocess.preprocess(photo)
    assert clean is not None and shadowed is not None
    assert correlation(clean, shadowed) > 0.95


# --- the fast paths give the numbers of the scipy calls they replace --------------------------------


def paper_with_ink(shape, rng, paper=1.0, share=0.3):
    """A coarse lighting grid as a drawing gives it: mostly one value (the paper), and ink cells
    scattered (or in one disk in the middle, with `share` None)."""
    values = np.full(shape, paper, np.float32)
    rows, cols = np.indices(shape)
    middle = (rows - shape[0] / 2) ** 2 + (cols - shape[1] / 2) ** 2 < (min(shape) / 3.5) ** 2
    ink = middle if share is None else rng.random(shape) < share
    values[ink] = rng.random(int(ink.sum())).astype(np.float32)
    return values


@pytest.mark.parametrize("percentile", [25, 50, 100])
def test_percentile_filter_is_scipys(percentile):
    rng = np.random.default_rng(0)
    images = [
        rng.random((32, 32)).astype(np.float32),  # no ties: numpy sorts every window
        paper_with_ink((32, 32), rng),  # the paper settles all windows, some or too few
        paper_with_ink((32, 24), rng, paper=0.0),
        paper_with_ink((32, 32), rng, share=None),
        paper_with_ink((32, 32), rng, paper=0.0, share=None),
        np.round(rng.random((16, 16)) * 4).astype(np.float32) / 4,  # ties of a few values
        rng.random((2, 3)).astype(np.float32),
        np.ones((5, 5), np.float32),
        paper_with_ink((64, 64), rng),  # a fine lighting grid: too many windows to copy out
    ]
    for image in images:
        size = max(3, max(image.shape) // 2 | 1)
        expected = ndi.percentile_filter(image, percentile, size=size, mode="nearest")
        filtered = filters.percentile_filter(image, percentile, size)
        assert filtered.dtype == expected.dtype and np.array_equal(filtered, expected)


def test_median_and_pixel_noise_are_numpys():
    rng = np.random.default_rng(1)
    for values in [rng.random(7), rng.random(8).astype(np.float32), np.array([3.0, 1.0, 1.0, 2.0])]:
        assert filters.median(values) == np.median(values)
    clean = np.asarray(drawing([[(100, 50), (120, 250)]]), np.float32) / 255  # most neighbours equal
    for gray in [clean, clean + rng.normal(0, 0.05, clean.shape).astype(np.float32)]:
        differences = np.diff(gray[:: max(1, gray.shape[0] // 128)], axis=1)
        mad = np.median(np.abs(differences - np.median(differences)))
        assert filters.pixel_noise(gray) == 1.4826 * float(mad) / np.sqrt(2)


def test_blur_is_scipys_gaussian_filter():
    rng = np.random.default_rng(2)
    image = rng.random((40, 30)).astype(np.float32)
    for sigma in (0.5, 0.6, 2.7, 5.3):
        assert np.array_equal(filters.blur(image, sigma, "reflect"), ndi.gaussian_filter(image, sigma))
        stacked = np.stack([image, image[::-1]])
        expected = ndi.gaussian_filter(stacked, sigma, mode="nearest", axes=(1, 2))
        assert np.array_equal(filters.blur(stacked, sigma, "nearest", axes=(1, 2)), expected)


def test_ink_of_and_thickening_keep_what_dilating_and_the_exact_width_gave():
    """ink_of dilates with one maximum filter, and thickening first tries the chessboard distance:
    both are pinned to the slower formulas they replace."""
    rng = np.random.default_rng(3)
    for pen in (3, 12, 40):  # thin, MNIST-like and bold strokes on a 400x300 canvas
        image = drawing(
            [[(60, 60), (200, 240)], [(260, 40), (330, 260)], [(300, 280), (310, 285)]], width=pen
        )
        ink_map = preprocess.find_ink(image)
        assert ink_map is not None
        for blobs in (ink_map.blobs, ink_map.blobs[:1]):
            ink, mask = preprocess.ink_of(ink_map, blobs)
            union, pad = grouping.union(blobs), ink_map.fringe
            rows = slice(max(0, union.top - pad), union.bottom + pad)
            cols = slice(max(0, union.left - pad), union.right + pad)
            labels = ink_map.labels[rows, cols]
            expected_mask = np.isin(labels, [b.label for b in blobs])
            region = ndi.binary_dilation(expected_mask, structure=np.ones((3, 3), bool), iterations=pad)
            assert np.array_equal(mask, expected_mask)
            assert np.array_equal(ink, ink_map.ink[rows, cols] * region)
            thick = preprocess.thicken_thin_strokes(ink, mask)
            scale = 20 / max(ink.shape)
            if stroke_width(mask) * scale >= preprocess.DEFAULT_CONFIG.min_stroke:
                assert thick is ink
            else:
                assert thick.shape[0] > ink.shape[0]
    noise = rng.random((120, 90)) < 0.5  # any mask: the chessboard width never exceeds the true one
    chessboard = ndi.distance_transform_cdt(np.pad(noise, 1), metric="chessboard")
    assert preprocess._width(chessboard) <= stroke_width(noise)


def test_a_lone_blob_is_found_as_find_objects_finds_it():
    ink_map = preprocess.find_ink(drawing([[(100, 50), (160, 250), (300, 90)]]))
    assert ink_map is not None and len(ink_map.blobs) == 1
    [blob] = ink_map.blobs
    [(rows, cols)] = ndi.find_objects(ink_map.labels)
    assert (blob.top, blob.left, blob.bottom, blob.right) == (rows.start, cols.start, rows.stop, cols.stop)
    assert blob.area == int((ink_map.labels == 1).sum()) and type(blob.top) is int
    assert group_blobs(ink_map.blobs) == [ink_map.blobs]


def test_a_constant_grid_enlarges_to_itself_as_the_lighting_shortcut_assumes():
    """_coarse_percentile skips enlarging a grid of one value: Pillow's weights sum to 1."""
    rng = np.random.default_rng(4)
    for value in (0.0, 1.0, float(rng.random()), 1e-4):
        for source, target in [((32, 32), (280, 280)), ((32, 21), (700, 455)), ((5, 32), (17, 97))]:
            grid = np.full(source, value, np.float32)
            enlarged = preprocess._resize_to(grid, target, Image.Resampling.BILINEAR)
            assert np.array_equal(enlarged, np.full(target, np.float32(value)))


@pytest.mark.parametrize("mode", ["nearest", "reflect"])
@pytest.mark.parametrize("paper_share", [0.0, 0.9])  # windows sorted, or settled by the paper's value
def test_rank_filters_are_scipys(mode, paper_share):
    rng = np.random.default_rng(6)
    image = np.round(rng.random((21, 32)) * 255).astype(np.float32) / 255
    image[rng.random(image.shape) < paper_share] = 1.0
    ranks = (0, 40, 120)
    for rank, filtered in zip(ranks, filters.rank_filters(image, ranks, 11, mode), strict=True):
        assert np.array_equal(filtered, ndi.rank_filter(image, rank, size=11, mode=mode))
    with pytest.raises(ValueError, match="'nearest' or 'reflect'"):
        filters.rank_filters(image, ranks, 11, "wrap")


def test_the_shortcuts_of_find_ink_rest_on_exact_identities():
    """A small image's paper, for dark ink, comes from gray's mirrored rank; a clean image's blur
    from its ink's box alone. Both give the very numbers of the direct computation."""
    rng = np.random.default_rng(5)
    gray = np.round(rng.random((16, 16)) * 255).astype(np.float32) / 255
    size = 9
    quarter = int(81 * 25 / 100)
    [mirrored] = filters.rank_filters(gray, (81 - 1 - quarter,), size)
    assert np.array_equal(1.0 - mirrored, filters.percentile_filter(1.0 - gray, 25, size))
    ink = np.zeros((280, 280), np.float32)
    ink[100:160, 40:90] = rng.random((60, 50))  # a stroke's ink, nothing elsewhere
    for sigma in (0.5, 0.9):
        box = preprocess._inked_box(ink, 2 * int(4 * sigma + 0.5))
        assert ink[box].size < ink.size / 4
        smooth = np.zeros_like(ink)
        smooth[box] = filters.blur(ink[box], sigma, "reflect")
        assert np.array_equal(smooth, ndi.gaussian_filter(ink, sigma))
