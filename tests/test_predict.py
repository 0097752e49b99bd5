"""The Python API: typed predictions for paths, PIL images and arrays, and the shipped model's
accuracy on realistic renderings of MNIST test digits it never trained on."""

import functools
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_digits import batching, load_model, predict, render
from mnist_digits.device import native_bf16
from mnist_digits.errors import InputError, MnistDigitsError
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


# --- many inputs: a pool of worker processes gives the serial answers -----------------------------


@pytest.fixture(scope="module")
def folder_of_files(tmp_path_factory, test_digits) -> list:
    """80 inputs: small digit files (most of them), with unreadable ones and a bad array among them."""
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    inputs: list = []
    for i, digit in enumerate(test_digits.images[:72]):
        image = Image.fromarray(255 - digit).resize((56, 56))  # dark ink on white, as people draw
        inputs.append(save(image if i % 3 else render.noisy(digit, rng), folder / f"{i:02d}.png"))
    (folder / "notes.png").write_text("shopping list")
    (folder / "cut.png").write_bytes(inputs[1].read_bytes()[:60])
    bad = {5: folder / "notes.png", 17: folder / "missing.png", 40: folder / "cut.png"}
    bad |= {41: np.zeros((2, 2, 7)), 63: Image.new("L", (40, 40), 255), 70: folder}
    for index in sorted(bad):
        inputs.insert(index, bad[index])
    return inputs


def assert_same_predictions(pooled: list[Prediction], serial: list[Prediction]) -> None:
    assert [p.source for p in pooled] == [p.source for p in serial]
    assert [p.digit for p in pooled] == [p.digit for p in serial]
    assert [p.error for p in pooled] == [p.error for p in serial]
    for p, q in zip(pooled, serial, strict=True):
        assert (p.probabilities is None) == (q.probabilities is None)
        if p.probabilities is not None:
            assert np.abs(p.probabilities - q.probabilities).max() <= 1e-6
            assert np.array_equal(p.input, q.input)  # the same preprocessing, bit for bit


def test_a_pool_gives_the_serial_answers_in_order_with_errors_in_their_rows(untrained, folder_of_files):
    serial = Recognizer(untrained.model, workers=1).predict(folder_of_files)
    pooled = Recognizer(untrained.model, workers=2).predict(folder_of_files)
    assert len(pooled) == len(folder_of_files) == 78
    assert_same_predictions(pooled, serial)
    errors = {i: p.error for i, p in enumerate(pooled) if p.digit is None}
    assert set(errors) == {5, 17, 40, 41, 63, 70}  # the bad inputs, where they were given
    assert "notes.png: not a readable image" in errors[5] and "missing.png: no such file" in errors[17]
    assert "cut.png: the PNG data is truncated" in errors[40]
    assert errors[41].startswith("image 41: an image array must be") and errors[63] == NO_DIGIT
    assert "is a directory" in errors[70]
    expected = [str(x) if isinstance(x, Path) else f"image {i}" for i, x in enumerate(folder_of_files)]
    assert [p.source for p in pooled] == expected


def test_a_pool_reads_numbers_as_this_process_does(untrained, folder_of_files):
    serial = Recognizer(untrained.model, workers=1).read_number(folder_of_files)
    pooled = Recognizer(untrained.model, workers=2).read_number(folder_of_files)
    assert [r.text for r in pooled] == [r.text for r in serial]
    assert [r.error for r in pooled] == [r.error for r in serial]
    assert [r.boxes for r in pooled] == [r.boxes for r in serial]
    for r, s in zip(pooled, serial, strict=True):
        assert r.probability == pytest.approx(s.probability, abs=1e-6)


class CountingPool(ProcessPoolExecutor):
    started: ClassVar[list[int]] = []  # the workers of each pool made

    def __init__(self, workers: int, **kwargs) -> None:
        CountingPool.started.append(workers)
        super().__init__(workers, **kwargs)


def test_few_inputs_or_one_worker_are_read_in_this_process(untrained, folder_of_files, monkeypatch):
    monkeypatch.setattr(predict, "ProcessPoolExecutor", CountingPool)
    CountingPool.started = []
    few = folder_of_files[: predict.MIN_POOL_INPUTS - 1]
    assert len(Recognizer(untrained.model, workers=8).predict(few)) == len(few)
    assert len(Recognizer(untrained.model, workers=1).predict(folder_of_files)) == len(folder_of_files)
    assert CountingPool.started == []
    enough = folder_of_files[: predict.MIN_POOL_INPUTS]
    Recognizer(untrained.model, workers=8).predict(enough)
    Recognizer(untrained.model).read_number(enough)  # None: one per core
    # A worker per task at most: 64 inputs make 2 tasks.
    assert CountingPool.started == [2, min(2, predict.default_workers())]


