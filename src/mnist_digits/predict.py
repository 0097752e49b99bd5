"""Reading digits from people's images: a loaded model behind a `predict` that takes paths,
PIL images or arrays and returns one typed result per input, including for inputs that fail.

    from mnist_digits import load_model
    model = load_model()                      # the shipped default model, robust, on the CPU
    [p] = model.predict("seven.jpg")          # p.digit, p.probability, p.top3, p.uncertain
    [n] = model.read_number("year.png")       # n.text == "2026", n.digits[i].probability

Many inputs (a folder of files) are opened and preprocessed by a pool of worker processes, one
per core, while this process runs the network on them in batches.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image

from .batching import Batches, default_workers, tasks
from .errors import InputError, MnistDigitsError
from .export import OnnxModel
from .preprocess import (
    DEFAULT_CONFIG,
    DigitSegment,
    Prepared,
    PreparedDigit,
    PreprocessConfig,
    prepare_digit,
    prepare_inputs,
    segment_digits,
)
from .pretrained import DEFAULT_MODEL
from .runtime_cache import AUTO, RuntimeChoice
from .runtime_choice import AutoRuntime
from .runtimes import CHOOSABLE, OnnxRuntime, Runtime, TorchRuntime, cached_onnx, check_choice

ImageInput: TypeAlias = str | Path | bytes | Image.Image | np.ndarray  # one image; bytes: a file's
DEFAULT_THRESHOLD = 0.80  # below this probability an answer is marked uncertain (docs/predicting.md)
NO_DIGIT = "no digit found"
MIN_POOL_INPUTS = 64  # fewer inputs are read in this process: starting a pool would cost more
CHUNKS_AHEAD = 4  # tasks queued per worker: enough to keep it busy, few enough to bound the memory
# An MNIST-format image holds a digit when its bright half (pixels above the middle of its range)
# is at least this many pixels (MNIST's smallest digit has 15)...
MIN_INK_PIXELS = 10
MAX_INK_SHARE = 0.6  # ...and at most this share of the field (MNIST's digits cover at most 40%)


@dataclass(frozen=True)
class Prediction:
    """The model's reading of one image (or of one digit of a number)."""

    source: str  # the file's path, or "image 3" for the fourth in-memory input
    digit: int | None  # the most probable digit; None when no digit was found or the input failed
    probability: float  # of `digit`, 0-1 (0.0 without one)
    top3: tuple[tuple[int, float], ...]  # (digit, probability), most probable first
    uncertain: bool  # probability below the threshold: a guess, not an answer
    input: np.ndarray | None = field(default=None, repr=False, compare=False)  # (28, 28) the model saw
    error: str | None = None  # NO_DIGIT, or why the input could not be read
    note: str | None = None  # a caveat, e.g. that the image seems to hold several digits
    probabilities: np.ndarray | None = field(default=None, repr=False, compare=False)  # (10,), all digits

    @classmethod
    def failure(cls, source: str, error: str) -> Prediction:
        return cls(source, None, 0.0, (), False, None, error)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the input image."""
        return {
            "source": self.source,
            "digit": self.digit,
            "probability": self.probability,
            "top3": [{"digit": d, "probability": p} for d, p in self.top3],
            "uncertain": self.uncertain,
            "error": self.error,
            "note": self.note,
        }


@dataclass(frozen=True)
class NumberReading:
    """The digits of one image read left to right as a number."""

    source: str  # the file's path, or "image 3" for the fourth in-memory input
    text: str  # the digits, e.g. "2026"; "" when none was found
    digits: tuple[Prediction, ...]  # one per digit, left to right
    boxes: tuple[tuple[int, int, int, int], ...]  # left, top, right, bottom of each digit, image pixels
    probability: float  # that every digit is right: the product of the digits' probabilities
    uncertain: bool  # some digit is uncertain
    error: str | None = None  # NO_DIGIT, or why the input could not be read

    @classmethod
    def failure(cls, source: str, error: str) -> NumberReading:
        return cls(source, "", (), (), 0.0, False, error)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "number": self.text,
            "probability": self.probability,
            "uncertain": self.uncertain,
            "digits": [
                {**d.to_dict(), "box": list(box)} for d, box in zip(self.digits, self.boxes, strict=True)
            ],
            "error": self.error,
        }


class Recognizer:
    """A trained model with the preprocessing and the threshold that turn images into answers."""

    def __init__(
        self,
        model: torch.nn.Module | OnnxModel,
        *,
        device: torch.device | str = "cpu",
        threshold: float = DEFAULT_THRESHOLD,
        config: PreprocessConfig = DEFAULT_CONFIG,
        metadata: dict[str, Any] | None = None,
        path: Path | None = None,
        workers: int | None = None,
        bf16: bool = False,
        auto_runtime: str | None = None,
    ) -> None:
        """auto_runtime 'auto' or 'fp32' (a PyTorch model and its `path` needed): batched work runs on
        the fastest runtime of that precision that keeps fp32's answers (runtime_choice.AutoRuntime);
        None: the model runs as given, in bf16 with `bf16`."""
        self.device = torch.device(device)
        self.bf16 = bf16 and not isinstance(model, OnnxModel)  # autocast the network to bfloat16
        # Weights laid out as predict_logits lays out the images: a quarter less CPU time per image,
        # and the same probabilities to within 1e-6.
        self.model = (
            model
            if isinstance(model, OnnxModel)
            else model.to(self.device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        )
        self.threshold = threshold
        self.config = config
        self.metadata = metadata or {}
        self.path = path
        self.workers = workers
        self._runtime: Runtime = (
            OnnxRuntime(self.model)
            if isinstance(self.model, OnnxModel)
            else TorchRuntime(self.model, self.device, self.bf16)
        )
        self._auto: AutoRuntime | None = None
        if auto_runtime is not None:
            if isinstance(self.model, OnnxModel) or path is None:
                raise InputError("choosing a runtime needs the PyTorch model and its file.")
            self._auto = AutoRuntime(self.model, path, self.device, auto_runtime, self._runtime)

    @property
    def runtime_choice(self) -> RuntimeChoice | None:
        """auto's choice (cached, or made by work of runtime_choice.AUTO_MIN_IMAGES images or more); None
        before it is made, and when the runtime was given."""
        return self._auto.choice if self._auto is not None else None

    def choose_runtime(self) -> RuntimeChoice | None:
        """Make auto's choice now, if it is not cached (seconds, once per machine and model), as the
        server does before its first request; None when the runtime was given."""
        return self._auto.choose() if self._auto is not None else None

    def describe(self) -> str:
        """The runtime that runs the network, and why: for the line the command line prints."""
        if self._auto is not None:
            return self._auto.describe()
        return f"runtime {self._runtime.name}"

    @property
    def workers(self) -> int | None:
        """Processes that open and preprocess many inputs at once: None, one per core; 1, none (all in
        this process). Fewer than MIN_POOL_INPUTS inputs are always read in this process."""
        return self._workers

    @workers.setter
    def workers(self, workers: int | None) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise InputError(
                f"workers {workers!r}: give a number of processes, 1 or more (1 reads every image in "
                "this process), or None for one per core."
            )
        self._workers = workers

    def predict(
        self, inputs: ImageInput | Iterable[ImageInput], *, threshold: float | None = None
    ) -> list[Prediction]:
        """One Prediction per input image, in order; unreadable inputs get one with `error` set.

        An input is a path, a file's bytes, a PIL image or an array (H, W), (H, W, 3) or (H, W, 4):
        one image. Pass a list (e.g. `list(images)` for an (N, 28, 28) array) for several.
        """
        threshold = self.threshold if threshold is None else threshold
        items = _as_list(inputs)
        self._network(len(items))  # auto chooses its runtime before many inputs, not within the batches
        sources = [_name(item, index) for index, item in enumerate(items)]
        prepared: list[PreparedDigit | str | None] = []  # the model's input, an error, or None: no ink
        with Batches(self.probabilities, self._pool_size(len(items)) > 1) as batches:
            for x in self._prepared(prepare_digit, sources, items):
                prepared.append(x)
                if isinstance(x, PreparedDigit):
                    batches.add(x.image)
        probs = iter(batches.probabilities)
        results = []
        for source, x in zip(sources, prepared, strict=True):
            if not isinstance(x, PreparedDigit):
                results.append(Prediction.failure(source, NO_DIGIT if x is None else x))
                continue
            prediction = _prediction(source, next(probs), x.image, threshold)
            if x.digits_seen > 1:  # a number squeezed into one box: whatever it says is a guess
                note = f"{x.digits_seen} separate digits in the image; read it as a number (--multi)"
                prediction = replace(prediction, uncertain=True, note=note)
            results.append(prediction)
        return results

    def read_number(
        self, inputs: ImageInput | Iterable[ImageInput], *, threshold: float | None = None
    ) -> list[NumberReading]:
        """Each image's separate digits, read left to right as a number."""
        threshold = self.threshold if threshold is None else threshold
        items = _as_list(inputs)
        self._network(len(items))
        sources = [_name(item, index) for index, item in enumerate(items)]
        found: list[list[DigitSegment] | str] = []  # each image's digits ([]: no ink), or an error
        with Batches(self.probabilities, self._pool_size(len(items)) > 1) as batches:
            for x in self._prepared(segment_digits, sources, items):
                found.append(x)
                for segment in x if isinstance(x, list) else []:
                    batches.add(segment.image)
        probs = iter(batches.probabilities)
        readings = []
        for source, segments in zip(sources, found, strict=True):
            if isinstance(segments, str):
                readings.append(NumberReading.failure(source, segments))
                continue
            if not segments:
                readings.append(NumberReading.failure(source, NO_DIGIT))
                continue
            digits = tuple(
                _prediction(f"{source}#{i + 1}", next(probs), s.image, threshold)
                for i, s in enumerate(segments)
            )
            readings.append(
                NumberReading(
                    source,
                    "".join(str(d.digit) for d in digits),
                    digits,
                    tuple(s.box for s in segments),
                    float(np.prod([d.probability for d in digits])),
                    any(d.uncertain for d in digits),
                )
            )
        return readings

    def predict_pixels(
        self, pixels: np.ndarray | Sequence[np.ndarray], *, threshold: float | None = None
    ) -> list[Prediction]:
        """Predictions for images already in MNIST's format, (N, 28, 28) uint8 0-255 or floats 0-1,
        white on black (Kaggle's CSV rows, MNIST itself): no preprocessing, the model sees them as they are.
        """
        threshold = self.threshold if threshold is None else threshold
        array = np.asarray(pixels)
        inputs = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        if inputs.ndim != 3 or inputs.shape[1:] != (28, 28):
            raise InputError(f"MNIST-format pixels must be (N, 28, 28); these are {inputs.shape}.")
        found = self._holds_a_digit(inputs)
        probs = iter(self.probabilities(inputs[found]) if found.any() else [])
        return [
            _prediction(f"image {i}", next(probs), x, threshold)
            if found[i]
            else Prediction.failure(f"image {i}", NO_DIGIT)
            for i, x in enumerate(inputs)
        ]

    def _holds_a_digit(self, inputs: np.ndarray) -> np.ndarray:
        """(N,) bool for (N, 28, 28) inputs in [0, 1]: not blank, uniform, nearly empty or ink all over.

        The model answers anything confidently, a black square included: these get NO_DIGIT, as a
        blank photo does in the preprocessing.
        """
        flat = np.nan_to_num(inputs.reshape(len(inputs), -1))
        top, bottom = flat.max(1, initial=0.0), flat.min(1, initial=1.0)
        ink = (flat > ((top + bottom) / 2)[:, None]).sum(1)
        return (
            (top - bottom >= self.config.min_contrast)
            & (ink >= MIN_INK_PIXELS)
            & (ink <= MAX_INK_SHARE * flat.shape[1])
        )

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) for model inputs (N, 28, 28): floats in [0, 1], white on black.

        This skips the preprocessing: it is for inputs that went through it, or are MNIST's format.
        """
        batch = np.ascontiguousarray(inputs, dtype=np.float32)[:, None]
        logits = torch.from_numpy(self._network(len(batch)).logits(batch))
        return logits.float().softmax(1).numpy()

    def _network(self, count: int) -> Runtime:
        """The runtime for `count` images at once (auto's one-image runtime for 1)."""
        return self._auto.runtime(count) if self._auto is not None else self._runtime

    @property
    def parameter_count(self) -> int | None:
        """Weights in the network(s); None for an ONNX model."""
        if isinstance(self.model, OnnxModel):
            return None
        return sum(p.numel() for p in self.model.parameters())

    def _pool_size(self, count: int) -> int:
        """Worker processes for `count` inputs, at most; 1: none, they are read in this process."""
        if count < MIN_POOL_INPUTS:
            return 1
        return default_workers() if self.workers is None else self.workers

    def _prepared(
        self,
        prepare: Callable[[Image.Image | np.ndarray, PreprocessConfig], Prepared],
        sources: Sequence[str],
        items: Sequence[ImageInput],
    ) -> Iterator[Prepared | str]:
        """`prepare` of each input in order (prepare_inputs'), by a pool of processes for many inputs."""
        named = list(zip(sources, items, strict=True))
        if self._pool_size(len(named)) == 1:
            yield from prepare_inputs(prepare, named, self.config)
            return
        chunks = list(tasks(named))
        workers = min(self._pool_size(len(named)), len(chunks))  # a worker per task at most
        # Ctrl-C reaches the workers too: they ignore it, and this process stops them, quietly.
        pool = ProcessPoolExecutor(
            workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)
        )
        pending: deque[Future[list[Prepared | str]]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(prepare_inputs, prepare, chunk, self.config))
                if len(pending) >= CHUNKS_AHEAD * workers:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        except BrokenProcessPool as e:
            raise MnistDigitsError(
                "a worker process reading the images stopped (out of memory, or a script that reads "
                'images outside `if __name__ == "__main__":`, which each worker runs again); guard the '
                "script, or set workers=1 to read them in this process."
            ) from e
        finally:
            pool.shutdown(cancel_futures=True)


