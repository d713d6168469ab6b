"""Progressive resolution (FastMIM-P, ``data.img_size_schedule``): the epoch's stage size rides with each batch to
the loader, the dataset resizes before it masks, the config refuses bad schedules naming the key, and a run stopped
before a resolution change and resumed matches an uninterrupted one step for step."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vmim.config import ConfigError, load_config
from vmim.data import DigitImages, MaskedClipDataset
from vmim.data.sampler import KeyBatch, MixedBatchSampler, stage_size
from vmim.data.transforms import resize_clip
from vmim.engine import pretrain as engine
from vmim.engine.checkpoint import load
from vmim.engine.hooks import Hook
from vmim.engine.metrics import read_metrics
from vmim.masking import MaskGenerator

ROOT = Path(__file__).resolve().parents[1]
SCHEDULE = [(0, 12), (2, 16)]


def test_stage_size_is_the_last_stage_begun():
    assert [stage_size(SCHEDULE, e) for e in range(4)] == [12, 12, 16, 16]
    assert stage_size([(1, 8)], 0) is None and stage_size([], 5) is None


def test_sampler_hands_each_batch_its_epochs_size_also_when_resumed_mid_epoch():
    def sampler() -> MixedBatchSampler:
        return MixedBatchSampler([40, 24], [1.0, 1.0], batch_size=4, seed=3, batches_per_epoch=6,
                                 img_size_at=lambda epoch: stage_size(SCHEDULE, epoch))

    fresh = sampler()
    epochs = {}
    for epoch in range(4):
        fresh.set_epoch(epoch)
        epochs[epoch] = list(fresh)
        assert {b.img_size for b in epochs[epoch]} == {stage_size(SCHEDULE, epoch)}
    resumed = sampler()
    resumed.set_epoch(2, start_batch=4)
    batches = list(resumed)
    assert [list(b) for b in batches] == [list(b) for b in epochs[2][4:]]
    assert all(b.img_size == 16 for b in batches)
    plain = MixedBatchSampler([40, 24], [1.0, 1.0], batch_size=4, seed=3, batches_per_epoch=6)
    assert all(b.img_size is None for b in plain) and [list(b) for b in plain] == [list(b) for b in epochs[0]]


def test_resize_clip_is_antialiased_bilinear_by_hand():
    """Independent answer: float32 F.interpolate of each frame, rounded (uint8 resizing may differ by one level); a
    constant clip stays constant."""
    gen = torch.Generator().manual_seed(0)
    clip = torch.randint(0, 256, (3, 2, 32, 32), dtype=torch.uint8, generator=gen)
    out = resize_clip(clip, 12)
    assert out.shape == (3, 2, 12, 12) and out.dtype == torch.uint8
    by_hand = F.interpolate(clip.permute(1, 0, 2, 3).float(), size=(12, 12), mode="bilinear", align_corners=False,
                            antialias=True).round().permute(1, 0, 2, 3)
    assert (out.float() - by_hand).abs().max() <= 1
    assert resize_clip(clip, 32) is clip
    assert (resize_clip(torch.full((3, 1, 20, 20), 77, dtype=torch.uint8), 8) == 77).all()


def test_dataset_resizes_a_batch_to_its_size_then_masks_its_grid():
    source = DigitImages("train", img_size=32)
    dataset = MaskedClipDataset([source], {"encoder": MaskGenerator("random", 0.75, 0.75)}, (1, 4, 4))
    keys = KeyBatch([(0, 5, 11), (0, 9, 12)])
    keys.img_size = 16
    small = dataset.__getitems__(keys)
    for key, sample in zip(keys, small):
        full = dataset[key]  # the same key at the sources' own size
        assert full["clip"].shape == (3, 1, 32, 32) and full["masks"].encoder.shape == (64,)
        assert sample["clip"].shape == (3, 1, 16, 16) and sample["masks"].encoder.shape == (16,)
        assert sample["masks"].encoder.sum() == 12  # 0.75 of the 4x4 grid
        torch.testing.assert_close(sample["clip"], resize_clip(full["clip"], 16))
        assert sample["label"] == full["label"]


def test_img_size_schedule_errors_name_the_key():
    base = ["data.datasets.digits_images.weight=1"]
    method = ROOT / "configs/methods/fastmim_p_vit_b.yaml"
    assert load_config(method, base).data.img_size_schedule[0].img_size == 128
    with pytest.raises(ConfigError, match=r"data.img_size_schedule\[0\].epoch"):
        load_config(method, [*base, "data.img_size_schedule=[{epoch: 1, img_size: 128}]"])
    with pytest.raises(ConfigError, match=r"data.img_size_schedule\[1\].epoch"):
        load_config(method, [*base, "data.img_size_schedule=[{epoch: 0, img_size: 128}, {epoch: 0, img_size: 160}]"])
    with pytest.raises(ConfigError, match=r"data.img_size_schedule\[1\].img_size"):
        load_config(method, [*base, "data.img_size_schedule=[{epoch: 0, img_size: 128}, {epoch: 5, img_size: 150}]"])
    with pytest.raises(ConfigError, match=r"data.img_size_schedule\[0\].img_size"):
        load_config(method, [*base, "data.img_size_schedule=[{epoch: 0, img_size: 256}]"])
    with pytest.raises(ConfigError, match="masking.unit_size"):  # SimMIM's 2x2 units do not tile a 7x7 stage
        load_config(ROOT / "configs/methods/simmim_vit_b.yaml",
                    [*base, "data.img_size_schedule=[{epoch: 0, img_size: 112}, {epoch: 5, img_size: 224}]"])


class StopAt(Hook):
    """Sends this process SIGTERM after step ``step`` (the trainer saves at that step and stops), and records each
    step's clip size."""

    def __init__(self, step: int | None = None):
        self.step, self.sizes = step, []

    def after_step(self, trainer, batch) -> None:
        self.sizes.append(int(batch["clip"].shape[-1]))
        if trainer.state.step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def progressive_cfg(run_dir: Path):
    return load_config(ROOT / "configs/methods/fastmim_p_vit_b.yaml", [
        f"output_dir={run_dir}", "model.backbone=vit_test", "model.patch_size=4", "data.img_size=16",
        "data.img_size_schedule=[{epoch: 0, img_size: 12}, {epoch: 2, img_size: 16}]", "targets.hog.cell_size=4",
        "targets.hog.head.dim=32", "targets.hog.head.heads=2", "data.num_workers=0",
        "data.datasets.digits_images.weight=1", "data.batch_size=8", "train.steps_per_epoch=3", "train.epochs=4",
        "train.precision=fp32", "optim.warmup_epochs=1", "optim.lr=1e-2", "log.every_steps=1",
        "log.progress_bar=false", "log.image_every_steps=0", "checkpoint.every_steps=100"])


