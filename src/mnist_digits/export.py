"""Export to ONNX (dynamic batch size), checked against PyTorch, and int8 quantization.

The exported graph takes `images` (N, 1, 28, 28) float32 in [0, 1] and returns `logits`
(N, 10), like DigitNet in eval mode. ONNX Runtime runs it without PyTorch installed.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Mnist, Split, to_tensors
from .errors import MnistDigitsError
from .files import write_atomic
from .model import IMAGE_SIZE

INPUT_NAME, OUTPUT_NAME = "images", "logits"
CHECK_IMAGES = 256  # images the export's logits are compared with PyTorch's on
CALIBRATION_IMAGES = 512  # images int8 quantization is calibrated on


class ExportError(MnistDigitsError):
    """The model could not be exported, or the export does not compute what PyTorch does."""


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError("ONNX support needs the optional packages: pip install 'mnist-digits[onnx]'") from e
    return onnxruntime


@contextmanager
def quiet() -> Iterator[None]:
    """Hide the exporters' progress chatter and deprecation notes; errors still raise."""
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "onnxruntime")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(model: torch.nn.Module, path: Path, opset: int = 18) -> Path:
    """Write the model as ONNX with a dynamic batch dimension (atomically)."""
    model = model.cpu().eval()
    example = torch.rand(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    try:
        with quiet():
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset,
                verbose=False,
            )
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs onnx and onnxscript: pip install 'mnist-digits[onnx]' ({e})."
        ) from e
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"
        program.save(str(staged), external_data=False)
        write_atomic(Path(path), staged.read_bytes())
    return Path(path)


@dataclass
class OnnxModel:
    """An ONNX Runtime session that maps images to logits."""

    session: object  # onnxruntime.InferenceSession
    path: Path

    @classmethod
    def load(cls, path: Path, threads: int | None = None) -> OnnxModel:
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for unreadable models
            raise ExportError(f"{path}: not a loadable ONNX model ({e}).") from e
        return cls(session, Path(path))

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits (N, 10) for float32 images (N, 1, 28, 28)."""
        batch = np.ascontiguousarray(images, dtype=np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]  # type: ignore[attr-defined]


def max_difference(onnx_model: OnnxModel, model: torch.nn.Module, images: np.ndarray) -> float:
    """Largest absolute difference between ONNX and PyTorch logits on `images`."""
    with torch.inference_mode():
        expected = model.cpu().eval()(torch.from_numpy(images)).numpy()
    return float(np.abs(onnx_model.logits(images) - expected).max())


def check_export(
    onnx_model: OnnxModel, model: torch.nn.Module, images: np.ndarray, tolerance: float
) -> float:
    """Raise ExportError unless ONNX and PyTorch agree within `tolerance` on `images`."""
    difference = max_difference(onnx_model, model, images)
    if difference > tolerance:
        raise ExportError(
            f"{onnx_model.path}: ONNX logits differ from PyTorch by {difference:.2e} "
            f"(tolerance {tolerance:.0e}); the export is wrong, do not use it."
        )
    return difference


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, batch_size: int = 64) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on `calibration` images."""
    _onnxruntime()
    from onnxruntime import quantization as q

    class Batches(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[np.ndarray] = (
                calibration[i : i + batch_size] for i in range(0, len(calibration), batch_size)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        prepared, staged = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        with quiet():
            q.quant_pre_process(str(fp32_path), str(prepared))
            q.quantize_static(
                str(prepared),
                str(staged),
                Batches(),
                quant_format=q.QuantFormat.QDQ,
                per_channel=True,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
            )
        write_atomic(Path(int8_path), staged.read_bytes())
    return Path(int8_path)


def synthetic_digits(count: int, seed: int = 0) -> np.ndarray:
    """Digit-like images (N, 1, 28, 28) in [0, 1]: random pen strokes, thick and centred like MNIST's,
    for checking and calibrating an export where the MNIST files are not at hand."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    scale = 4  # drawn at 112x112, then shrunk: smooth edges like MNIST's anti-aliased strokes
    images = np.empty((count, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i in range(count):
        canvas = Image.new("L", (IMAGE_SIZE * scale, IMAGE_SIZE * scale))
        pen = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(1, 4)):  # one to three strokes of two to five points
            points = rng.uniform(4 * scale, 24 * scale, size=(rng.integers(2, 6), 2))
            pen.line(
                [tuple(p) for p in points], fill=255, width=int(rng.integers(2, 4)) * scale, joint="curve"
            )
        small = canvas.filter(ImageFilter.GaussianBlur(scale / 2)).resize((IMAGE_SIZE, IMAGE_SIZE))
        images[i, 0] = np.asarray(small, dtype=np.float32) / 255.0
    return images


@dataclass(frozen=True)
class ExportImages:
    """What an export is checked, calibrated and measured on; images (N, 1, 28, 28) in [0, 1]."""

    check: np.ndarray  # compared with PyTorch on these
    checked_on: str  # which images they are: "test", or "generated" (synthetic_digits)
    calibration: np.ndarray | None  # int8 is calibrated on these; None: no int8 copy asked for
    calibrated_on: str  # "training", or "generated"
    test: tuple[np.ndarray, np.ndarray] | None  # MNIST's test images and labels; None: not at hand


def export_images(mnist: Mnist | None, int8: bool = False) -> ExportImages:
    """With MNIST: test images to check on, training images to calibrate on and the test set for
    accuracy. Without it (None): generated digit-like images for both, and no accuracy."""
    if mnist is None:
        calibration = synthetic_digits(CALIBRATION_IMAGES, seed=1) if int8 else None
        return ExportImages(synthetic_digits(CHECK_IMAGES), "generated", calibration, "generated", None)
    test_images, test_labels = (t.numpy() for t in to_tensors(mnist.test))
    calibration = None
    if int8:
        train = Split(mnist.train.images[:CALIBRATION_IMAGES], mnist.train.labels[:CALIBRATION_IMAGES])
        calibration = to_tensors(train)[0].numpy()
    return ExportImages(
        test_images[:CHECK_IMAGES], "test", calibration, "training", (test_images, test_labels)
    )


def onnx_accuracy(model: OnnxModel, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    """Share of `images` (N, 1, 28, 28) whose top ONNX logit is the label."""
    logits = [model.logits(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return float((np.concatenate(logits).argmax(1) == labels).mean())


@dataclass(frozen=True)
class ExportedFile:
    path: Path
    kind: str  # "fp32", or "int8" (quantized from the fp32 file)
    difference: float | None  # largest |ONNX - PyTorch| logit on the check images (fp32 only)
    accuracy: float | None  # on MNIST's test set, when it was at hand


def export_checked(
    model: torch.nn.Module,
    output: Path,
    check_images: np.ndarray,
    *,
    calibration: np.ndarray | None = None,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    tolerance: float = 1e-4,
) -> list[ExportedFile]:
    """Write `output` (fp32) checked against PyTorch on `check_images`, and with `calibration` images
    an int8 copy beside it (`NAME-int8.onnx`); with `test` (images, labels) each file's accuracy."""
    fp32 = export_onnx(model, output)
    difference = check_export(OnnxModel.load(fp32), model, check_images, tolerance)
    files: list[tuple[Path, str, float | None]] = [(fp32, "fp32", difference)]
    if calibration is not None:
        int8 = quantize_int8(fp32, output.with_name(f"{output.stem}-int8.onnx"), calibration)
        files.append((int8, "int8", None))
    return [
        ExportedFile(path, kind, diff, onnx_accuracy(OnnxModel.load(path), *test) if test else None)
        for path, kind, diff in files
    ]
