"""Where the network runs: one choice, shared by training and inference."""

from __future__ import annotations

import torch

from .errors import MnistDigitsError

AUTO = "auto"


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
