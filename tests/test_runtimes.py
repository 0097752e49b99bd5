"""The runtimes and choosing among them (runtimes.py, runtime_choice.py, runtime_cache.py): the
fastest candidate that keeps torch fp32's answers wins by a margin, the choice is cached per machine
and model, and a real choice on the shipped reference model works."""

import json

import numpy as np
import pytest
import torch

from mnist_digits import runtime_cache, runtime_choice, runtimes
from mnist_digits.cli import main
from mnist_digits.errors import MnistDigitsError
from mnist_digits.runtime_choice import Candidate, CheckImages, ChoiceConfig, choose_runtime, pick

CONFIG = ChoiceConfig(budget=1.0, batch=200)
WEIGHTS = np.random.default_rng(0).normal(size=(28 * 28, 10)).astype(np.float32)


def fp32_logits(images):
    return images.reshape(len(images), -1) @ WEIGHTS


class Clock:
    """A clock that moves only when a fake runtime computes."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


NEAR_TIE = 2.0  # pixel (0, 0) of a test image whose top two digits nearly tie (real pixels are < 1)


class FakeRuntime:
    """Costs `per_call` + `per_image` seconds of the clock per call; its digits differ from fp32's
    on the first `flips` images of any call, and with `ties` on the images marked NEAR_TIE."""

    def __init__(self, name, clock, per_image, per_call=0.0, flips=0, ties=False):
        self.name, self.clock, self.flips, self.ties = name, clock, flips, ties
        self.per_image, self.per_call = per_image, per_call

    def logits(self, images):
        self.clock.now += self.per_call + self.per_image * len(images)
        logits = fp32_logits(images)
        flipped = np.arange(len(images)) < self.flips
        if self.ties:
            flipped |= images[:, 0, 0, 0] == NEAR_TIE
        rows = np.flatnonzero(flipped)
        logits[rows, logits[rows].argmax(1)] -= 1e6  # the second digit on top
        return logits


def offer(clock, builds=None, **speeds):
    """Candidates named as the keywords (torch first), each (per_image, per_call, flips, exact) or
    (per_image, per_call, flips, exact, ties)."""
    made = []
    for name, (per_image, per_call, flips, exact, *more) in speeds.items():
        ties = bool(more and more[0])

        def build(name=name, per_image=per_image, per_call=per_call, flips=flips, ties=ties):
            if builds is not None:
                builds.append(name)
            if per_image is None:
                raise RuntimeError("no such library here")
            return FakeRuntime(name, clock, per_image, per_call, flips, ties)

        made.append(Candidate(name.replace("_", "-"), build, exact))
    return made


def generated(count=200):
    return CheckImages(np.random.default_rng(1).random((count, 1, 28, 28), dtype=np.float32), None)


def test_the_fastest_candidate_that_keeps_the_answers_wins():
    clock = Clock()
    offered = offer(
        clock,
        torch=(1e-3, 0, 0, True),
        onnx=(5e-4, 0, 0, True),
        onnx_int8=(2.5e-4, 0, 0, False),  # no MNIST: held to 99.5% of fp32's digits, and keeps all
    )
    choice = pick(offered, generated(), CONFIG, clock)
    assert choice.name == "onnx-int8"
    speeds = {m.name: m.images_per_s for m in choice.measurements}
    assert speeds["onnx-int8"] / speeds["torch"] == pytest.approx(4, rel=0.01)
    assert "4.0x torch here" in choice.describe() and "generated images" in choice.reason
    assert [m.name for m in choice.measurements] == ["torch", "onnx", "onnx-int8"]


def test_a_candidate_that_changes_answers_or_cannot_run_is_left_out():
    clock = Clock()
    offered = offer(
        clock,
        torch=(1e-3, 0, 0, True),
        onnx=(5e-4, 0, 1, True),  # one different digit: an fp32 runtime must keep every one
        onnx_int8=(2e-4, 0, 2, False),  # 2 of 200 (99.0%): below the 99.5% asked without MNIST
        torch_bf16=(None, 0, 0, False),  # fails to build
    )
    choice = pick(offered, generated(), CONFIG, clock)
    assert choice.name == choice.single == "torch"
    found = {m.name: m for m in choice.measurements}
    assert found["onnx"].passed is False and "a different digit on 1 of 200" in found["onnx"].check
    assert found["onnx-int8"].passed is False and "99.0%" in found["onnx-int8"].check
    assert found["torch-bf16"].passed is False and found["torch-bf16"].images_per_s is None
    assert "could not run: no such library here" in found["torch-bf16"].check
    assert "none of onnx, onnx-int8, torch-bf16 was 10% faster" in choice.reason

    # One flip in 200 is 99.5%: int8 keeps enough of fp32's digits, and wins.
    offered = offer(clock, torch=(1e-3, 0, 0, True), onnx_int8=(2e-4, 0, 1, False))
    assert pick(offered, generated(), CONFIG, clock).name == "onnx-int8"


def test_the_winner_must_beat_torch_by_the_margin():
    clock = Clock()
    close = offer(clock, torch=(1e-3, 0, 0, True), onnx=(1e-3 / 1.05, 0, 0, True))
    assert pick(close, generated(), CONFIG, clock).name == "torch"
    clear = offer(clock, torch=(1e-3, 0, 0, True), onnx=(1e-3 / 1.2, 0, 0, True))
    assert pick(clear, generated(), CONFIG, clock).name == "onnx"
    assert pick(clear, generated(), ChoiceConfig(budget=1.0, batch=200, margin=0.3), clock).name == "torch"


def test_one_image_takes_the_runtime_with_the_lowest_latency():
    clock = Clock()
    offered = offer(
        clock,
        torch=(1e-4, 1e-3, 0, True),  # fast per image, slow per call
        onnx=(3e-4, 1e-4, 0, True),  # slower for batches, ten times quicker for one image
    )
    choice = pick(offered, generated(), CONFIG, clock)
    assert (choice.name, choice.single) == ("torch", "onnx")
    latency = {m.name: m.latency_ms for m in choice.measurements}
    assert latency["torch"] == pytest.approx(1.1) and latency["onnx"] == pytest.approx(0.4)
    assert "one image: onnx (0.40 ms p50)" in choice.describe()


@pytest.fixture(scope="module")
def test_images():
    return np.random.default_rng(2).random((10_000, 1, 28, 28), dtype=np.float32)


def with_mnist(test_images, fp32_right, fp32_wrong):
    """Check images with a test set of 10,000 images: first `fp32_right` near ties that fp32 reads
    right (a reduced runtime with `ties` reads them wrong), then `fp32_wrong` near ties that fp32
    reads wrong (and the reduced runtime right); fp32 is right on every other image."""
    images = test_images.copy()
    ties = fp32_right + fp32_wrong
    images[:ties, 0, 0, 0] = NEAR_TIE
    logits = fp32_logits(images)
    labels = logits.argmax(1)
    labels[fp32_right:ties] = np.argsort(logits[fp32_right:ties], 1)[:, -2]  # the reduced runtime's
    return CheckImages(generated().generated, (images, labels))


@pytest.mark.parametrize(
    ("fp32_right", "fp32_wrong", "taken"),
    [
        (3, 3, False),  # fp32's digit on 99.94%, though at fp32's accuracy: another set of mistakes
        (4, 0, False),  # fp32's digit on 99.96%, 0.04 points lower
        (3, 1, True),  # 99.96%, 0.02 points lower
        (4, 1, True),  # 99.95% and 0.03 points lower: at both bars
    ],
)
def test_with_mnist_reduced_precision_keeps_fp32s_digits_and_test_accuracy(
    test_images, fp32_right, fp32_wrong, taken
):
    clock = Clock()
    offered = offer(clock, torch=(1e-3, 0, 0, True), onnx_int8=(2e-4, 0, 0, False, True))
    choice = pick(offered, with_mnist(test_images, fp32_right, fp32_wrong), CONFIG, clock)
    assert choice.name == ("onnx-int8" if taken else "torch")
    agreement = 100 - (fp32_right + fp32_wrong) / 100
    fp32_accuracy = 100 - fp32_wrong / 100
    accuracy = 100 - fp32_right / 100
    check = choice.measurement("onnx-int8").check
    assert check.startswith(
        f"fp32's digit on {agreement:.2f}% of 10,000 MNIST test images, "
        f"test accuracy {accuracy:.2f}% against fp32's {fp32_accuracy:.2f}%"
    )
    assert ("99.95% and within 0.03 points needed" in check) is not taken
    if taken:
        assert check in choice.describe()  # the reason says what it was held to


def test_a_reduced_precision_candidate_that_could_not_win_is_not_checked():
    clock = Clock()
    offered = offer(clock, torch=(1e-3, 0, 0, True), onnx_int8=(2e-3, 0, 0, False))
    never = CheckImages(generated().generated, None)
    choice = pick(offered, never, CONFIG, clock)
    assert choice.name == "torch" and choice.measurement("onnx-int8").passed is None


def test_the_first_candidate_must_be_torch_fp32():
    clock = Clock()
    with pytest.raises(ValueError, match="torch fp32"):
        pick(offer(clock, onnx=(1e-3, 0, 0, True)), generated(), CONFIG, clock)


# --- the cache --------------------------------------------------------------------------------


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights, as far as the cache key is concerned")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(runtimes.CACHE_VAR, str(folder))
    return folder


def choose(model_file, builds):
    clock = Clock()
    offered = offer(clock, builds, torch=(1e-3, 0, 0, True), onnx=(5e-4, 0, 0, True))
    return choose_runtime(
        None, model_file, "cpu", offered=offered, check=generated(), timer=clock, config=CONFIG
    )


def test_a_choice_is_cached_and_read_back(model_file, cache):
    builds = []
    first = choose(model_file, builds)
    assert first.name == "onnx" and not first.cached and builds == ["torch", "onnx"]
    [stored] = cache.glob("choice-*.json")
    assert json.loads(stored.read_text())["key"]["model_sha256"] == runtimes.file_sha256(model_file)
    again = choose(model_file, builds)
    assert again.cached and builds == ["torch", "onnx"]  # nothing built or timed the second time
    assert (again.name, again.single, again.measurements) == (first.name, first.single, first.measurements)
    assert again.describe().endswith("; cached); one image: onnx (0.50 ms p50)")


@pytest.mark.parametrize("damage", ["{not json", "[]", '{"key": 1}', "null"])
def test_a_damaged_cache_file_is_ignored_and_rewritten(model_file, cache, damage):
    choose(model_file, [])
    [stored] = cache.glob("choice-*.json")
    stored.write_text(damage)
    builds = []
    choice = choose(model_file, builds)
    assert not choice.cached and builds == ["torch", "onnx"]
    assert json.loads(stored.read_text())["choice"]["name"] == "onnx"


def test_a_choice_made_under_other_rules_is_made_anew(model_file, cache, monkeypatch):
    choose(model_file, [])
    monkeypatch.setattr(runtime_cache, "RULES", runtime_cache.RULES + 1)
    builds = []
    assert not choose(model_file, builds).cached and builds == ["torch", "onnx"]
    assert choose(model_file, builds).cached  # and kept under the new rules


def test_a_stored_choice_that_names_no_known_runtime_is_ignored(model_file, cache):
    choose(model_file, [])
    [stored] = cache.glob("choice-*.json")
    content = json.loads(stored.read_text())
    content["choice"]["name"] = "tensorrt"
    stored.write_text(json.dumps(content))
    assert not choose(model_file, []).cached


def test_the_key_changes_with_the_model_the_threads_and_the_precision(model_file, tmp_path):
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"other weights")
    cpu = torch.device("cpu")
    key = runtime_cache.cache_key(model_file, cpu)
    assert runtime_cache.cache_key(model_file, cpu) == key
    assert runtime_cache.cache_key(other, cpu)["model_sha256"] != key["model_sha256"]
    assert runtime_cache.cache_key(model_file, cpu, "fp32") != key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert runtime_cache.cache_key(model_file, cpu)["threads"] == threads + 1
    finally:
        torch.set_num_threads(threads)
    assert {"cpu", "cpu_flags_sha256", "torch", "onnxruntime", "device"} <= set(key)


def test_a_model_file_is_hashed_once_and_again_when_it_is_replaced(model_file, monkeypatch):
    reads = []
    monkeypatch.setattr(runtimes, "sha256_hex", lambda content: reads.append(content) or str(len(reads)))
    runtimes._sha256_of.cache_clear()
    assert runtimes.file_sha256(model_file) == runtimes.file_sha256(model_file) == "1"
    replacement = model_file.with_suffix(".new")
    retrained = model_file.read_bytes().upper()  # the same size, as a retrained network's file is
    replacement.write_bytes(retrained)
    replacement.replace(model_file)  # as write_atomic writes a model
    assert runtimes.file_sha256(model_file) == "2" and reads[-1] == retrained
    runtimes._sha256_of.cache_clear()


def test_caching_can_be_turned_off(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv(runtimes.CACHE_VAR, "0")
    builds = []
    choose(model_file, builds)
    choose(model_file, builds)
    assert builds == ["torch", "onnx"] * 2 and runtime_cache.cache_dir() is None


def test_precision_bf16_leaves_nothing_to_choose(model_file, cache):
    with pytest.raises(MnistDigitsError, match="leaves nothing to choose"):
        choose_runtime(None, model_file, "cpu", "bf16")


# --- the real thing -------------------------------------------------------------------------------


def test_a_real_choice_on_the_reference_model(reference_model_path, mnist, cache, monkeypatch):
    """Real candidates, exports and clock, with a small budget; int8 held to a 2,000-image test set."""
    pytest.importorskip("onnxruntime")
    from pathlib import Path

    from mnist_digits.data import Split, to_tensors
    from mnist_digits.export import synthetic_digits
    from mnist_digits.predict import load_model
    from mnist_digits.pretrained import load

    model = load(reference_model_path).model
    images, labels = to_tensors(Split(mnist.test.images[:2000], mnist.test.labels[:2000]))
    check = CheckImages(synthetic_digits(200, seed=2), (images.numpy(), labels.numpy()))
    choice = choose_runtime(model, Path(reference_model_path), "cpu", config=CONFIG, check=check)
    names = [m.name for m in choice.measurements]
    assert names[0] == "torch" and {"onnx", "onnx-int8"} <= set(names)
    assert choice.name in names and choice.single in names
    assert choice.measurement(choice.name).passed and choice.measurement(choice.single).passed
    assert all(m.images_per_s > 0 and m.latency_ms > 0 for m in choice.measurements if m.images_per_s)
    assert choice.measurement("onnx").check == "same digits on 200 generated images"
    assert list((cache / "onnx").glob("*.onnx"))  # the exports are kept beside the choices

    recognizer = load_model(reference_model_path)  # finds the choice in the cache
    assert recognizer.runtime_choice is not None and recognizer.runtime_choice.cached
    assert recognizer.describe().startswith(f"runtime {choice.name} (auto: ")
    by_torch = load_model(reference_model_path, runtime="torch").predict_pixels(mnist.test.images[:300])
    by_auto = recognizer.predict_pixels(mnist.test.images[:300])
    same = np.mean([a.digit == t.digit for a, t in zip(by_auto, by_torch, strict=True)])
    assert same >= 0.99


def test_evaluate_runs_on_the_runtime_asked_for_and_records_only_pytorch(tiny_model_file, mnist_dir, capsys):
    pytest.importorskip("onnxruntime")
    model = ["--model", str(tiny_model_file), "--data-dir", str(mnist_dir), "--json", "--precision", "fp32"]
    assert main(["evaluate", *model]) == 0  # fp32 on both, on a CPU with native bf16 too
    by_torch = json.loads(capsys.readouterr().out)
    assert main(["evaluate", *model, "--runtime", "onnx"]) == 0
    out, err = capsys.readouterr()
    by_onnx = json.loads(out)
    assert (by_torch["runtime"], by_onnx["runtime"]) == ("torch", "onnx")
    assert "with runtime onnx (ONNX Runtime)" in err
    assert abs(by_onnx["accuracy"] - by_torch["accuracy"]) <= 2e-4  # a near tie may fall either way
    assert by_onnx["loss"] == pytest.approx(by_torch["loss"], rel=1e-4)
    assert main(["evaluate", *model, "--runtime", "onnx-int8", "--record"]) == 1
    assert "--record stores the PyTorch network's test accuracy" in capsys.readouterr().err


def test_the_command_line_names_the_runtimes_the_library_has():
    from mnist_digits import cli_options, predict

    assert cli_options.RUNTIMES == predict.RUNTIMES
    assert cli_options.AUTO_MIN_IMAGES == runtime_choice.AUTO_MIN_IMAGES


@pytest.mark.parametrize(
    ("asked", "library", "flags"),
    [
        (
            {"runtime": "onnx", "precision": "bf16", "tta": False},
            "precision bf16 runs on runtime torch only, not onnx: leave out precision or give runtime torch.",
            "--precision bf16 runs on --runtime torch only, not onnx: "
            "leave out --precision or give --runtime torch.",
        ),
        (
            {"runtime": "onnx-int8", "precision": "auto", "tta": True},
            "test-time augmentation is not quantized to int8: give runtime torch, onnx or auto.",
            "--tta is not quantized to int8: give --runtime torch, onnx or auto.",
        ),
    ],
)
def test_a_runtime_that_cannot_do_what_was_asked_is_refused_in_the_words_of_each(
    asked, library, flags, tiny_model_file, tmp_path, capsys
):
    """One check for load_model, predict and evaluate, worded for the library or the flags, and made
    before any image or dataset is read (the data folder here holds nothing)."""
    from mnist_digits.errors import InputError
    from mnist_digits.predict import load_model

    with pytest.raises(InputError) as caught:
        load_model(tiny_model_file, **asked)
    assert str(caught.value) == library
    options = [
        "--model",
        str(tiny_model_file),
        "--runtime",
        asked["runtime"],
        "--precision",
        asked["precision"],
    ]
    options += ["--tta"] if asked["tta"] else []
    for command in (["predict", str(tmp_path / "absent.png")], ["evaluate", "--data-dir", str(tmp_path)]):
        assert main([*command, *options]) == 1
        assert capsys.readouterr().err == f"error: {flags}\n"
