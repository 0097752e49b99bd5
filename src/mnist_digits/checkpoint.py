"""Model files: safetensors weights with the JSON metadata in the same file's header.

One file per model keeps weights and description together, is written atomically, and is
loaded without unpickling anything. The metadata holds the configs (so the model can be
rebuilt from the file alone), metrics, data checksums, library versions and the date.
Training checkpoints add the optimizer, scheduler and random-number states under prefixes;
ensemble files may store their weights in float16 or int8 (see `compress`).
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
    """Tensors (int8 weights expanded to float32) and metadata of a file written by `save`;
    CheckpointError if it is not one."""
    tensors, metadata = _read_stored(Path(path))
    try:
        return expand(tensors), metadata
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its int8 weights and their scales do not match ({e}).") from e


def update_metadata(path: Path, values: dict[str, Any]) -> None:
    """Add `values` to a file's metadata, its tensors stored exactly as they were (int8 stays int8)."""
    tensors, metadata = _read_stored(Path(path))
    save(path, tensors, {**metadata, **values})


def _read_stored(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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
        if path.suffix == ".onnx":
            raise CheckpointError(
                f"{path}: an ONNX file; only `predict` reads those. Give the .safetensors model it was "
                "exported from, or a shipped model's name."
            ) from e
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({e}). It may be truncated or corrupt; "
            "use another checkpoint or train again."
        ) from e
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an mnist-digits model file (format {header.get('format')!r}, expected "
            f"{FORMAT!r}); give a file written by `mnist-digits train`, `join`, or a shipped model's name."
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


# How an ensemble file may store its weights. "int8": each weight matrix and convolution kernel
# as 8-bit integers with one float32 scale per output channel (a quarter of float32's size);
# biases and BatchNorm's parameters, a few hundred numbers per network, in float16.
WEIGHTS_DTYPES = ("float32", "float16", "int8")
SCALE_PREFIX = "scale."  # int8 files: the per-channel scale of tensor NAME is "scale.NAME"


def compress(tensors: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Tensors as a file with weights of `dtype` stores them (see WEIGHTS_DTYPES); tensors that
    are not floating point (BatchNorm's step counts) stay as they are."""
    if dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights dtype {dtype!r}: expected one of {', '.join(WEIGHTS_DTYPES)}")
    stored: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        if not value.is_floating_point() or dtype == "float32":
            stored[name] = value
        elif dtype == "float16" or value.dim() < 2:
            stored[name] = value.half()
        else:  # symmetric, per output channel: the channel's largest magnitude maps to 127
            flat = value.detach().float().flatten(1)
            scale = flat.abs().amax(1).clamp_min(1e-12) / 127
            stored[name] = (flat / scale[:, None]).round().to(torch.int8).view(value.shape)
            stored[SCALE_PREFIX + name] = scale
    return stored


def expand(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `compress`: int8 weights times their scales, in float32; other tensors as stored."""
    scales = {k[len(SCALE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SCALE_PREFIX)}
    plain = {k: v for k, v in tensors.items() if not k.startswith(SCALE_PREFIX)}
    for name, scale in scales.items():
        if name not in plain:
            raise KeyError(f"a scale for {name}, which the file does not hold")
        quantized = plain[name]
        plain[name] = (quantized.float().flatten(1) * scale.float()[:, None]).view(quantized.shape)
    return plain


def round_to_stored(model: torch.nn.Module, dtype: str) -> None:
    """Round the weights, in place, to the values a file of `dtype` weights stores (computing
    stays float32), so that what is measured is what is saved."""
    model.load_state_dict(expand(compress(model.state_dict(), dtype)))


def save_ensemble(
    path: Path,
    models: list[DigitNet],
    members: list[dict[str, Any]],
    metadata: dict[str, Any],
    weights_dtype: str = "float32",
) -> None:
    """One file for several networks: member i's weights under "member{i}.", its metadata
    (as save_model writes it) in the list metadata["members"]. `weights_dtype` "float16" or
    "int8" stores the weights in half or a quarter of the size (see `compress`); loading
    turns them back into float32."""
    tensors: dict[str, torch.Tensor] = {}
    for i, model in enumerate(models):
        tensors.update({MEMBER_PREFIX.format(i) + k: v for k, v in model_tensors(model).items()})
    members = [
        {**m, "model_config": model.config.to_dict()} for m, model in zip(members, models, strict=True)
    ]
    metadata = {**metadata, "members": members, "weights_dtype": weights_dtype, "environment": environment()}
    save(path, compress(tensors, weights_dtype), metadata)


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
        if not metadata["members"]:
            raise CheckpointError(f"{path}: an ensemble file with no networks in it; join it again.")
        networks = []
        for i, member in enumerate(metadata["members"]):
            prefix = MEMBER_PREFIX.format(i)
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            networks.append(build_model(own, member, Path(path)))
        model = Ensemble(networks)
    return LoadedModel(model.to(device).eval(), metadata, Path(path))
