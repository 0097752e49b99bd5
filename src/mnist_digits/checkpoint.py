"""Model files: safetensors weights with the JSON metadata in the same file's header.

One file per model keeps weights and description together, is written atomically, and is
loaded without unpickling anything. The metadata holds the configs (so the model can be
rebuilt from the file alone), metrics, data checksums, library versions and the date.
Training checkpoints add the optimizer, scheduler and random-number states under prefixes;
ensemble files may store their weights in float16 or int8 (see `compress`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from . import __version__
from .errors import CheckpointError, MnistDigitsError
from .files import write_atomic
from .metadata import WEIGHTS_DTYPES, metadata_problem
from .model import DigitNet, ModelConfig, is_whole, shown

FORMAT = "mnist-digits/1"  # bump when the layout of the file changes
MODEL_PREFIX = "model."
MEMBER_PREFIX = "member{}."  # an ensemble's i-th network: member0.model.0.weight, ...
OPTIMIZER_PREFIX = "optimizer."
RNG_PREFIX = "rng."
CHECKSUM_KEY = "tensors_sha256"  # header field beside "format": see tensors_sha256; older files lack it
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on a file's JSON header
# The tensor types of safetensors' names that these files hold, and their sizes in bytes.
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
DAMAGED = "the file is damaged or was not written by mnist-digits; use another model file or train again."

_log = logging.getLogger(__name__)  # unconfigured, Python prints warnings as bare lines on stderr


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
    """Write tensors and metadata to one safetensors file, atomically, with the tensors' checksum."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    header = {
        "format": FORMAT,
        "metadata": json.dumps(metadata, sort_keys=True),
        CHECKSUM_KEY: tensors_sha256(plain),
    }
    write_atomic(Path(path), save_bytes(plain, metadata=header))


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: a flipped bit, a
    swapped name or a reshaped tensor all change it."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(value.dtype), list(value.shape)]).encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (int8 weights expanded to float32) and metadata of a file written by `save`;
    CheckpointError if it is not one, or if its header or weights are damaged."""
    tensors, metadata = _read_stored(Path(path))
    try:
        return expand(tensors), metadata
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: its int8 weights and their scales do not match ({e}); {DAMAGED}"
        ) from e


def update_metadata(path: Path, values: dict[str, Any]) -> None:
    """Add `values` to a file's metadata, its tensors stored exactly as they were (int8 stays int8)."""
    tensors, metadata = _read_stored(Path(path))
    save(path, tensors, {**metadata, **values})


def _read_stored(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors as stored and the metadata, the file read once and every header field checked
    before safetensors allocates a tensor."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such model file.") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e}).") from e
    try:
        header = _safetensors_header(raw)
    except ValueError as e:
        if path.suffix == ".onnx":
            raise CheckpointError(
                f"{path}: an ONNX file; only `predict` reads those. Give the .safetensors model it was "
                "exported from, or a shipped model's name."
            ) from e
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({e}). It may be truncated or corrupt; "
            "use another checkpoint or train again."
        ) from e
    fields = header.get("__metadata__") or {}
    if fields.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an mnist-digits model file (format {shown(fields.get('format'))}, expected "
            f"{FORMAT!r}); give a file written by `mnist-digits train`, `join`, or a shipped model's name."
        )
    metadata = _metadata(fields, path)
    try:
        tensors = load_bytes(raw)
    except Exception as e:  # the header was checked above, but safetensors raises several types
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({e}). It may be truncated or corrupt; "
            "use another checkpoint or train again."
        ) from e
    recorded = fields.get(CHECKSUM_KEY)
    if recorded is None:
        _log.warning(
            f"note: {path} records no checksum of its weights (it was written by an older version), "
            "so damage to them cannot be detected."
        )
    elif tensors_sha256(tensors) != recorded:
        raise CheckpointError(
            f"{path}: its weights do not match the checksum in its header, so the file is damaged. "
            "Use another copy of it, or train again."
        )
    return tensors, metadata


