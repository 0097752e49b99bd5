"""What runs the network: PyTorch in fp32 or bf16, or ONNX Runtime in fp32 or int8, each behind one
`logits` call, and the ONNX exports (and int8 quantizations) kept per model file.

    runtime = build_runtime("onnx", model, model_path, torch.device("cpu"))
    runtime.logits(images)          # (N, 10) for (N, 1, 28, 28) float32 in [0, 1]

Which of them `--runtime auto` takes is runtime_choice.py's concern. $MNIST_DIGITS_RUNTIME_CACHE
set to a folder keeps the exports (and auto's choices) there instead of the user cache directory.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from .batching import BATCH_SIZE
from .errors import InputError, MnistDigitsError
from .export import OnnxModel
from .files import sha256_hex

if TYPE_CHECKING:
    from .data import Mnist

TORCH, TORCH_BF16, ONNX, ONNX_INT8 = "torch", "torch-bf16", "onnx", "onnx-int8"
NAMES = (TORCH, TORCH_BF16, ONNX, ONNX_INT8)
CHOOSABLE = (TORCH, ONNX, ONNX_INT8)  # what --runtime names, besides auto (bf16 is --precision's)
CACHE_VAR = "MNIST_DIGITS_RUNTIME_CACHE"  # "0": keep no choice; a folder: keep them (and exports) there


def check_choice(runtime: str, precision: str, tta: bool) -> None:
    """Refuse a runtime that cannot do what else was asked (InputError, worded by its placeholders
    for the library or the command line): bf16 is PyTorch's, and test-time augmentation has no int8."""
    if precision == "bf16" and runtime in (ONNX, ONNX_INT8):
        raise InputError(
            advice=f"{{precision}} bf16 runs on {{runtime}} torch only, not {runtime}: "
            "leave out {precision} or give {runtime} torch."
        )
    if tta and runtime == ONNX_INT8:
        raise InputError(advice="{tta} is not quantized to int8: give {runtime} torch, onnx or auto.")


class Runtime(Protocol):
    """One way to run the network."""

    name: str  # one of NAMES

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits (N, 10) float32 for images (N, 1, 28, 28) float32 in [0, 1]."""
        ...


class TorchRuntime:
    """PyTorch on the model's device, in fp32 or with bf16 autocast."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str, bf16: bool = False) -> None:
        self.model, self.device, self.bf16 = model, torch.device(device), bf16
        self.name = TORCH_BF16 if bf16 else TORCH

    def logits(self, images: np.ndarray) -> np.ndarray:
        from .model import predict_logits

        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            return predict_logits(self.model, batch, BATCH_SIZE, bf16=self.bf16).float().cpu().numpy()


class OnnxRuntime:
    """ONNX Runtime on the CPU, with an fp32 or an int8 graph."""

    def __init__(self, session: OnnxModel, name: str | None = None) -> None:
        self.session = session
        # An int8 file is named so by `export --int8` (NAME-int8.onnx) and by the cache (KEY-int8-...).
        self.name = name or (ONNX_INT8 if "-int8" in session.path.stem else ONNX)

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.session.logits(images)


class RuntimeNetwork(torch.nn.Module):
    """A runtime as a torch module, for code written for networks (evaluate_model): forward runs it."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runtime.logits(images.detach().cpu().numpy()))


# --- building them, and the exports they run -------------------------------------------------


def build_runtime(
    name: str, model: torch.nn.Module, model_path: Path, device: torch.device, threads: int | None = None
) -> Runtime:
    """The runtime `name` for `model` (loaded from `model_path`); ONNX ones on `threads` threads."""
    if name in (TORCH, TORCH_BF16):
        return TorchRuntime(model, device, bf16=name == TORCH_BF16)
    if name in (ONNX, ONNX_INT8):
        return OnnxRuntime(cached_onnx(model, model_path, int8=name == ONNX_INT8, threads=threads), name)
    raise InputError(f"unknown runtime {name!r}; choose {', '.join(NAMES)}.")


def cached_onnx(
    model: torch.nn.Module, path: Path, tta: bool = False, *, int8: bool = False, threads: int | None = None
) -> OnnxModel:
    """The model as an ONNX Runtime session, exported once per model file into export_dir(); with
    `int8` quantized once too, calibrated on MNIST's training images when they are on this machine,
    else on generated ones."""
    from .export import export_images, export_onnx, quantize_int8
    from .files import ensure_writable_dir

    key = file_sha256(path)[:16] + ("-tta" if tta else "")
    directory = export_dir()
    fp32 = directory / f"{key}.onnx"
    if not fp32.exists():
        ensure_writable_dir(directory)
        export_onnx(model.cpu(), fp32)
    if not int8:
        return OnnxModel.load(fp32, threads)
    mnist = local_mnist()
    quantized = directory / f"{key}-int8-{'training' if mnist is not None else 'generated'}.onnx"
    if not quantized.exists():
        calibration = export_images(mnist, int8=True).calibration
        assert calibration is not None  # asked for with int8=True
        quantize_int8(fp32, quantized, calibration)
    return OnnxModel.load(quantized, threads)


def onnxruntime_version() -> str | None:
    """The installed ONNX Runtime's version, None without it; read from its metadata, not imported."""
    from importlib import metadata

    for distribution in ("onnxruntime", "onnxruntime-gpu"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def local_mnist() -> Mnist | None:
    """MNIST if it is on this machine ($MNIST_DIGITS_DATA or the user cache), never fetched; None
    when it is not, or cannot be read."""
    from . import data

    try:
        directory = data.locate(None, fetch=False, progress=False, log=lambda _: None)
        return data.load(directory, verify=False)  # locate has verified the files
    except (MnistDigitsError, OSError):
        return None


def export_dir() -> Path:
    """Where ONNX exports of model files are kept: `onnx` in $MNIST_DIGITS_RUNTIME_CACHE's folder, else
    in the user cache directory."""
    setting = os.environ.get(CACHE_VAR, "").strip()
    return Path(setting).expanduser() / "onnx" if setting not in ("", "0") else user_cache() / "onnx"


def user_cache() -> Path:
    """The package's user cache directory (MNIST is kept in its `mnist`)."""
    from .data import default_cache_dir

    return default_cache_dir().parent


def file_sha256(path: Path) -> str:
    """The file's SHA-256, in hex: what names its exports and keys auto's choices. Read once per
    version of the file (its inode, size and times: a file replaced or rewritten is read again),
    however often it is asked for."""
    stat = Path(path).stat()
    version = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return _sha256_of(str(Path(path).resolve()), version)


@functools.lru_cache(maxsize=32)
def _sha256_of(path: str, version: tuple[int, ...]) -> str:
    return sha256_hex(Path(path).read_bytes())
