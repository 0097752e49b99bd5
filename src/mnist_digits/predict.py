"""Reading digits from people's images: a loaded model behind a `predict` that takes paths,
PIL images or arrays and returns one typed result per input, including for inputs that fail.

    from mnist_digits import load_model
    model = load_model()                      # the shipped best model, on the CPU
    [p] = model.predict("seven.jpg")          # p.digit, p.probability, p.top3, p.uncertain
    [n] = model.read_number("year.png")       # n.text == "2026", n.digits[i].probability
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import torch
from PIL import Image

from . import images
from .errors import InputError
from .export import OnnxModel
from .files import ensure_writable_dir, write_atomic
from .preprocess import DEFAULT_CONFIG, PreparedDigit, PreprocessConfig, prepare_digit, segment_digits
from .pretrained import DEFAULT_MODEL

ImageInput: TypeAlias = str | Path | bytes | Image.Image | np.ndarray  # one image; bytes: a file's
DEFAULT_THRESHOLD = 0.80  # below this probability an answer is marked uncertain (docs/predicting.md)
NO_DIGIT = "no digit found"
BATCH_SIZE = 512  # images per forward pass
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
    ) -> None:
        self.device = torch.device(device)
        self.model = model if isinstance(model, OnnxModel) else model.to(self.device).eval()
        self.threshold = threshold
        self.config = config
        self.metadata = metadata or {}
        self.path = path

    def predict(
        self, inputs: ImageInput | Iterable[ImageInput], *, threshold: float | None = None
    ) -> list[Prediction]:
        """One Prediction per input image, in order; unreadable inputs get one with `error` set.

        An input is a path, a file's bytes, a PIL image or an array (H, W), (H, W, 3) or (H, W, 4):
        one image. Pass a list (e.g. `list(images)` for an (N, 28, 28) array) for several.
        """
        threshold = self.threshold if threshold is None else threshold
        sources: list[str] = []
        prepared: list[PreparedDigit | str | None] = []  # the model's input, an error, or None: no ink
        for index, item in enumerate(_as_list(inputs)):
            source = _name(item, index)
            try:
                prepared.append(prepare_digit(self._open(item, source), self.config))
            except InputError as e:
                prepared.append(_named(source, e))
            sources.append(source)
        found = [x.image for x in prepared if isinstance(x, PreparedDigit)]
        probs = iter(self.probabilities(np.stack(found)) if found else [])
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
        readings = []
        for index, item in enumerate(_as_list(inputs)):
            source = _name(item, index)
            try:
                segments = segment_digits(self._open(item, source), self.config)
            except InputError as e:
                readings.append(NumberReading.failure(source, _named(source, e)))
                continue
            if not segments:
                readings.append(NumberReading.failure(source, NO_DIGIT))
                continue
            probs = self.probabilities(np.stack([s.image for s in segments]))
            digits = tuple(
                _prediction(f"{source}#{i + 1}", p, s.image, threshold)
                for i, (p, s) in enumerate(zip(probs, segments, strict=True))
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
        from .model import predict_logits

        batch = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).unsqueeze(1)
        if isinstance(self.model, OnnxModel):
            logits = torch.from_numpy(self.model.logits(batch.numpy()))
        else:
            logits = predict_logits(self.model, batch.to(self.device), BATCH_SIZE)
        return logits.float().softmax(1).cpu().numpy()

    @property
    def parameter_count(self) -> int | None:
        """Weights in the network(s); None for an ONNX model."""
        if isinstance(self.model, OnnxModel):
            return None
        return sum(p.numel() for p in self.model.parameters())

    def _open(self, item: ImageInput, name: str) -> Image.Image | np.ndarray:
        if isinstance(item, str | Path | bytes):
            return images.open_image(item, max_side=self.config.work_side, name=name)
        if isinstance(item, Image.Image | np.ndarray):
            return item
        raise InputError(
            f"{name}: cannot read a {type(item).__name__}; give a path, a PIL image or a numpy array."
        )


RUNTIMES = ("torch", "onnx")


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    device: torch.device | str = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
    *,
    tta: bool = False,
    runtime: str = "torch",
) -> Recognizer:
    """A Recognizer for a shipped model (by default 'best'), a .safetensors model or ensemble file, or
    an .onnx file. device 'auto' picks CUDA; tta averages over a few warped views of each input;
    runtime 'onnx' runs the network with ONNX Runtime (a model file is exported once and cached).
    """
    from .device import pick_device
    from .ensemble import as_ensemble
    from .pretrained import load

    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; choose torch or onnx.")
    if Path(name_or_path).suffix == ".onnx":
        if tta:
            raise InputError("--tta needs the PyTorch model: give a .safetensors file or a shipped name.")
        return Recognizer(OnnxModel.load(Path(name_or_path)), threshold=threshold, path=Path(name_or_path))
    loaded = load(name_or_path, pick_device(str(device)))
    model = as_ensemble(loaded.model, tta)
    if runtime == "onnx":
        return Recognizer(
            cached_onnx(model, loaded.path, tta),
            threshold=threshold,
            metadata=loaded.metadata,
            path=loaded.path,
        )
    return Recognizer(
        model,
        device=next(loaded.model.parameters()).device,
        threshold=threshold,
        metadata=loaded.metadata,
        path=loaded.path,
    )


def cached_onnx(model: torch.nn.Module, path: Path, tta: bool) -> OnnxModel:
    """The model as an ONNX Runtime session, exported once into the user cache directory."""
    import hashlib

    import platformdirs

    from .export import export_onnx

    key = hashlib.sha256(path.read_bytes()).hexdigest()[:16] + ("-tta" if tta else "")
    onnx_path = Path(platformdirs.user_cache_dir("mnist-digits")) / "onnx" / f"{key}.onnx"
    if not onnx_path.exists():
        ensure_writable_dir(onnx_path.parent)
        export_onnx(model.cpu(), onnx_path)
    return OnnxModel.load(onnx_path)


def _as_list(inputs: ImageInput | Iterable[ImageInput]) -> Sequence[ImageInput]:
    if isinstance(inputs, str | Path | bytes | Image.Image | np.ndarray):
        return [inputs]
    return list(inputs)


def _name(item: object, index: int) -> str:
    if isinstance(item, str | Path):
        return str(item)
    filename = getattr(item, "filename", "")  # set by Image.open
    return str(filename) if filename else f"image {index}"


def _named(source: str, error: InputError) -> str:
    """The error's message, starting with the input's name (files' messages already do)."""
    message = str(error)
    return message if message.startswith(f"{source}: ") else f"{source}: {message}"


def _prediction(source: str, probs: np.ndarray, image: np.ndarray, threshold: float) -> Prediction:
    order = np.argsort(probs)[::-1][:3]
    top3 = tuple((int(d), float(probs[d])) for d in order)
    digit, probability = top3[0]
    return Prediction(source, digit, probability, top3, probability < threshold, image, probabilities=probs)


# --- presenting results: the CLI prints these strings -----------------------------------------


def _note(result: Prediction | NumberReading, threshold: float) -> str:
    if result.error:
        prefix = f"{result.source}: "  # errors name their file; the row already does
        message = result.error[len(prefix) :] if result.error.startswith(prefix) else result.error
        return message if result.error == NO_DIGIT else f"error: {message}"
    if isinstance(result, Prediction) and result.note:
        return result.note
    return f"uncertain (below {threshold:.0%})" if result.uncertain else ""


def _top3(prediction: Prediction) -> str:
    return ", ".join(f"{d} {p:.1%}" for d, p in prediction.top3)


def format_predictions(predictions: Sequence[Prediction], threshold: float = DEFAULT_THRESHOLD) -> str:
    """A table: image, digit, probability, top 3, and a note (uncertain, no digit, error)."""
    width = max([len("image"), *(len(p.source) for p in predictions)])
    lines = [f"{'image':<{width}}  digit  probability  {'top 3':<26}  note"]
    for p in predictions:
        digit = "-" if p.digit is None else str(p.digit)
        probability = "-" if p.digit is None else f"{p.probability:.1%}"
        line = f"{p.source:<{width}}  {digit:>5}  {probability:>11}  {_top3(p):<26}  {_note(p, threshold)}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def format_numbers(readings: Sequence[NumberReading], threshold: float = DEFAULT_THRESHOLD) -> str:
    """A table: image, number, probability that all its digits are right, each digit, a note."""
    width = max([len("image"), *(len(r.source) for r in readings)])
    number_width = max([len("number"), *(len(r.text) for r in readings)])
    lines = [f"{'image':<{width}}  {'number':>{number_width}}  probability  digits"]
    for r in readings:
        number = r.text or "-"
        probability = f"{r.probability:.1%}" if r.text else "-"
        digits = ", ".join(f"{d.digit} {d.probability:.1%}{'?' if d.uncertain else ''}" for d in r.digits)
        note = _note(r, threshold)
        line = f"{r.source:<{width}}  {number:>{number_width}}  {probability:>11}  {digits}"
        lines.append((f"{line}  {note}" if note else line).rstrip())
    return "\n".join(lines)


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    """CSV with a header: source, digit, probability, top3 ("7:0.9990 1:0.0005 ..."), uncertain, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "digit", "probability", "top3", "uncertain", "error"])
    for p in predictions:
        top3 = " ".join(f"{d}:{q:.4f}" for d, q in p.top3)
        probability = f"{p.probability:.4f}" if p.digit is not None else ""
        writer.writerow(
            [p.source, "" if p.digit is None else p.digit, probability, top3, p.uncertain, p.error or ""]
        )
    return buffer.getvalue()


def numbers_csv(readings: Sequence[NumberReading]) -> str:
    """CSV with a header: source, number, probability, digit_probabilities, uncertain, error."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "number", "probability", "digit_probabilities", "uncertain", "error"])
    for r in readings:
        per_digit = " ".join(f"{d.digit}:{d.probability:.4f}" for d in r.digits)
        probability = f"{r.probability:.4f}" if r.text else ""
        writer.writerow([r.source, r.text, probability, per_digit, r.uncertain, r.error or ""])
    return buffer.getvalue()


def save_inputs(directory: Path, predictions: Sequence[Prediction]) -> list[Path]:
    """Write each prediction's 28x28 model input as an 8-bit PNG named after its source; the paths."""
    written, used = [], set()
    for p in predictions:
        if p.input is None:
            continue
        base, mark, index = p.source.rpartition("#")  # a digit of a number: "year.png#2"
        stem = f"{Path(base).stem}_{index}" if mark and index.isdigit() else Path(p.source).stem
        stem = stem or "image"
        name, copy = f"{stem}.png", 2
        while name in used:
            name, copy = f"{stem}-{copy}.png", copy + 1
        used.add(name)
        buffer = io.BytesIO()
        Image.fromarray((np.clip(p.input, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        write_atomic(directory / name, buffer.getvalue())
        written.append(directory / name)
    return written
