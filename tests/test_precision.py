"""``train.precision: auto``: bf16 on CPUs with native bf16 (AVX512-BF16 / AMX), fp32 on others; the detection
patched both ways, the fallback to /proc/cpuinfo, and the real detection against this machine's cpuinfo flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vmim.engine import precision
from vmim.engine.precision import auto_precision, cpu_native_bf16, describe_precision, resolve_precision

CPU = torch.device("cpu")


def _patch_cpu(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16"), (False, False, "fp32")])
def test_auto_follows_native_bf16(monkeypatch, avx512_bf16, amx, expected) -> None:
    _patch_cpu(monkeypatch, avx512_bf16, amx)
    chosen, why = auto_precision(CPU)
    assert chosen == expected
    assert resolve_precision("auto", CPU) == expected
    if avx512_bf16:
        assert "AVX512-BF16" in why
    if expected == "fp32":
        assert "neither" in why


def test_explicit_precision_is_kept_and_said(monkeypatch) -> None:
    _patch_cpu(monkeypatch, False, False)
    assert describe_precision("bf16", CPU) == ("bf16", "set in the config")  # an AVX2 user may still opt in
    assert describe_precision("auto", CPU)[1].startswith("auto: ")
    with pytest.raises(RuntimeError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, True), ({"avx2", "amx_bf16", "amx_tile"}, True),
    ({"avx2", "avx512f", "avx512bw"}, False), (set(), False)])
def test_cpuinfo_fallback_without_torch_probes(monkeypatch, flags, expected) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: flags)
    assert cpu_native_bf16()[0] is expected


def test_real_detection_agrees_with_cpuinfo() -> None:
    """Independent answer: the kernel's flags for this CPU."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = precision._cpuinfo_flags()
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    assert cpu_native_bf16()[0] is native
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
