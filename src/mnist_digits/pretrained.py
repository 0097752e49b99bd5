"""Models shipped inside the package, found by name, and loading by name or path."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from .checkpoint import LoadedModel, load_model
from .errors import CheckpointError

SUFFIX = ".safetensors"


def available() -> dict[str, Path]:
    """Shipped model names and their files."""
    folder = resources.files("mnist_digits") / "pretrained"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(SUFFIX)
    }


def resolve(name_or_path: str | Path) -> Path:
    """A shipped model's file for a name like 'reference', or the path itself if it is a file."""
    path = Path(name_or_path)
    if path.suffix == SUFFIX or path.exists():
        if not path.is_file():
            raise CheckpointError(f"{path}: no such model file.")
        return path
    shipped = available()
    if str(name_or_path) not in shipped:
        names = ", ".join(shipped) or "none"
        raise CheckpointError(
            f"{name_or_path!r} is neither a model file nor a shipped model (shipped: {names})."
        )
    return shipped[str(name_or_path)]


def load(name_or_path: str | Path = "reference", device: torch.device | str = "cpu") -> LoadedModel:
    """Load a shipped model by name, or any model file by path, in eval mode."""
    return load_model(resolve(name_or_path), device)
