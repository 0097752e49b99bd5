"""What `--runtime auto` chose and measured, and where the choice is kept: one JSON file per
machine and model file in the user cache directory ($MNIST_DIGITS_RUNTIME_CACHE: 0 keeps none, a
folder keeps them there)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import MnistDigitsError
from .runtimes import CACHE_VAR, NAMES, TORCH, Runtime, file_sha256, onnxruntime_version, user_cache

AUTO = "auto"
RULES = 2  # in the cache key: a change to how candidates are timed or checked makes every choice anew


@dataclass(frozen=True)
class Measurement:
    """One candidate, as `auto` found it."""

    name: str
    images_per_s: float | None  # batches of ChoiceConfig.batch; None: it could not run
    latency_ms: float | None  # p50 of one-image calls; None: it could not run
    passed: bool | None  # held to fp32's answers and kept them; None: not checked (it could not win)
    check: str  # what its answers were compared on and what was found, or why it was left out


@dataclass(frozen=True)
class RuntimeChoice:
    """What `auto` chose, and what it measured."""

    name: str  # the runtime for batches
    single: str  # the runtime for one image at a time (lowest p50 latency)
    reason: str  # why `name`, for the line that says which runtime runs
    measurements: tuple[Measurement, ...]  # torch fp32 first
    cached: bool = False  # read from the cache, not measured now
    runtimes: dict[str, Runtime] = field(default_factory=dict, repr=False, compare=False)  # built ones

    def measurement(self, name: str) -> Measurement:
        return next(m for m in self.measurements if m.name == name)

    def describe(self) -> str:
        """One line: 'runtime onnx-int8 (auto: 2.4x torch here, ...; cached); one image: onnx (0.30 ms)'."""
        cached = "; cached" if self.cached else ""
        latency = self.measurement(self.single).latency_ms
        single = f"one image: {self.single} ({latency:.2f} ms p50)"
        return f"runtime {self.name} (auto: {self.reason}{cached}); {single}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "single": self.single,
            "reason": self.reason,
            "measurements": [asdict(m) for m in self.measurements],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any], cached: bool = False) -> RuntimeChoice:
        """A choice as to_dict wrote it; ValueError, KeyError or TypeError for anything else."""
        measurements = tuple(Measurement(**m) for m in raw["measurements"])
        timed = {m.name: m for m in measurements if _number(m.images_per_s) and _number(m.latency_ms)}
        names = [m.name for m in measurements]
        if names[:1] != [TORCH] or not set(names) <= set(NAMES) or not isinstance(raw["reason"], str):
            raise ValueError(f"not a runtime choice: {names}")
        if raw["name"] not in timed or raw["single"] not in timed:
            raise ValueError("the chosen runtimes were never timed")
        return cls(raw["name"], raw["single"], raw["reason"], measurements, cached)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


# --- the cache ----------------------------------------------------------------------------------


def cache_dir() -> Path | None:
    """Where choices are kept: the folder $MNIST_DIGITS_RUNTIME_CACHE names, else `runtimes` in the user
    cache directory; None when it is 0 (none is kept)."""
    setting = os.environ.get(CACHE_VAR, "").strip()
    if setting == "0":
        return None
    return Path(setting).expanduser() if setting else user_cache() / "runtimes"


def cache_key(model_path: Path, device: torch.device, precision: str = AUTO) -> dict[str, Any]:
    """What a choice depends on: the model file, the processor, the threads, the library versions,
    the device and the precision asked for."""
    from . import __version__

    return {
        "rules": RULES,
        "mnist_digits": __version__,
        "model_sha256": file_sha256(model_path),
        **_cpu(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime_version(),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "precision": precision,
    }


@functools.cache
def _cpu() -> dict[str, str]:
    """The processor's model name and a digest of its feature flags (vector width, bf16, AMX...),
    read once a process: they do not change under it."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux
        lines = []
    fields: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())  # the first processor's
    flags = " ".join(sorted(fields.get("flags", "").split()))
    return {
        "cpu": fields.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest(),
    }


def _cache_file(key: dict[str, Any]) -> Path | None:
    directory = cache_dir()
    if directory is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return directory / f"choice-{digest}.json"


def cached_choice(key: dict[str, Any]) -> RuntimeChoice | None:
    """The choice kept for `key`; None when there is none, or the file is unreadable or not one."""
    path = _cache_file(key)
    if path is None:
        return None
    try:
        stored = json.loads(path.read_text())
        if stored["key"] != key:
            return None
        return RuntimeChoice.from_dict(stored["choice"], cached=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged file is no error: the choice is made again and the file rewritten


def keep_choice(key: dict[str, Any], choice: RuntimeChoice) -> None:
    """Write the choice for `key`; a cache that cannot be written is no error (it is chosen again)."""
    from .files import write_atomic

    path = _cache_file(key)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"key": key, "choice": choice.to_dict()}, indent=2).encode())
    except (OSError, MnistDigitsError):
        pass
