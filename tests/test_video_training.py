"""Pretraining on a real video list that mixes good files with truncated, zero-byte, garbage and missing ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.video_fixtures import CODECS, encode

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def video_list(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    codec, suffix, options = CODECS["h264"]
    lines = []
    for i in range(8):
        encode(str(root / f"good_{i}.{suffix}"), codec, options)
        lines.append(f"good_{i}.{suffix} {i % 3}")
    good = (root / f"good_0.{suffix}").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (root / "zero.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(bytes(range(256)) * 40)
    lines += ["truncated.mp4 0", "zero.mp4 1", "garbage.mp4 2", "missing.mp4 0"]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root / "train.txt"


def pretrain(run_dir: Path, video_list: Path, *extra: str) -> subprocess.CompletedProcess:
    overrides = [
        f"output_dir={run_dir}", "~data.datasets.digits_images", "~data.datasets.digits_clips",
        "data.datasets.clips.kind=video", f"data.datasets.clips.path={video_list}", "data.datasets.clips.missing=drop",
        "data.datasets.clips.stride=2", "data.datasets.clips.decoder=auto",
        "model.backbone=vit_test", "model.patch_size=8", "data.img_size=32", "data.num_frames=4",
        "targets.pixel.head.depth=1", "targets.pixel.head.dim=32", "targets.pixel.head.heads=2",
        "data.batch_size=4", "data.num_workers=1", "train.steps_per_epoch=6", "train.epochs=1",
        "log.every_steps=1", "log.progress_bar=false", "log.image_every_steps=0", *extra,
    ]
    return subprocess.run([sys.executable, "-m", "vmim.cli", "pretrain", "--config",
                           str(REPO / "configs/demo/digits.yaml"), *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_bad_files_are_skipped_reported_once_and_counted(tmp_path, video_list):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = pretrain(tmp_path, video_list, "data.max_bad_fraction=0.5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "step 6/6" in log
    assert "1 of 12 listed files are missing" in log and "missing.mp4" in log
    for name in ("zero.mp4", "garbage.mp4"):  # every file is drawn (24 samples over 11 files): these always fail
        reports = [line for line in log.splitlines() if "bad file" in line and name in line]
        assert len(reports) == 1, (name, reports)
    assert sum("bad file" in line and "truncated.mp4" in line for line in log.splitlines()) <= 1
    assert not any("bad file" in line and "good_" in line for line in log.splitlines())
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    bad = events.Scalars("data/bad_files")[-1].value
    assert bad >= 3  # missing + zero-byte + garbage (+ truncated when a late window was drawn)
    assert "loss_by_dataset/clips" in events.Tags()["scalars"]


def test_bad_fraction_over_threshold_stops_with_a_clear_error(tmp_path, video_list):
    proc = pretrain(tmp_path, video_list, "data.max_bad_fraction=0.1")
    assert proc.returncode != 0
    assert "data.max_bad_fraction=0.1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_image_folder_and_video_list_train_together(tmp_path, video_list):
    import numpy as np
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.jpg", quality=90)
    proc = pretrain(tmp_path / "run", video_list, "data.max_bad_fraction=0.5", "data.datasets.clips.weight=1",
                    "data.datasets.pics.kind=image", "data.datasets.pics.format=image_folder",
                    f"data.datasets.pics.path={tmp_path / 'images'}", "data.datasets.pics.weight=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = EventAccumulator(str(tmp_path / "run" / "tb")).Reload().Tags()["scalars"]
    assert {"loss_by_dataset/clips", "loss_by_dataset/pics"} <= set(tags)


def test_segment_sampling_and_pad_overflow_train(tmp_path, video_list):
    proc = pretrain(tmp_path, video_list, "data.max_bad_fraction=0.5", "data.datasets.clips.sampling=segments",
                    "data.datasets.clips.overflow=pad", "data.num_frames=8", "train.steps_per_epoch=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 2/2" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("method,model", [
    ("maskfeat_mvit_s", ["model.backbone=mvitv2_test", "model.q_pool_blocks=[1]"]),
    ("maskfeat_vit_b", ["model.backbone=vit_test", "model.patch_size=8"]),
])
def test_maskfeat_pretrains_on_a_video_list(tmp_path, video_list, method, model):
    """The MaskFeat method configs, shrunk, on real decoded clips: MViT in its pre-training layout (one q pool fewer:
    8 px output tokens) and the dense ViT, cube masks on 1x2x2-token units, HOG targets, finite losses."""
    from vmim.engine.metrics import read_metrics

    overrides = [
        f"output_dir={tmp_path}", *model, "data.datasets.clips.kind=video", f"data.datasets.clips.path={video_list}",
        "data.datasets.clips.missing=drop", "data.datasets.clips.stride=2", "data.max_bad_fraction=0.5",
        "data.img_size=32", "data.num_frames=4", "data.batch_size=4", "data.num_workers=1", "train.steps_per_epoch=4",
        "train.epochs=1", "train.precision=fp32", "optim.warmup_epochs=0", "log.every_steps=1",
        "log.progress_bar=false", "log.image_every_steps=0"]  # fp32: auto is bf16 on AVX512-BF16 CPUs
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", "pretrain", "--config",
                           str(REPO / f"configs/methods/{method}.yaml"), *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss/hog"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss/hog" in r]
    assert len(losses) == 4 and all(0 < x < 10 for x in losses), losses


@pytest.mark.parametrize("method,target,extra", [
    ("simmim_vit_b", "pixel", []),
    ("fastmim_vit_b", "hog", ["targets.hog.cell_size=4", "targets.hog.head.dim=32", "targets.hog.head.heads=2"]),
    ("lomar_vit_b", "pixel", ["masking.window_size=3", "log.image_every_steps=2"]),
])
def test_dense_image_methods_pretrain_on_a_video_list(tmp_path, video_list, method, target, extra):
    """SimMIM (shared relative position bias, 2x2-token units), FastMIM (pixel-space mask token, dense decoder) and
    LoMaR (space-time window tubes drawn in the loader's worker, per-block relative position bias, with its preview),
    shrunk and given tubelets of 2 frames, on real decoded clips: finite losses."""
    from vmim.engine.metrics import read_metrics

    overrides = [
        f"output_dir={tmp_path}", "model.backbone=vit_test", "model.patch_size=8", "model.tubelet_size=2",
        "data.datasets.clips.kind=video", f"data.datasets.clips.path={video_list}", "data.datasets.clips.missing=drop",
        "data.datasets.clips.stride=2", "data.max_bad_fraction=0.5", "data.img_size=32", "data.num_frames=4",
        "data.batch_size=4", "data.num_workers=1", "train.steps_per_epoch=3", "train.epochs=1", "train.precision=fp32",
        "optim.warmup_epochs=0", "log.every_steps=1", "log.progress_bar=false", "log.image_every_steps=0", *extra]
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", "pretrain", "--config",
                           str(REPO / f"configs/methods/{method}.yaml"), *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r[f"loss/{target}"] for r in read_metrics(tmp_path / "metrics.jsonl") if f"loss/{target}" in r]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses), losses


def test_progressive_resolution_on_a_video_list_through_decode_isolation(tmp_path, video_list):
    """FastMIM-P, shrunk, on real decoded clips read in the isolated decoder child: the stage size travels with each
    batch to the loader worker, epoch 0 at 16 px and epoch 1 at 32 px (the previews' sizes: a pixel target in place
    of HOG, which has no image to show), finite losses."""
    from vmim.engine.metrics import read_metrics

    overrides = [
        f"output_dir={tmp_path}", "model.backbone=vit_test", "model.patch_size=8", "model.tubelet_size=2",
        "~targets.hog", "targets.pixel.head.kind=linear",
        "data.datasets.clips.kind=video", f"data.datasets.clips.path={video_list}", "data.datasets.clips.missing=drop",
        "data.datasets.clips.stride=2", "data.max_bad_fraction=0.5", "data.img_size=32", "data.num_frames=4",
        "data.img_size_schedule=[{epoch: 0, img_size: 16}, {epoch: 1, img_size: 32}]", "data.decode_isolation=true",
        "data.batch_size=4", "data.num_workers=1", "train.steps_per_epoch=2", "train.epochs=2", "train.precision=fp32",
        "optim.warmup_epochs=0", "log.every_steps=1", "log.progress_bar=false", "log.image_every_steps=1"]
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", "pretrain", "--config",
                           str(REPO / "configs/methods/fastmim_p_vit_b.yaml"), *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss/pixel"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss/pixel" in r]
    assert len(losses) == 4 and all(0 < x < 10 for x in losses), losses
    log = (tmp_path / "log.txt").read_text()
    assert "epoch 0: clips resized to 16x16" in log and "epoch 1: clips resized to 32x32" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    sides = [(e.step, e.height // 3) for e in events.Images("reconstruction")]  # input / masked / reconstruction rows
    assert sides == [(1, 16), (2, 16), (3, 32), (4, 32)], sides
