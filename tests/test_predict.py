"""The Python API: typed predictions for paths, PIL images and arrays, and the shipped model's
accuracy on realistic renderings of MNIST test digits it never trained on."""

import io

import numpy as np
import pytest
from PIL import Image

from mnist_digits import load_model, render
from mnist_digits.predict import NO_DIGIT, NumberReading, Prediction, Recognizer

# The shipped model scores about 99.6% on MNIST's test set; on the first 300 test digits it
# gets all but 1 or 2. Measured on 10,000 digits (benchmarks/real_world.py, docs/predicting.md) every kind is
# within a point of that; on 300 digits one or two more mistakes are chance, not a regression.
MIN_ACCURACY = 0.98


def save(image: Image.Image, path, fmt="PNG"):
    image.save(path, format=fmt)
    return path


@pytest.fixture(scope="module")
def untrained(tiny_model_file) -> Recognizer:
    return load_model(tiny_model_file)


# --- the shipped model on realistic inputs --------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(render.KINDS))
def test_realistic_images_are_read_as_well_as_mnist(reference_recognizer, test_digits, kind):
    rng = np.random.default_rng(2026)
    inputs = [render.KINDS[kind](digit, rng) for digit in test_digits.images]
    predictions = reference_recognizer.predict(inputs)
    digits = np.array([-1 if p.digit is None else p.digit for p in predictions])
    accuracy = float((digits == test_digits.labels).mean())
    assert accuracy >= MIN_ACCURACY, (
        f"{kind}: {accuracy:.2%}, wrong at {np.flatnonzero(digits != test_digits.labels)}"
    )


def test_numbers_are_read_digit_by_digit(reference_recognizer, test_digits):
    rng = np.random.default_rng(2026)
    groups = test_digits.images.reshape(-1, 4, 28, 28)  # 75 four-digit numbers
    readings = reference_recognizer.read_number([render.render_number(g, rng) for g in groups])
    assert [len(r.digits) for r in readings] == [4] * len(groups)
    read = np.array([[int(c) for c in r.text] for r in readings]).ravel()
    assert (read == test_digits.labels).mean() >= MIN_ACCURACY


def test_mnist_format_pixels_skip_preprocessing(reference_recognizer, test_digits):
    predictions = reference_recognizer.predict_pixels(test_digits.images)
    digits = np.array([p.digit for p in predictions])
    assert (digits == test_digits.labels).mean() >= 0.99


def test_a_number_read_as_one_digit_is_flagged(reference_recognizer, test_digits):
    number = render.render_number(test_digits.images[:4], np.random.default_rng(0))
    [prediction] = reference_recognizer.predict(number)
    assert prediction.uncertain and prediction.note and "4 separate digits" in prediction.note


# --- the API's shape, with an untrained model (fast, no shipped model needed) -----------------


def test_load_model_is_exported_lazily_and_takes_every_kind_of_input(untrained, tmp_path, test_digits):
    digit = test_digits.images[0]
    png = save(render.inverted(digit, np.random.default_rng(0)), tmp_path / "seven.png")
    buffer = io.BytesIO()
    render.large(digit, np.random.default_rng(0)).save(buffer, format="PNG")
    inputs = [
        png,
        str(png),
        Image.open(png),
        digit,
        np.asarray(Image.open(png).convert("RGB")),
        buffer.getvalue(),
    ]
    predictions = untrained.predict(inputs)
    assert [type(p) for p in predictions] == [Prediction] * len(inputs)
    assert [p.source for p in predictions][:3] == [str(png)] * 3  # an opened file keeps its name
    assert [p.source for p in predictions][3:] == ["image 3", "image 4", "image 5"]
    for p in predictions:
        assert p.error is None and p.digit == p.top3[0][0] and p.probability == p.top3[0][1]
        assert [q for _, q in p.top3] == sorted((q for _, q in p.top3), reverse=True)
        assert len({d for d, _ in p.top3}) == 3 and sum(q for _, q in p.top3) <= 1 + 1e-6
        assert p.input is not None and p.input.shape == (28, 28)
    # The same image the same answer, whichever way it came in (the canvas' RGB included).
    assert len({p.digit for p in predictions[:3]}) == 1
    [alone] = untrained.predict(digit)  # a single input needs no list
    assert alone.digit == predictions[3].digit
    assert alone.probability == pytest.approx(predictions[3].probability, abs=1e-5)


def test_threshold_marks_answers_uncertain(untrained, test_digits):
    [sure] = untrained.predict(test_digits.images[0], threshold=0.0)
    [unsure] = untrained.predict(test_digits.images[0], threshold=1.0)
    assert not sure.uncertain and unsure.uncertain and sure.digit == unsure.digit


def test_blank_images_say_no_digit_found(untrained):
    white = Image.new("RGB", (200, 100), "white")
    clear = Image.new("RGBA", (200, 100), (0, 0, 0, 0))
    for prediction in untrained.predict([white, clear, np.zeros((28, 28))]):
        assert prediction.digit is None and prediction.error == NO_DIGIT and prediction.top3 == ()
    [reading] = untrained.read_number(white)
    assert reading == NumberReading.failure("image 0", NO_DIGIT)


def test_bad_files_get_one_error_each_and_the_rest_are_read(
    reference_recognizer, tmp_path, test_digits, png_declaring
):
    rng = np.random.default_rng(0)
    seven = save(render.inverted(test_digits.images[0], rng), tmp_path / "seven.png")
    two = save(render.jpeg(test_digits.images[1], rng), tmp_path / "two.jpg", "JPEG")
    (tmp_path / "notes.png").write_text("shopping list")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(seven.read_bytes()[:400])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(100_000, 100_000))
    inputs = [
        seven,
        tmp_path / "notes.png",
        truncated,
        two,
        bomb,
        tmp_path / "missing.png",
        np.zeros((2, 2, 7)),
    ]
    predictions = reference_recognizer.predict(inputs)
    assert [p.digit for p in predictions] == [7, None, None, 2, None, None, None]
    errors = [p.error for p in predictions if p.digit is None]
    for error, expected in zip(
        errors,
        [
            "notes.png: not a readable image",
            "cut.png: the PNG data is truncated",
            "decompression bomb",
            "missing.png: no such file",
            "image 6: an image array must be",
        ],
        strict=True,
    ):
        assert error is not None and expected in error and "\n" not in error


def test_read_number_boxes_are_in_the_image_pixels(untrained, test_digits):
    number = render.render_number(test_digits.images[:3], np.random.default_rng(1))
    [reading] = untrained.read_number(number)
    assert len(reading.digits) == len(reading.boxes) == 3 and len(reading.text) == 3
    assert reading.probability == pytest.approx(np.prod([d.probability for d in reading.digits]))
    ink = np.asarray(number.convert("L")) < 128
    for left, top, right, bottom in reading.boxes:
        assert 0 <= left < right <= number.width and 0 <= top < bottom <= number.height
        assert ink[top:bottom, left:right].any()
    assert [d.source for d in reading.digits] == ["image 0#1", "image 0#2", "image 0#3"]


def test_recognizer_wraps_any_loaded_network(tiny_model_file):
    from mnist_digits import checkpoint

    loaded = checkpoint.load_model(tiny_model_file)
    recognizer = Recognizer(loaded.model, threshold=0.5)
    assert recognizer.threshold == 0.5 and len(recognizer.predict(np.eye(28))) == 1
