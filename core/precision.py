"""Number format of the network's arithmetic: bfloat16 autocast where the hardware runs it fast.

bfloat16 halves the memory traffic of convolutions, and CUDA GPUs and CPUs
with AMX or AVX512-BF16 units (for example Intel Xeon since Sapphire Rapids)
run it on dedicated hardware. Only the backbone runs in bfloat16: the
projection, the heads (``models.heads``), the loss and the optimiser updates
stay in float32.
"""

from __future__ import annotations

import contextlib

import torch

from core.config import PRECISIONS


def cpu_has_fast_bf16() -> bool:
    """Return whether this CPU has bfloat16 matrix units (AMX) or instructions (AVX512-BF16).

    NOTE: the speed-up was measured on an AMX CPU only. CPUs with AVX512-BF16
    but no AMX are assumed to gain too, which is unverified.
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(name: str, device: torch.device) -> str:
    """Return ``bf16`` or ``fp32`` for a precision setting of ``auto``, ``bf16`` or ``fp32``.

    ``auto`` picks bfloat16 on CUDA and on CPUs with bfloat16 units, and
    float32 on other CPUs, which lack native bfloat16 arithmetic.

    Raises:
        ValueError: for an unknown name.
    """
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Return a context that runs the network in bfloat16 when ``precision`` resolves to bf16."""
    enabled = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def inference_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Return the context for computing embeddings and labels: bfloat16 on CUDA, float32 on CPUs.

    On a CPU, inference is a small share of a run's time, and float32 gives
    the same labels from one checkpoint on CPUs with and without bfloat16 units.
    """
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
