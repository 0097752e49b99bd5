"""Models shipped inside the package, found by name, and loading by name or path."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from .checkpoint import LoadedModel

SUFFIX = ".safetensors"
DEFAULT_MODEL = "robust"  # what reads digits unless told otherwise: two networks trained for other pens too
REFERENCE_MODEL = "reference"  # the Keras notebook reproduced: `train` and `summary` start from it


def available() -> dict[str, Path]:
    """Shipped model names and their files."""
    folder = resources.files("mnist_digits") / "pretrained"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(SUFFIX)
    }


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model's file for a name like 'best', or else the model file at that path.

    A shipped name wins over a file or folder of the same name in the working directory
    (a training run's folder is often called `best`); write `./best` to mean the file.
    """
    shipped = available()
    if isinstance(name_or_path, str) and name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        inside = path / f"model{SUFFIX}"
        hint = f"; did you mean {inside}?" if inside.is_file() else "; give a model file."
        raise CheckpointError(f"{path}: is a folder, not a model file{hint}")
    if path.suffix == SUFFIX or len(path.parts) > 1:
        raise CheckpointError(f"{path}: no such model file.")
    names = ", ".join(shipped) or "none"
    raise CheckpointError(f"{name_or_path!r} is neither a model file nor a shipped model (shipped: {names}).")


def load(name_or_path: str | Path = DEFAULT_MODEL, device: torch.device | str = "cpu") -> LoadedModel:
    """Load a shipped model by name, or any model file by path, in eval mode."""
    from .checkpoint import load_model

    return load_model(resolve(name_or_path), device)


@dataclass(frozen=True)
class ShippedModel:
    """What `mnist-digits models` shows of one shipped model."""

    name: str
    networks: int  # 1, or the ensemble's size
    parameters: int  # weights in all its networks
    file_bytes: int
    test_accuracy: float | None  # on MNIST's 10,000 test images, as recorded in the file
    outside_accuracy: float | None  # on the 1,797 UCI digits of 43 other writers, as recorded
    latency_ms: float | None  # median time to read one 28x28 image, measured now on this CPU
    default_for: str  # the commands that use it when no --model is given


def catalog(measure_latency: bool = True, repeats: int = 30) -> list[ShippedModel]:
    """Every shipped model with its size and recorded accuracies; optionally timed on this CPU."""
    from .model import keras_parameter_count

    models = []
    for name, path in available().items():
        loaded = load(name)
        metadata = loaded.metadata
        outside = (metadata.get("outside_mnist") or {}).get("uci_digits") or {}
        models.append(
            ShippedModel(
                name=name,
                networks=len(loaded.members_metadata),
                parameters=keras_parameter_count(loaded.model),
                file_bytes=path.stat().st_size,
                test_accuracy=metadata.get("test_accuracy"),
                outside_accuracy=outside.get("accuracy"),
                latency_ms=_latency_ms(loaded.model, repeats) if measure_latency else None,
                default_for=DEFAULT_FOR.get(name, ""),
            )
        )
    return models


DEFAULT_FOR = {
    DEFAULT_MODEL: "predict, serve, evaluate, report, export, load_model()",
    REFERENCE_MODEL: "train, summary",
}


def _latency_ms(model: torch.nn.Module, repeats: int) -> float:
    """Median milliseconds for one 28x28 image through the network(s), after a warm-up, on one thread
    as the server runs each request (one image is too little work to share between cores)."""
    import statistics
    import time

    import torch

    image = torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device)
    times = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i in range(repeats + 3):
                start = time.perf_counter()
                model(image)
                if i >= 3:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times) * 1000
