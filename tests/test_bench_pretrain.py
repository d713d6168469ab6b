"""tools/bench_pretrain.py: a config against a ``--baseline-config`` in one run, with memory figures (no timing
assertions: only that the report is complete and self-consistent)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import bench_pretrain  # noqa: E402

TINY = ["model.backbone=vit_test", "model.patch_size=4", "targets.pixel.head.depth=1", "targets.pixel.head.dim=32",
        "targets.pixel.head.heads=2", "data.img_size=16", "data.num_frames=4", "data.batch_size=2",
        "train.precision=fp32"]


BASELINE = ["--baseline-config", str(REPO / "configs/methods/videomae_vit_b.yaml"), "--baseline-overrides",
            "model.backbone=vit_test", "model.patch_size=4", "targets.pixel.head.depth=1", "targets.pixel.head.dim=32",
            "targets.pixel.head.heads=2"]
"""A method base without datasets (a placeholder is added) at 224 px x 16 frames x batch 32 in its file: the main
config's input is forced onto it."""


def bench_json(capsys, *options: str, baseline: bool = True) -> dict:
    argv = ["--config", str(REPO / "configs/demo/digits.yaml"), "--modality", "video", "--steps", "1", "--warmup",
            "0", "--json", *options, *TINY, *(BASELINE if baseline else [])]
    assert bench_pretrain.main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_config_against_baseline_config(capsys) -> None:
    out = bench_json(capsys, "--no-rss")
    base = out["baseline"]
    assert base["forced"] == {"data.img_size": 16, "data.num_frames": 4, "data.batch_size": 2,
                              "train.precision": "fp32", "train.device": "auto"}
    assert base["replaced"]["data.batch_size"] == 32 and bench_pretrain.PLACEHOLDER_DATASET in base["overrides"]
    (result,) = out["results"]
    variants = result["variants"]
    assert set(variants) == {"config", "all_visible", "baseline"}
    assert variants["baseline"]["input"] == variants["config"]["input"] == [4, 16, 16]
    assert variants["baseline"]["batch"] == 2
    assert result["step_s"] > 0 and result["baseline_step_s"] > 0
    assert math.isclose(result["speedup_vs_baseline"], result["baseline_step_s"] / result["step_s"])
    assert math.isclose(result["speedup_vs_all_visible"], result["all_visible_step_s"] / result["step_s"])
    for v in variants.values():
        assert v["saved_mib"] > 0 and v["state_mib"] > 0 and "peak_rss_mib" not in v
    # Deterministic: every token visible saves more activations than 75% masked, on the same model and state.
    assert variants["all_visible"]["saved_mib"] > variants["config"]["saved_mib"]
    assert variants["all_visible"]["state_mib"] == variants["config"]["state_mib"]


def test_peak_rss_in_a_fresh_process(capsys) -> None:
    (result,) = bench_json(capsys, "--no-baseline", baseline=False)["results"]  # on CPU: one process per variant
    (variant,) = result["variants"].values()
    # Over the RSS before the model is built, not the process's (nor, through fork, the parent's) lifetime peak.
    assert 0 < variant["peak_rss_mib"] < variant["process_peak_rss_mib"]
    assert variant["rss_before_mib"] + variant["peak_rss_mib"] == pytest.approx(variant["process_peak_rss_mib"])


def test_table_names_the_baseline(capsys) -> None:
    argv = ["--config", str(REPO / "configs/demo/digits.yaml"), "--modality", "image", "--steps", "1", "--warmup",
            "0", "--no-rss", "--no-baseline", *TINY, "--baseline-config", str(REPO / "configs/demo/digits.yaml"),
            "--baseline-overrides", "model.backbone=vit_test", "model.patch_size=8"]
    assert bench_pretrain.main(argv) == 0
    text = capsys.readouterr().out
    assert "baseline: vit_test" in text and "data.img_size=16 (file: 16)" not in text
    assert "=> vit_test vs vit_test:" in text and "ms/step" in text


def test_teacher_overhead_with_stand_in_teachers(capsys, tmp_path, monkeypatch):
    """The built-in MVD student's teachers are not on this machine (run from an empty folder): random-init stand-ins
    of the configs that write them (the demo's MAE image run, the motion VideoMAE run); each teacher's ms per step
    and their share of it."""
    monkeypatch.chdir(tmp_path)
    config = str(Path(bench_pretrain.REPO) / "configs/demo/mvd_student.yaml")
    assert bench_pretrain.main(["--config", config, "--modality", "video", "--steps", "1",
                                "--warmup", "0", "--no-baseline", "--no-rss", "--stand-in-teachers", "--json",
                                "data.batch_size=2"]) == 0
    captured = capsys.readouterr()
    assert "stand-in teacher image_teacher: random-init vit_tiny (tubelet 1) of configs/demo/mvd_image_teacher.yaml" \
        in captured.err
    assert "stand-in teacher video_teacher: random-init vit_tiny (tubelet 2) of configs/demo/motion_pretrain.yaml" \
        in captured.err
    result = json.loads(captured.out)["results"][0]
    assert set(result["teacher_ms"]) == {"image_teacher", "video_teacher"}
    assert all(ms > 0 for ms in result["teacher_ms"].values())
    assert result["teacher_share"] == pytest.approx(sum(result["teacher_ms"].values()) / 1000 / result["step_s"])
    assert 0 < result["teacher_share"] < 1