def _safetensors_header(raw: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors file's bytes; ValueError unless it is a JSON object whose
    every tensor entry has a known dtype, a shape, and offsets that tile the data exactly, all
    computed with Python integers (a shape of 2**30 x 2**30 x 16 cannot wrap around to 0)."""
    if len(raw) < 8:
        raise ValueError(f"only {len(raw)} bytes")
    length = int.from_bytes(raw[:8], "little")  # safetensors: u64 length, then that much JSON
    if length > min(MAX_HEADER_BYTES, len(raw) - 8):
        raise ValueError(
            f"its header claims {length:,} bytes; the file holds {len(raw) - 8:,} after the length"
        )
    try:
        header = json.loads(raw[8 : 8 + length])
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"its header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"its header is {type(header).__name__}, not a JSON object")
    data_length, spans = len(raw) - 8 - length, []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ValueError("its __metadata__ is not an object of strings")
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"tensor {shown(name)} is not described by dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise ValueError(f"tensor {shown(name)} has dtype {shown(dtype)}, which these files do not hold")
        if not isinstance(shape, list) or len(shape) > 8 or not all(is_whole(d) and d >= 0 for d in shape):
            raise ValueError(f"tensor {shown(name)} has shape {shown(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(is_whole(o) for o in offsets)):
            raise ValueError(f"tensor {shown(name)} has data_offsets {shown(offsets)}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_length or end - begin != math.prod(shape) * DTYPE_SIZES[dtype]:
            raise ValueError(
                f"tensor {shown(name)} of shape {shown(shape)} does not fit its bytes {begin}-{end}"
            )
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise ValueError("its tensors' bytes overlap or leave gaps")
        position = end
    if position != data_length:
        raise ValueError(f"its tensors take {position:,} bytes of the {data_length:,} after the header")
    return header


def _metadata(fields: dict[str, str], path: Path) -> dict[str, Any]:
    """The metadata object of a header's fields, every field this project writes checked."""
    if "metadata" not in fields:
        raise CheckpointError(f"{path}: the header has no metadata; {DAMAGED}")
    try:
        metadata = json.loads(fields["metadata"])
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: its metadata is not JSON ({e}); {DAMAGED}") from None
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"{path}: its metadata is {type(metadata).__name__}, not a JSON object; {DAMAGED}"
        )
    recorded = fields.get(CHECKSUM_KEY)
    if recorded is not None and (len(recorded) != 64 or set(recorded) - set("0123456789abcdef")):
        raise CheckpointError(f"{path}: its {CHECKSUM_KEY} {shown(recorded)} is not a sha256; {DAMAGED}")
    problem = metadata_problem(metadata)
    if problem:
        raise CheckpointError(f"{path}: {problem}; {DAMAGED}")
    return metadata


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}


def save_model(path: Path, model: DigitNet, metadata: dict[str, Any]) -> None:
    """A model file: weights plus metadata (the model config is added here)."""
    metadata = {**metadata, "model_config": model.config.to_dict(), "environment": environment()}
    save(path, model_tensors(model), metadata)


def build_model(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], path: Path) -> DigitNet:
    """Rebuild the network from its stored config and load the weights, strictly; the weights are
    checked against the config before any layer is built."""
    return _built(*_checked(tensors, metadata, path))