def test_a_pool_works_with_spawned_workers(untrained, folder_of_files, monkeypatch):
    """Spawned workers import the module anew (the default on macOS and Windows): all they are
    given must be importable from it, nothing defined in a test or a script."""
    spawn = multiprocessing.get_context("spawn")
    monkeypatch.setattr(
        predict, "ProcessPoolExecutor", functools.partial(ProcessPoolExecutor, mp_context=spawn)
    )
    inputs = folder_of_files[: predict.MIN_POOL_INPUTS]
    pooled = Recognizer(untrained.model, workers=2).predict(inputs)
    assert_same_predictions(pooled, Recognizer(untrained.model, workers=1).predict(inputs))


def _die(*_: object) -> None:
    os._exit(3)  # a worker killed, as for memory


def test_a_worker_that_dies_is_an_error_that_says_what_to_do(untrained, folder_of_files, monkeypatch):
    monkeypatch.setattr(predict, "prepare_inputs", _die)
    with pytest.raises(MnistDigitsError, match=r"worker process .* set workers=1") as error:
        Recognizer(untrained.model, workers=2).predict(folder_of_files)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("workers", [0, -2, 1.5, True, "4"])
def test_workers_must_be_a_number_of_processes(untrained, workers):
    with pytest.raises(InputError, match=r"workers .*: give a number of processes"):
        Recognizer(untrained.model, workers=workers)


def test_load_model_takes_workers(tiny_model_file):
    assert load_model(tiny_model_file, workers=3).workers == 3
    assert load_model(tiny_model_file).workers is None and predict.default_workers() >= 1


def test_images_in_memory_go_to_the_workers_in_smaller_tasks():
    paths = [(f"{i}.png", f"{i}.png") for i in range(100)]
    assert [len(c) for c in batching.tasks(paths)] == [32, 32, 32, 4]
    photo = np.zeros((4000, 3000, 3), np.uint8)  # 36 MB, as a phone photo decoded
    drawing = Image.new("RGB", (280, 280))
    named = [("a", photo), ("b", drawing), ("c", "c.png"), ("d", photo), ("e", photo)]
    assert [[name for name, _ in c] for c in batching.tasks(named)] == [["a"], ["b", "c", "d"], ["e"]]


def test_precision_auto_takes_bf16_only_where_native_and_bf16_gives_the_same_digits(
    reference_model_path, test_digits, monkeypatch
):
    from mnist_digits import device

    rng = np.random.default_rng(0)
    images = [render.large(d, rng) for d in test_digits.images[:24]]  # scaled-up, as photographed
    monkeypatch.setattr(device, "native_bf16", lambda d: None)  # a CPU without it: fp32
    fp32 = load_model(reference_model_path)
    assert fp32.bf16 is False
    monkeypatch.setattr(device, "native_bf16", lambda d: "AMX")  # a CPU with it: bf16 by default
    auto = load_model(reference_model_path)
    assert auto.bf16 is True and load_model(reference_model_path, precision="fp32").bf16 is False
    expected = [p.digit for p in fp32.predict(images)]
    assert [p.digit for p in auto.predict(images)] == expected
    with pytest.raises(MnistDigitsError, match="unknown precision 'half'"):
        load_model(reference_model_path, precision="half")


# --- the runtime: auto chooses before work of many images; a given runtime runs as given ----------


class Recording:
    """A runtime that answers as PyTorch does and notes each call's name and number of images."""

    def __init__(self, name, in_torch, calls):
        self.name, self.in_torch, self.calls = name, in_torch, calls

    def logits(self, images):
        self.calls.append((self.name, len(images)))
        return self.in_torch.logits(images)


@pytest.fixture
def own_runtime_cache(tmp_path, monkeypatch):
    """auto's module, its choices kept in a folder of the test's own."""
    from mnist_digits import runtime_choice
    from mnist_digits.runtimes import CACHE_VAR

    monkeypatch.setenv(CACHE_VAR, str(tmp_path / "runtime-cache"))
    return runtime_choice