def run(cfg, stop_at: int | None = None) -> StopAt:
    trainer = engine.Trainer(cfg, engine.PretrainTask(cfg))
    hook = StopAt(stop_at)
    trainer.hooks.append(hook)
    trainer.fit()
    return hook


@pytest.mark.slow
def test_resume_across_a_resolution_change_matches_an_uninterrupted_run(tmp_path):
    if threading.current_thread() is not threading.main_thread():  # the trainer's stop handler is main-thread only
        pytest.skip("SIGTERM to this process needs the trainer in the main thread")
    reference = run(progressive_cfg(tmp_path / "reference"))
    assert reference.sizes == [12] * 6 + [16] * 6  # 3 steps per epoch, 16 px from epoch 2

    with pytest.raises(engine.StopRequested):
        run(progressive_cfg(tmp_path / "resumed"), stop_at=5)  # mid-epoch 1, the last stage at 12 px
    stopped = load(tmp_path / "resumed" / "checkpoints" / "last.pt")["train_state"]
    assert (stopped["step"], stopped["epoch"], stopped["batch_in_epoch"]) == (5, 1, 2)
    resumed = run(progressive_cfg(tmp_path / "resumed"))  # resume: auto
    assert resumed.sizes == [12] + [16] * 6

    def losses(run_dir: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}

    expected, got = losses(tmp_path / "reference"), losses(tmp_path / "resumed")
    assert sorted(got) == sorted(expected) == list(range(1, 13))
    assert [got[s] for s in expected] == pytest.approx([expected[s] for s in expected], rel=1e-6, abs=1e-7)
    assert len({round(expected[s], 6) for s in expected}) == 12  # a loss that moves, so the comparison means something
    final_a = load(tmp_path / "reference" / "checkpoints" / "last.pt")["model"]
    final_b = load(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    for name, tensor in final_a.items():
        torch.testing.assert_close(final_b[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    log = (tmp_path / "resumed" / "log.txt").read_text()
    assert "epoch 2: clips resized to 16x16" in log and "epoch 0: clips resized to 12x12" in log
    assert np.isfinite(list(got.values())).all()
