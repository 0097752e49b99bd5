"""Where the network runs: one choice, shared by training and inference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import MnistDigitsError

AUTO = "auto"
PRECISIONS = (AUTO, "fp32", "bf16")  # "auto": bf16 where the device computes it natively, else fp32


def mps_available() -> bool:
    """Apple's Metal GPU (Apple silicon, macOS 12.3+), when this PyTorch build has it."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(name: str = AUTO) -> torch.device:
    """'auto' takes a CUDA GPU, else Apple's MPS, else the CPU; any other name is checked, not trusted."""
    if name == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise MnistDigitsError(
            f"unknown device {name!r}; give auto, cpu, cuda, cuda:N or mps ({e})."
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MnistDigitsError(
            f"device {name!r} was asked for, but PyTorch sees no CUDA GPU here; use cpu, or auto to take a "
            "GPU when there is one."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise MnistDigitsError(
            f"device {name!r} was asked for, but PyTorch sees {torch.cuda.device_count()} CUDA GPU(s) "
            f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})."
        )
    if device.type == "mps" and not mps_available():
        raise MnistDigitsError(
            f"device {name!r} was asked for, but this PyTorch has no Apple MPS GPU here; use cpu or auto."
        )
    if device.type not in ("cpu", "cuda", "mps"):
        raise MnistDigitsError(f"device {name!r} is not supported; give auto, cpu, cuda, cuda:N or mps.")
    return device


def native_bf16(device: torch.device) -> str | None:
    """What computes bfloat16 natively on `device` (such as "AMX"), or None where it would be
    emulated, and slower than float32: CPUs without AVX-512 BF16 or AMX, GPUs before Ampere, MPS."""
    if device.type == "cuda":
        return "a CUDA GPU with bf16" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    # PyTorch's own probes of the CPU (torch.cpu, since 2.2), as oneDNN sees it
    probes = (("_is_amx_tile_supported", "AMX"), ("_is_avx512_bf16_supported", "AVX-512 BF16"))
    for probe, name in probes:
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return name
    return None


@dataclass(frozen=True)
class Precision:
    """The number format the network computes in, and why it was chosen."""

    name: str  # "fp32" or "bf16" (autocast: matrix products in bfloat16, results in float32)
    reason: str  # for the line that says which was chosen

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


def pick_precision(name: str, device: torch.device) -> Precision:
    """'auto' takes bf16 where `device` computes it natively and fp32 elsewhere; 'fp32', 'bf16' stay."""
    if name not in PRECISIONS:
        raise MnistDigitsError(f"unknown precision {name!r}; choose {', '.join(PRECISIONS)}.")
    native = native_bf16(device)
    if name == "fp32":
        return Precision("fp32", "asked for")
    if name == "bf16":
        return Precision(
            "bf16", f"asked for; native on {native}" if native else "asked for; emulated here, slower"
        )
    if native:
        return Precision("bf16", f"auto: {native} computes bf16 natively")
    return Precision("fp32", f"auto: bf16 would be emulated on this {device.type.upper()}")