def _checked(
    tensors: dict[str, torch.Tensor], metadata: dict[str, Any], path: Path, which: str = ""
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """One network's config and its weights (prefix removed), checked against each other."""
    config = stored_config(metadata, path, which)
    weights = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    check_weights(weights, config, path, which)
    return config, weights


def _built(config: ModelConfig, weights: dict[str, torch.Tensor]) -> DigitNet:
    """The network, with weights check_weights has already matched to its config name by name."""
    model = DigitNet(config)
    model.load_state_dict(weights, strict=True)
    return model


def stored_config(metadata: dict[str, Any], path: Path, which: str = "") -> ModelConfig:
    """The ModelConfig a file's (or an ensemble member's) metadata holds; CheckpointError if none."""
    if "model_config" not in metadata:
        raise CheckpointError(f"{path}: the metadata{which} has no model_config; {DAMAGED}")
    try:
        return ModelConfig.from_dict(metadata["model_config"])
    except MnistDigitsError as e:
        raise CheckpointError(
            f"{path}: the model_config{which} is wrong: {str(e).rstrip('.')}; {DAMAGED}"
        ) from e


def check_weights(weights: dict[str, torch.Tensor], config: ModelConfig, path: Path, which: str = "") -> None:
    """CheckpointError unless `weights` are exactly the tensors of a DigitNet(config), by name and
    shape, floating point where the network's are, and finite. The network is laid out on the meta
    device, which allocates nothing, so a config that asks for terabytes costs nothing here."""
    with torch.device("meta"):
        expected = DigitNet(config).state_dict()
    problem = ""
    if missing := [k for k in expected if k not in weights]:
        problem = f"it lacks {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    elif unexpected := sorted(k for k in weights if k not in expected):
        problem = f"it holds {unexpected[0]}, which the network has not"
    for name, value in expected.items():
        if problem:
            break
        stored = weights[name]
        if tuple(stored.shape) != tuple(value.shape):
            problem = f"{name} is {_dims(stored)}, the network's is {_dims(value)}"
        elif value.is_floating_point() and not stored.is_floating_point():
            problem = f"{name} holds {stored.dtype}, not floating-point numbers"
        elif stored.is_floating_point() and not bool(torch.isfinite(stored).all()):
            problem = f"{name} holds NaN or infinite values"
    if problem:
        raise CheckpointError(
            f"{path}: the weights{which} do not fit the architecture in its metadata: {problem}; {DAMAGED}"
        )


def _dims(tensor: torch.Tensor) -> str:
    return "x".join(str(d) for d in tensor.shape) or "a scalar"


# How an ensemble file may store its weights. "int8": each weight matrix and convolution kernel
# as 8-bit integers with one float32 scale per output channel (a quarter of float32's size);
# biases and BatchNorm's parameters, a few hundred numbers per network, in float16.
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
    """The inverse of `compress`: int8 weights times their scales, in float32; other tensors as
    stored. ValueError if a scale has no int8 weight of its own or not one number per output channel."""
    scales = {k[len(SCALE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(SCALE_PREFIX)}
    plain = {k: v for k, v in tensors.items() if not k.startswith(SCALE_PREFIX)}
    for name, scale in scales.items():
        quantized = plain.get(name)
        if quantized is None or quantized.dtype != torch.int8 or quantized.dim() < 2:
            raise ValueError(f"a scale for {name}, which is not an int8 weight of the file")
        if scale.dim() != 1 or len(scale) != len(quantized) or not scale.is_floating_point():
            raise ValueError(f"the scale of {name} is not one number per output channel")
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
    """A model in eval mode with its metadata, from a model, ensemble or training checkpoint file.
    Every network's config and weights are checked before the first is built."""
    from .ensemble import Ensemble

    path = Path(path)
    tensors, metadata = read(path)
    if "members" not in metadata:
        model: torch.nn.Module = build_model(tensors, metadata, path)
        return LoadedModel(model.to(device).eval(), metadata, path)
    members = metadata["members"]
    if not members:
        raise CheckpointError(f"{path}: an ensemble file with no networks in it; join it again.")
    prefixes = [MEMBER_PREFIX.format(i) for i in range(len(members))]
    stray = sorted(k for k in tensors if not k.startswith(tuple(prefixes)))
    if stray:
        raise CheckpointError(f"{path}: holds {stray[0]}, a tensor of no network of the ensemble; {DAMAGED}")
    parts = []  # every network checked before the first is built
    for i, (member, prefix) in enumerate(zip(members, prefixes, strict=True)):
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        odd = sorted(k for k in own if not k.startswith(MODEL_PREFIX))
        if odd:
            raise CheckpointError(f"{path}: holds {prefix}{odd[0]}, a tensor of no network; {DAMAGED}")
        parts.append(_checked(own, member, path, f" of network {i + 1}"))
    model = Ensemble([_built(config, weights) for config, weights in parts])
    return LoadedModel(model.to(device).eval(), metadata, path)
