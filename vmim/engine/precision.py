"""Device and numeric precision: what ``train.device`` / ``train.precision`` resolve to, and the autocast context.

``auto`` picks bf16 on a CUDA device that supports it and fp32 on CPU: bf16 autocast on CPU pays off only with
AVX512-BF16 / AMX, and on AVX2-only CPUs its matmuls are ~70x slower, so a CPU user opts in explicitly.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise RuntimeError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for bf16 / fp16, a no-op context for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
