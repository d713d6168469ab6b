"""TFLOP/s and MFU (``vmim.engine.throughput``): the GPU peak table by name, the measured CPU peak, and a tiny
pretraining run whose TensorBoard event files hold ``perf/tflops`` and ``perf/mfu`` that agree with the model FLOPs,
the window's time and the log line."""

from __future__ import annotations

import re

import pytest
import torch

from tests.conftest import clip_batch, make_mask
from tests.test_pretrain_e2e import REPO, TINY
from vmim.engine import pretrain as engine
from vmim.engine import throughput
from vmim.config import load_config
from vmim.engine.metrics import read_metrics
from vmim.engine.throughput import batch_signature, gpu_peak_tflops, peak_tflops, step_flops, table_precision
from vmim.masking import Masks
from vmim.meta_arch import build_method


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.5), ("NVIDIA H100 80GB HBM3", "tf32", 494.5),
    ("NVIDIA H100 PCIe", "bf16", 756.5), ("NVIDIA H100 NVL", "fp16", 835.5), ("NVIDIA H200", "bf16", 989.5),
    ("NVIDIA A100-SXM4-80GB", "tf32", 156.0), ("NVIDIA A100 80GB PCIe", "bf16", 312.0), ("NVIDIA A10", "bf16", 125.0),
    ("NVIDIA L40S", "bf16", 362.05), ("NVIDIA L40", "bf16", 181.05), ("NVIDIA L4", "fp32", 30.3),
    ("Tesla V100-SXM2-32GB", "fp16", 125.0), ("Tesla V100-PCIE-16GB", "fp16", 112.0),
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2), ("NVIDIA GeForce RTX 3090", "fp16", 71.0),
    # not in the table, or not for that precision: measured at start-up instead
    ("NVIDIA A10G", "bf16", None), ("NVIDIA GH200 480GB", "bf16", None), ("NVIDIA GeForce RTX 3090 Ti", "bf16", None),
    ("Tesla V100-SXM2-32GB", "bf16", None),
])
def test_gpu_peak_table_by_device_name(name, precision, peak):
    found = gpu_peak_tflops(name, precision)
    assert (found and found[0]) == peak
    if found:
        assert "datasheet" in found[1] or "whitepaper" in found[1]


def test_cpu_peak_is_measured_once_per_process_without_touching_the_global_rng(monkeypatch):
    """The measurement's matrix count depends on timing, so it must not draw from the run's generator: a run would
    not repeat (nor resume) exactly."""
    monkeypatch.setattr(throughput, "_MEASURED", {})  # measure afresh, whatever ran before in this process
    assert table_precision(torch.device("cpu"), "fp32") == "fp32"
    state = torch.get_rng_state()
    value, source = peak_tflops("cpu", "fp32")
    assert torch.equal(torch.get_rng_state(), state)
    assert value > 0 and "measured" in source and "matmul" in source
    # Cached, not measured again: the second call reports what the cache holds. (It was "returns within 0.05 s",
    # which a process descheduled for a moment on a loaded CI machine fails.)
    [(key, (measured, how))] = throughput._MEASURED.items()
    throughput._MEASURED[key] = (measured, "the cached measurement")
    assert peak_tflops("cpu", "fp32") == (value, source.replace(how, "the cached measurement"))


def test_batch_signature_follows_shapes_and_mask_counts():
    def batch(masked: int, t: int = 4) -> dict:
        return {"clip": clip_batch(b=2, t=t), "masks": {"encoder": make_mask(2, 32, masked, seed=masked)}}

    assert batch_signature(batch(24)) == batch_signature({**batch(24), "masks": {"encoder": make_mask(2, 32, 24, 9)}})
    assert batch_signature(batch(24)) != batch_signature(batch(20))
    assert batch_signature(batch(24)) != batch_signature(batch(24, t=2))


def test_pretraining_run_logs_tflops_and_mfu_to_tensorboard(tmp_path):
    """The demo config with tiny overrides, 8 steps, a log point per step (one step per window): per step, model
    FLOPs = TFLOP/s x the window's time (= batch / clips/s), and those are the FLOPs of an image batch (8 of 16 tokens
    masked) or a clip batch (24 of 32); MFU = TFLOP/s / the measured CPU peak; TensorBoard and the log line show the
    same numbers."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(REPO / "configs/demo/digits.yaml", [f"output_dir={tmp_path}", *TINY, "train.epochs=1",
                                                           "log.image_every_steps=0", "checkpoint.every_steps=100"])
    engine.pretrain(cfg)

    method, b = build_method(cfg), cfg.data.batch_size
    expected = {step_flops(method, {"clip": clip_batch(b=b, t=1), "masks": Masks(make_mask(b, 16, 8))}),
                step_flops(method, {"clip": clip_batch(b=b, t=4), "masks": Masks(make_mask(b, 32, 24))})}
    peak = peak_tflops("cpu", cfg.train.precision)[0]
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "perf/tflops" in r]
    assert [r["step"] for r in records] == list(range(1, 9))
    seen = set()
    for r in records:
        flops = r["perf/tflops"] * 1e12 * b / r["perf/clips_per_s"]
        match = min(expected, key=lambda e: abs(e - flops))
        assert flops == pytest.approx(match, rel=1e-9)
        seen.add(match)
        assert r["perf/mfu"] == pytest.approx(r["perf/tflops"] / peak, rel=1e-9)
        assert 0 < r["perf/mfu"] < 1.5
    assert seen == expected  # both modalities were trained and counted

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0}).Reload()
    for tag in ("perf/tflops", "perf/mfu"):
        logged = {e.step: e.value for e in events.Scalars(tag)}
        assert logged == pytest.approx({r["step"]: r[tag] for r in records}, rel=1e-6)

    log = (tmp_path / "log.txt").read_text()
    assert f"MFU against a peak of {peak:.4g} TFLOP/s fp32 per device: measured at start-up" in log
    lines = re.findall(r"step (\d+)/8 .* ([\d.e+-]+) TFLOP/s MFU ([\d.]+)%", log)
    assert [int(s) for s, _, _ in lines] == list(range(1, 9))
    for (_, tflops, mfu), r in zip(lines, records):
        assert float(tflops) == pytest.approx(r["perf/tflops"], rel=1e-3)
        assert float(mfu) / 100 == pytest.approx(r["perf/mfu"], abs=1e-4)
