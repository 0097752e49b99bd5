"""What the benchmarks report about the machine they ran on."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name, e.g. 'AMD EPYC'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# The processor features that decide fp32 speed (vector width) and whether bf16 is native.
NOTABLE_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_flags(wanted: tuple[str, ...] = NOTABLE_FLAGS) -> list[str]:
    """Which of `wanted` the processor reports (none where /proc/cpuinfo cannot be read)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []
    )
    return [flag for flag in wanted if flag in flags]


def describe_cpu() -> str:
    """The model name and which notable flags it has and lacks, e.g. 'AMD EPYC; avx2 (no avx512f, ...)'."""
    have = cpu_flags()
    lacking = [flag for flag in NOTABLE_FLAGS if flag not in have]
    flags = ", ".join(have) or "none of " + ", ".join(NOTABLE_FLAGS)
    return f"{cpu_name()}; {flags}" + (f" (no {', '.join(lacking)})" if have and lacking else "")