RUNTIMES = (AUTO, *CHOOSABLE)


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: torch.device | str = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
    *,
    tta: bool = False,
    runtime: str = "auto",
    workers: int | None = None,
    precision: str = "auto",
) -> Recognizer:
    """A Recognizer for a shipped model (by default 'robust'), a .safetensors model or ensemble file, or
    an .onnx file. device 'auto' picks CUDA; tta averages over a few warped views of each input;
    runtime 'auto' runs work of many images on the fastest runtime here that keeps PyTorch fp32's
    answers (timed once per machine and model, then cached: runtime_choice.py), and single images on
    PyTorch unless a choice is cached; 'torch'; 'onnx' or 'onnx-int8', ONNX Runtime (a model file is
    exported once and cached); workers: processes that read many images at once (None: one per core;
    1: none); precision 'auto' runs PyTorch in bf16 where the device computes it natively, else fp32
    ('fp32', 'bf16' force). Test-time augmentation and bf16 asked for leave auto nothing to choose:
    they run on PyTorch.
    """
    from .device import pick_device, pick_precision
    from .ensemble import as_ensemble
    from .pretrained import load

    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose {', '.join(RUNTIMES)}.")
    if Path(name_or_path).suffix == ".onnx":
        if tta:
            raise InputError(
                "test-time augmentation needs the PyTorch model: give a .safetensors file or a shipped name."
            )
        return Recognizer(
            OnnxModel.load(Path(name_or_path)), threshold=threshold, path=Path(name_or_path), workers=workers
        )
    chosen_device = pick_device(str(device))
    bf16 = pick_precision(precision, chosen_device).bf16
    check_choice(runtime, precision, tta)
    loaded = load(name_or_path, chosen_device)
    model = as_ensemble(loaded.model, tta)
    if runtime in ("onnx", "onnx-int8"):
        return Recognizer(
            cached_onnx(model, loaded.path, tta, int8=runtime == "onnx-int8"),
            threshold=threshold,
            metadata=loaded.metadata,
            path=loaded.path,
            workers=workers,
        )
    return Recognizer(
        model,
        device=next(loaded.model.parameters()).device,
        threshold=threshold,
        metadata=loaded.metadata,
        path=loaded.path,
        workers=workers,
        bf16=bf16,
        auto_runtime=None if runtime == "torch" or tta or precision == "bf16" else precision,
    )


def _as_list(inputs: ImageInput | Iterable[ImageInput]) -> Sequence[ImageInput]:
    if isinstance(inputs, str | Path | bytes | Image.Image | np.ndarray):
        return [inputs]
    return list(inputs)


def _name(item: object, index: int) -> str:
    if isinstance(item, str | Path):
        return str(item)
    filename = getattr(item, "filename", "")  # set by Image.open
    return str(filename) if filename else f"image {index}"


def _prediction(source: str, probs: np.ndarray, image: np.ndarray, threshold: float) -> Prediction:
    order = np.argsort(probs)[::-1][:3]
    top3 = tuple((int(d), float(probs[d])) for d in order)
    digit, probability = top3[0]
    return Prediction(source, digit, probability, top3, probability < threshold, image, probabilities=probs)


# --- presenting results: the CLI prints these strings -----------------------------------------
