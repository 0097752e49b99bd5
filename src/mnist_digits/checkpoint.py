"""Model files: safetensors weights with the JSON metadata in the same file's header.

One file per model keeps weights and description together, is written atomically, and is
loaded without unpickling anything. The metadata holds the configs (so the model can be
rebuilt from the file alone), metrics, data checksums, library versions and the date.
Training checkpoints add the optimizer, scheduler and random-number states under prefixes.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from . import __version__
from .errors import CheckpointError
from .files import write_atomic
from .model import DigitNet, ModelConfig

FORMAT = "mnist-digits/1"  # bump when the layout of the file changes
MODEL_PREFIX = "model."
MEMBER_PREFIX = "member{}."  # an ensemble's i-th network: member0.model.0.weight, ...
OPTIMIZER_PREFIX = "optimizer."
RNG_PREFIX = "rng."


def environment() -> dict[str, str]:
    """Versions and date recorded in every file we write."""
    return {
        "mnist_digits": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors and metadata to one safetensors file, atomically."""
    header = {"format": FORMAT, "metadata": json.dumps(metadata, sort_keys=True)}
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(Path(path), save_bytes(plain, metadata=header))


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a file written by `save`; CheckpointError if it is not one."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such model file.") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}).") from e
    try:
        tensors = load_bytes(raw)
        header_len = int.from_bytes(raw[:8], "little")  # safetensors: u64 length, JSON header
        header = json.loads(raw[8 : 8 + header_len]).get("__metadata__") or {}
    except Exception as e:  # safetensors raises several types for damaged files
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({e}). It may be truncated or corrupt; "
            "use another checkpoint or train again."
        ) from e
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an mnist-digits model file (format {header.get('format')!r}, expected {FORMAT!r})."
        )
    return tensors, json.loads(header["metadata"])


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}


def save_model(path: Path, model: DigitNet, metadata: dict[str, Any]) -> None:
    """A model file: weights plus metadata (the model config is added here)."""
    metadata = {**metadata, "model_config": model.config.to_dict(), "environment": environment()}
    save(path, model_tensors(model), metadata)


def build_model(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], path: Path) -> DigitNet:
    """Rebuild the network from its stored config and load the weights, strictly."""
    try:
        config = ModelConfig.from_dict(metadata["model_config"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: the metadata has no usable model_config ({e}).") from e
    model = DigitNet(config)
    weights = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0:2]
        raise CheckpointError(
            f"{path}: the weights do not fit the architecture in its metadata: {' '.join(first)}"
        ) from e
    return model


def as_half(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors in float16, others (BatchNorm's step counts) as they are."""
    return {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}


def round_to_half(model: torch.nn.Module) -> None:
    """Round the weights, in place, to the values a float16 file stores (computing stays float32)."""
    model.load_state_dict(as_half(model.state_dict()))


def save_ensemble(
    path: Path,
    models: list[DigitNet],
    members: list[dict[str, Any]],
    metadata: dict[str, Any],
    half: bool = False,
) -> None:
    """One file for several networks: member i's weights under "member{i}.", its metadata
    (as save_model writes it) in the list metadata["members"]. `half` stores the weights as
    float16, half the size; loading turns them back into float32."""
    tensors: dict[str, torch.Tensor] = {}
    for i, model in enumerate(models):
        tensors.update({MEMBER_PREFIX.format(i) + k: v for k, v in model_tensors(model).items()})
    members = [
        {**m, "model_config": model.config.to_dict()} for m, model in zip(members, models, strict=True)
    ]
    dtype = "float16" if half else "float32"
    metadata = {**metadata, "members": members, "weights_dtype": dtype, "environment": environment()}
    save(path, as_half(tensors) if half else tensors, metadata)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # a DigitNet, or an ensemble.Ensemble of them
    metadata: dict[str, Any]
    path: Path

    @property
    def members_metadata(self) -> list[dict[str, Any]]:
        """Each network's own metadata: one entry for a single model."""
        return self.metadata.get("members") or [self.metadata]


def load_model(path: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """A model in eval mode with its metadata, from a model, ensemble or training checkpoint file."""
    from .ensemble import Ensemble

    tensors, metadata = read(path)
    if "members" not in metadata:
        model: torch.nn.Module = build_model(tensors, metadata, Path(path))
    else:
        networks = []
        for i, member in enumerate(metadata["members"]):
            prefix = MEMBER_PREFIX.format(i)
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            networks.append(build_model(own, member, Path(path)))
        model = Ensemble(networks)
    return LoadedModel(model.to(device).eval(), metadata, Path(path))
