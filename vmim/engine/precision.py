"""Device and numeric precision: what ``train.device`` / ``train.precision`` resolve to, and the autocast context.

``auto`` picks bf16 where the hardware computes it natively and fp32 elsewhere, and says why (the trainer logs it):

* CUDA: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and later), else fp32 (fp16 needs a loss scaler and
  is never picked silently).
* CPU: bf16 when the CPU has AVX512-BF16 or AMX tiles, fp32 otherwise. Measured on a 2-core AVX512-BF16 VM, a ViT-B
  VideoMAE step runs ~1.5x faster in bf16 than in fp32; on AVX2-only CPUs oneDNN emulates bf16 and matmuls run
  tens of times slower, so there a bf16 default would be a trap. The flags come from PyTorch's own CPU probe
  (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``, the cpuinfo checks oneDNN dispatches on),
  falling back to ``/proc/cpuinfo`` where a PyTorch build lacks them. Not from the model or CPU name.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of a CPU that computes bf16 natively."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    return torch.device(name)


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_native_bf16() -> tuple[bool, str]:
    """(whether this CPU computes bf16 natively, which feature says so)."""
    probes = {"AVX512-BF16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}
    if all(hasattr(torch.cpu, fn) for fn in probes.values()):
        found = [name for name, fn in probes.items() if getattr(torch.cpu, fn)()]
    else:
        found = sorted(flag for flag in NATIVE_BF16_FLAGS if flag in _cpuinfo_flags())
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, "the CPU has neither AVX512-BF16 nor AMX (bf16 would be emulated, far slower than fp32)"


def auto_precision(device: torch.device) -> tuple[str, str]:
    """What ``train.precision: auto`` means on ``device``: (fp32 or bf16, the reason in words)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"{torch.cuda.get_device_name(device)} supports bf16"
        return "fp32", f"{torch.cuda.get_device_name(device)} has no bf16 (fp16 is opt-in: train.precision=fp16)"
    if device.type == "cpu":
        native, why = cpu_native_bf16()
        return ("bf16" if native else "fp32"), why
    return "fp32", f"no bf16 rule for device type {device.type}"


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` on ``device``: auto resolved (:func:`auto_precision`), fp16 refused off CUDA."""
    return describe_precision(precision, device)[0]


def describe_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(the precision a run uses, why) for the log line."""
    if precision == "auto":
        chosen, why = auto_precision(device)
        return chosen, f"auto: {why}"
    if precision == "fp16" and device.type != "cuda":
        raise RuntimeError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision, "set in the config"


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for bf16 / fp16, a no-op context for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