def test_auto_runs_a_few_images_on_pytorch_without_choosing(
    tiny_model_file, test_digits, own_runtime_cache, monkeypatch
):
    monkeypatch.setattr(
        own_runtime_cache, "choose_runtime", lambda *a, **k: pytest.fail("chose for a few images")
    )
    recognizer = load_model(tiny_model_file)
    assert len(recognizer.predict_pixels(test_digits.images[:50])) == 50
    assert len(recognizer.predict(test_digits.images[0])) == 1
    assert recognizer.runtime_choice is None
    torch_here = "torch-bf16" if native_bf16(torch.device("cpu")) else "torch"  # what `auto` precision takes
    assert recognizer.describe().startswith(
        f"runtime {torch_here} (auto: no choice made for this machine and model"
    )


def test_work_of_many_images_makes_the_choice_and_one_image_takes_its_one_image_runtime(
    tiny_model_file, test_digits, own_runtime_cache, monkeypatch
):
    from mnist_digits.runtime_cache import Measurement, RuntimeChoice
    from mnist_digits.runtimes import TorchRuntime

    measured = (
        Measurement("torch", 1000.0, 1.0, True, "the reference"),
        Measurement("onnx", 2000.0, 0.2, True, "same digits on 1,000 generated images"),
        Measurement("onnx-int8", 3000.0, 0.3, True, "test accuracy 99.53% against fp32's 99.55%"),
    )
    choice = RuntimeChoice("onnx-int8", "onnx", "3.0x torch here, ...", measured)
    made, calls = [], []
    monkeypatch.setattr(own_runtime_cache, "choose_runtime", lambda *a, **k: made.append(a) or choice)
    monkeypatch.setattr(
        own_runtime_cache,
        "build_runtime",
        lambda name, model, path, device, threads=None: Recording(name, TorchRuntime(model, device), calls),
    )
    recognizer = load_model(tiny_model_file)
    many = np.repeat(test_digits.images[:10], 110, axis=0)  # 1,100 MNIST-format digits
    found = sum(p.digit is not None for p in recognizer.predict_pixels(many))
    assert len(made) == 1 and recognizer.runtime_choice is choice
    assert {name for name, _ in calls} == {"onnx-int8"} and sum(n for _, n in calls) == found >= 1000
    calls.clear()
    recognizer.predict(test_digits.images[0])
    recognizer.predict(list(test_digits.images[:3]))
    assert calls == [("onnx", 1), ("onnx-int8", 3)] and len(made) == 1  # chosen once
    assert recognizer.describe() == choice.describe()


def test_test_time_augmentation_and_a_given_runtime_leave_nothing_to_choose(
    tiny_model_file, own_runtime_cache
):
    for recognizer, name in [
        (load_model(tiny_model_file, tta=True, precision="fp32"), "torch"),
        (load_model(tiny_model_file, runtime="torch", precision="fp32"), "torch"),
        (load_model(tiny_model_file, precision="bf16"), "torch-bf16"),
    ]:
        assert recognizer.choose_runtime() is None and recognizer.describe() == f"runtime {name}"
    with pytest.raises(InputError, match="not quantized to int8"):
        load_model(tiny_model_file, tta=True, runtime="onnx-int8")
    with pytest.raises(InputError, match="choose auto, torch, onnx, onnx-int8"):
        load_model(tiny_model_file, runtime="tensorrt")


def test_runtime_onnx_int8_reads_digits_with_a_quantized_export(tiny_model_file, test_digits, runtime_cache):
    """In the session's cache (conftest): the export is shared with the other tests of the tiny model."""
    pytest.importorskip("onnxruntime")
    from mnist_digits.runtimes import file_sha256

    recognizer = load_model(tiny_model_file, runtime="onnx-int8")
    assert recognizer.describe() == "runtime onnx-int8" and recognizer.parameter_count is None
    predictions = recognizer.predict_pixels(test_digits.images[:20])
    assert all(p.digit is not None and 0 <= p.probability <= 1 for p in predictions)
    key = file_sha256(tiny_model_file)[:16]
    exported = {f.name for f in (runtime_cache / "onnx").glob("*.onnx")}
    assert {f"{key}.onnx", f"{key}-int8-training.onnx"} <= exported  # calibrated on MNIST's training images