REFERENCE_TINY = ["--config", str(REPO / "configs/methods/videomae_vit_b.yaml"), "--modality", "video", "--steps", "1",
                  "--warmup", "0", "--no-rss", "--no-baseline", "--baseline", "videomae", "--json",
                  "model.backbone=vit_test", "model.patch_size=4", "targets.pixel.head.depth=1",
                  "targets.pixel.head.dim=32", "targets.pixel.head.heads=2", "data.img_size=16", "data.num_frames=4",
                  "data.batch_size=2"]


def test_videomae_reference_in_each_precision(capsys) -> None:
    assert bench_pretrain.main([*REFERENCE_TINY, "--precisions", "fp32", "bf16"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["precision"] for r in results] == ["fp32", "bf16"]
    for r in results:
        mine, ref = r["variants"]["config"], r["variants"]["reference"]
        assert ref["backbone"] == "VideoMAE reference vit_test" and ref["optimizer"] == "AdamW for_loop"
        assert mine["optimizer"] == "AdamW fused" and ref["precision"] == mine["precision"] == r["precision"]
        assert (ref["tokens"], ref["visible_tokens"], ref["input"]) == (mine["tokens"], mine["visible_tokens"],
                                                                         mine["input"])
        assert ref["step_tflop"] == mine["step_tflop"] > 0 and 0 < ref["mfu"] and 0 < mine["mfu"]
        assert math.isclose(r["speedup_vs_reference"], ref["step_s"] / mine["step_s"])
        assert r["speedup_vs_reference_rounds"] == [r["speedup_vs_reference"]]  # one round: its ratio is the ratio


def test_videomae_reference_refuses_what_it_is_not(capsys) -> None:
    with pytest.raises(SystemExit, match="visible-only ViT config with one pixel target"):
        bench_pretrain.main([*REFERENCE_TINY, "model.dense=true"])
    with pytest.raises(SystemExit, match="video only"):
        bench_pretrain.main([*REFERENCE_TINY, "--modality", "image"])


def test_reference_is_videomae_s_model_and_loss() -> None:
    """The baseline is the same model as vmim's VideoMAE config with VideoMAE's position table: given vmim's weights
    (the decoder embedding's bias zeroed, as VideoMAE's has none), its loss on the same clip and mask is vmim's."""
    from reference_videomae import ReferenceStep, ReferenceVideoMAE

    from vmim.config import load_config

    cfg = load_config(str(REPO / "configs/methods/videomae_vit_b.yaml"), [
        *REFERENCE_TINY[REFERENCE_TINY.index("model.backbone=vit_test"):], "model.pos_embed=sincos_1d",
        bench_pretrain.PLACEHOLDER_DATASET, "train.precision=fp32"])
    timer = bench_pretrain.StepTimer(cfg, "video")
    method = timer.model.eval()
    with torch.no_grad():
        method.heads["pixel"].embed.bias.zero_()
    ref = ReferenceVideoMAE(16, 4, 4, 2, 64, 2, 2, 32, 1, 2).eval()
    mine = {k.replace("backbone.patch_embed.proj", "patch_embed").replace("backbone.blocks", "encoder_blocks")
            .replace("backbone.norm", "encoder_norm").replace("heads.pixel.embed", "encoder_to_decoder")
            .replace("heads.pixel.blocks", "decoder_blocks").replace("heads.pixel.norm", "decoder_norm")
            .replace("heads.pixel.", ""): v for k, v in method.state_dict().items()}
    del mine["encoder_to_decoder.bias"]
    assert ref.load_state_dict(mine, strict=True)
    clip, mask = timer.batch["clip"], timer.batch["masks"].encoder
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (cfg.data.mean, cfg.data.std))
    step = ReferenceStep(ref, (clip.float() / 255 - mean) / std, mask, "fp32")
    with torch.no_grad():
        torch.testing.assert_close(step.forward_loss(), method(timer.batch)["loss"], rtol=1e-5, atol=1e-6)


def test_baseline_at_its_own_size(capsys) -> None:
    """--baseline-own-size: the baseline config keeps its image size (a low-resolution method against a full one)."""
    argv = ["--config", str(REPO / "configs/demo/digits.yaml"), "--modality", "image", "--steps", "1", "--warmup",
            "0", "--no-rss", "--no-baseline", "--json", *TINY, "--baseline-own-size", "--baseline-config",
            str(REPO / "configs/demo/digits.yaml"), "--baseline-overrides", "model.backbone=vit_test",
            "model.patch_size=4", "data.img_size=32"]
    assert bench_pretrain.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert "data.img_size" not in out["baseline"]["forced"] and out["baseline"]["forced"]["data.batch_size"] == 2
    variants = out["results"][0]["variants"]
    assert variants["config"]["input"] == [1, 16, 16] and variants["baseline"]["input"] == [1, 32, 32]
    assert variants["baseline"]["tokens"] == 4 * variants["config"]["tokens"]
