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
    """A shipped model's file for a name like 'reference', or else the model file at that path.

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


def load(name_or_path: str | Path = "reference", device: torch.device | str = "cpu") -> LoadedModel:
    """Load a shipped model by name, or any model file by path, in eval mode."""
    return load_model(resolve(name_or_path), device)
