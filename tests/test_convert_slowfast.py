"""SlowFast MViTv2 import (``vmim convert --from slowfast``) and MViT starting weights across q-pooling layouts.

Source checkpoints are written here in SlowFast's container (``{epoch, model_state, optimizer_state[, cfg]}``, DDP
``module.`` prefixes, MaskFeat's ``pred_head`` / ``hogs`` and the classifier ``head.projection``) from small vmim
MViTs with randomized weights; :func:`slowfast_keys` lists the key names independently, from the layout in
``research/finetune-mvit-teachers.md`` §3.5, and the first test checks the models against it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from tests.test_convert import perturb
from vmim.config import MViTConfig, ViTConfig, config_to_yaml, load_config, video_grid
from vmim.models import create_backbone, load_backbone, load_init
from vmim.models import mvit as M
from vmim.convert import convert_checkpoint, convert_state_dict

DEMO_STAGES = (1, 3)
"""mvitv2_demo: 48 wide, 6 blocks, stages at 1 and 3, 4x32x32 input."""


def slowfast_keys(depth: int, stage_blocks: tuple[int, ...], dim_mul_in_att: bool, cls_token: bool,
                  rel_pos_t: bool = True) -> set[str]:
    """SlowFast MViT ``model_state`` keys (research §3.5): every block pools q, k and v; ``blocks.{i}.proj`` where the
    width changes (in block i with dim_mul_in_att, else in the block before a stage start); ``norm`` and
    ``head.projection`` at the end (the head is left out here)."""
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    keys |= {"cls_token"} if cls_token else set()
    for i in range(depth):
        names = ["norm1", "attn.qkv", "attn.proj", "attn.norm_q", "attn.norm_k", "attn.norm_v", "norm2", "mlp.fc1",
                 "mlp.fc2"]
        if (i in stage_blocks) if dim_mul_in_att else (i + 1 in stage_blocks):
            names.append("proj")
        keys |= {f"blocks.{i}.{n}.{p}" for n in names for p in ("weight", "bias")}
        keys |= {f"blocks.{i}.attn.pool_{x}.weight" for x in "qkv"}
        keys |= {f"blocks.{i}.attn.rel_pos_{x}" for x in ("hwt" if rel_pos_t else "hw")}
    return keys


def maskfeat_demo(seed: int = 0) -> M.MViT:
    """A MaskFeat-layout MViT in its pre-training geometry: class token, widths doubling in the MLP, no q pooling at
    the last stage start (SlowFast ``POOL_Q_STRIDE`` without block 3)."""
    torch.manual_seed(seed)
    return perturb(M.mvitv2_demo(cls_token=True, dim_mul_in_att=False, q_pool_blocks=[1]), seed)


MASKFEAT_EXTRAS = {"pred_head.transforms.0.0.weight": (192,), "pred_head.transforms.0.0.bias": (192,),
                   "pred_head.projections.0.weight": (108, 192), "pred_head.projections.0.bias": (108,),
                   "hogs.0.weight_x": (3, 1, 3, 3), "hogs.0.weight_y": (3, 1, 3, 3), "hogs.0.gkern": (16, 16)}
"""MaskFeat's prediction head (LayerNorm + Linear to 108 HOG values) and its HOG layer's buffers."""


def save_slowfast(path, model: nn.Module, *, maskfeat: bool, prefix: str = "", classes: int = 0,
                  cfg: dict | None = None) -> dict[str, torch.Tensor]:
    """Write ``model`` as a SlowFast checkpoint; returns the weights it holds (no prefix). MaskFeat pre-training
    (``maskfeat``) has no final norm and carries its prediction head; a supervised model has no mask token."""
    sd = {k: v.clone() for k, v in model.state_dict().items()
          if not (maskfeat and k.startswith("norm.")) and not (not maskfeat and k == "mask_token")}
    if maskfeat:
        sd.update({k: torch.randn(shape) for k, shape in MASKFEAT_EXTRAS.items()})
    if classes:
        sd.update({"head.projection.weight": torch.randn(classes, model.embed_dim),
                   "head.projection.bias": torch.randn(classes)})
    ckpt = {"epoch": 300, "model_state": {prefix + k: v for k, v in sd.items()},
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}}
    if cfg is not None:
        ckpt["cfg"] = yaml.safe_dump(cfg)
    torch.save(ckpt, path)
    return sd


def run_convert_cli(argv: list[str], capsys) -> tuple[int, str]:
    from vmim.cli import main

    rc = main(["convert", *argv])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def clip(b: int = 2, t: int = 4, side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, t, side, side, generator=torch.Generator().manual_seed(seed))


def block_outputs(model: M.MViT, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_intermediates(x, mask)[1]


# ----------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------


def test_maskfeat_pretraining_checkpoint_converts_exactly(tmp_path, capsys):
    src = maskfeat_demo()
    assert set(src.state_dict()) == slowfast_keys(6, DEMO_STAGES, False, True) | {"mask_token"}
    kept = save_slowfast(tmp_path / "pt.pyth", src, maskfeat=True, prefix="module.")
    dst = tmp_path / "pt.pt"
    rc, out = run_convert_cli(["--from", "slowfast", str(tmp_path / "pt.pyth"), str(dst)], capsys)
    assert rc == 0, out
    assert "mvitv2_demo" in out and "q_pool_blocks [1]" in out and "dropped 7 keys" in out and str(dst) in out

    converted = torch.load(dst, weights_only=True)
    m = converted["model"]
    assert (m["backbone"], m["cls_token"], m["dim_mul_in_att"], m["q_pool_blocks"], m["global_pool"]) == \
        ("mvitv2_demo", True, False, [1], "avg")
    assert converted["source"]["dropped"] == sorted(MASKFEAT_EXTRAS)
    notes = "\n".join(converted["source"]["notes"])
    assert "read from the relative-position tables" in notes and "mask_token kept" in notes
    assert "no final norm" in notes
    assert converted["data"] == {"img_size": 32, "num_frames": 4, "mean": [0.45] * 3, "std": [0.225] * 3}
    assert converted["video_grid"] == [2, 4, 4]

    model = load_backbone(dst)
    for key, value in kept.items():
        if key in model.state_dict():
            assert torch.equal(model.state_dict()[key], value), key
    torch.testing.assert_close(model.norm.weight, torch.ones(192), rtol=0, atol=0)
    torch.testing.assert_close(model.norm.bias, torch.full((192,), 0.02), rtol=0, atol=0)
    x = clip()
    mask = torch.rand(2, 2 * 8 * 8, generator=torch.Generator().manual_seed(2)) < 0.4  # stem grid (2, 8, 8)
    for ours, theirs in zip(block_outputs(model, x, mask), block_outputs(src, x, mask), strict=True):
        assert torch.equal(ours, theirs)


def test_supervised_checkpoint_parity_and_dropped_classifier(tmp_path):
    torch.manual_seed(3)
    src = perturb(M.mvitv2_demo(cls_token=True, global_pool="token"), seed=3)
    assert set(src.state_dict()) == slowfast_keys(6, DEMO_STAGES, True, True) | {"mask_token"}
    save_slowfast(tmp_path / "sup.pyth", src, maskfeat=False, classes=7)
    out = convert_checkpoint("slowfast", tmp_path / "sup.pyth")
    m = out["model"]
    assert (m["cls_token"], m["dim_mul_in_att"], m["q_pool_blocks"], m["global_pool"]) == (True, True, [1, 3],
                                                                                             "token")
    assert out["source"]["dropped"] == ["head.projection.bias", "head.projection.weight"]
    notes = "\n".join(out["source"]["notes"])
    assert "head.projection (7 classes) dropped" in notes and "no mask_token" in notes
    again = convert_checkpoint("slowfast", tmp_path / "sup.pyth")  # the fresh mask token is seeded
    assert torch.equal(out["state_dict"]["mask_token"], again["state_dict"]["mask_token"])

    model = create_backbone(MViTConfig(**m)).eval()
    model.load_state_dict(out["state_dict"])
    x = clip(t=8)  # longer than configured: the temporal tables are interpolated, alike
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), src.forward_features(x))
        assert torch.equal(model(x).tokens, src(x).tokens)


def test_image_checkpoint_with_2d_kernels_is_exact_on_images(tmp_path):
    """SlowFast's image MViTv2 (``MViTv2_T_in1k.pyth``): Conv2d stem, (1, 3, 3) pooling kernels, no class token, no
    temporal tables. The 2-D kernels become the centre slice of vmim's 3-D ones."""
    torch.manual_seed(4)
    src = perturb(M.mvitv2_t(stem_kernel=(1, 7, 7), stem_padding=(0, 3, 3), pool_kernel=(1, 3, 3)), seed=4,
                  scale=0.02)
    sd = {k: v for k, v in src.state_dict().items() if k != "mask_token"}
    sd["patch_embed.proj.weight"] = sd["patch_embed.proj.weight"][:, :, 0]  # (96, 3, 7, 7)
    assert sd["blocks.3.attn.pool_q.weight"].shape == (96, 1, 1, 3, 3)  # head width 96 throughout
    assert set(sd) == slowfast_keys(10, (1, 3, 8), True, False, rel_pos_t=False)
    torch.save({"model_state": sd}, tmp_path / "img.pyth")
    out = convert_checkpoint("slowfast", tmp_path / "img.pyth")
    m = out["model"]
    assert (m["backbone"], m["cls_token"], m["global_pool"]) == ("mvitv2_t", False, "norm_avg")
    assert out["data"]["num_frames"] == 1 and out["video_grid"] == [1, 7, 7]
    assert "2-D kernels" in "\n".join(out["source"]["notes"])
    stem = out["state_dict"]["patch_embed.proj.weight"]
    assert stem.shape == (96, 3, 3, 7, 7) and torch.equal(stem[:, :, 1], sd["patch_embed.proj.weight"])
    assert not stem[:, :, 0].any() and not stem[:, :, 2].any()

    model = create_backbone(MViTConfig(**m)).eval()
    model.load_state_dict(out["state_dict"])
    images = torch.randn(2, 3, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(images), src.forward_features(images), rtol=1e-5,
                                   atol=1e-5)


def test_bad_checkpoints_are_refused_naming_the_keys(tmp_path, capsys):
    sd = {k: v for k, v in M.mvitv2_demo().state_dict().items() if k != "mask_token"}
    cases = {
        "unexpected keys.*blocks.0.attn.foo": {**sd, "blocks.0.attn.foo": torch.zeros(3)},
        r"missing keys.*blocks\.2\.norm2\.bias": {k: v for k, v in sd.items() if k != "blocks.2.norm2.bias"},
        r"shape mismatches.*blocks\.2\.mlp\.fc1\.bias: weights \(100,\) vs model \(384,\)":
            {**sd, "blocks.2.mlp.fc1.bias": torch.zeros(100)},
        r"blocks\.4\.attn\.rel_pos_h: weights \(5, 48\) vs model \(3, 48\)":
            {**sd, "blocks.4.attn.rel_pos_h": torch.zeros(5, 48)},
        "absolute position tables pos_embed_spatial": {**sd, "pos_embed_spatial": torch.zeros(1, 64, 48)},
        r"blocks\.1\.attn\.qkv\.weight has shape \(432, 48\).*doubles widths":
            {**sd, "blocks.1.attn.qkv.weight": torch.zeros(432, 48)},
        "not an MViT": {k: v for k, v in sd.items() if not k.startswith("patch_embed")},
    }
    for pattern, weights in cases.items():
        with pytest.raises(ValueError, match=pattern):
            convert_state_dict("slowfast", weights)
    with pytest.raises(ValueError, match="--backbone mvitv2_test does not match"):
        convert_state_dict("slowfast", sd, backbone="mvitv2_test")
    with pytest.raises(ValueError, match="--tubelet-size 4"):
        convert_state_dict("slowfast", sd, tubelet_size=4)

    torch.save({"model_state": cases["unexpected keys.*blocks.0.attn.foo"]}, tmp_path / "bad.pyth")
    rc, out = run_convert_cli(["--from", "slowfast", str(tmp_path / "bad.pyth"), str(tmp_path / "x.pt")], capsys)
    assert rc == 2 and "blocks.0.attn.foo" in out and not (tmp_path / "x.pt").exists()
    rc, out = run_convert_cli(["--from", "timm", "--q-pool-blocks", "1", str(tmp_path / "bad.pyth"),
                               str(tmp_path / "x.pt")], capsys)
    assert rc == 2 and "--q-pool-blocks is for MViTs" in out


def test_q_pool_blocks_from_the_flag_or_the_cfg_when_the_tables_cannot_tell(tmp_path, capsys):
    # mvitv2_test's last stage is one block: without its q pooling every table keeps its length
    with torch.device("meta"):
        a, b = M.mvitv2_test().state_dict(), M.mvitv2_test(q_pool_blocks=[1]).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    torch.manual_seed(6)
    src = perturb(M.mvitv2_test(q_pool_blocks=[1]), seed=6)
    save_slowfast(tmp_path / "t.pyth", src, maskfeat=True)

    out = convert_checkpoint("slowfast", tmp_path / "t.pyth")
    assert out["model"]["q_pool_blocks"] == [1, 2]
    assert "fit [[1, 2], [1]] alike" in "\n".join(out["source"]["notes"])

    dst = tmp_path / "t.pt"
    rc, text = run_convert_cli(["--from", "slowfast", "--q-pool-blocks", "1", str(tmp_path / "t.pyth"), str(dst)],
                               capsys)
    assert rc == 0 and "q_pool_blocks [1]" in text, text
    x = clip(side=64)
    for ours, theirs in zip(block_outputs(load_backbone(dst), x), block_outputs(src, x), strict=True):
        assert torch.equal(ours, theirs)

    cfg = {"MVIT": {"POOL_Q_STRIDE": [[0, 1, 1, 1], [1, 1, 2, 2], [2, 1, 1, 1]], "DIM_MUL_IN_ATT": True,
                    "USE_MEAN_POOLING": False, "CLS_EMBED_ON": False},
           "DATA": {"MEAN": [0.5] * 3, "STD": [0.25] * 3, "NUM_FRAMES": 8, "TRAIN_CROP_SIZE": 64}}
    save_slowfast(tmp_path / "c.pyth", src, maskfeat=True, cfg=cfg)
    out = convert_checkpoint("slowfast", tmp_path / "c.pyth")
    assert out["model"]["q_pool_blocks"] == [1] and out["model"]["global_pool"] == "norm_avg"
    assert out["data"] == {"img_size": 64, "num_frames": 8, "mean": [0.5] * 3, "std": [0.25] * 3}
    save_slowfast(tmp_path / "w.pyth", src, maskfeat=True, cfg={"MVIT": {"DIM_MUL_IN_ATT": False}})
    with pytest.raises(ValueError, match=r"cfg says MVIT\.DIM_MUL_IN_ATT False.*in the attention"):
        convert_checkpoint("slowfast", tmp_path / "w.pyth")


# ----------------------------------------------------------------------------------------------------
# load_init across layouts
# ----------------------------------------------------------------------------------------------------


def converted_maskfeat(tmp_path) -> tuple[M.MViT, object]:
    src = maskfeat_demo(seed=7)
    save_slowfast(tmp_path / "pt.pyth", src, maskfeat=True)
    dst = tmp_path / "pt.pt"
    from vmim.convert import convert_file

    convert_file("slowfast", tmp_path / "pt.pyth", dst)
    return src, dst


FT_DEMO = MViTConfig(backbone="mvitv2_demo", cls_token=True, dim_mul_in_att=False, global_pool="avg")
"""The fine-tuning layout of :func:`maskfeat_demo`: q pooled at every stage start."""


def test_load_init_pretraining_layout_into_finetuning_layout(tmp_path):
    src, dst = converted_maskfeat(tmp_path)
    backbone = create_backbone(FT_DEMO).eval()
    report = load_init(backbone, dst, FT_DEMO)
    text = "\n".join(report)
    assert "q pooling at blocks [1, 3]" in text and "trained with [1]" in text
    tables = [f"blocks.{i}.attn.rel_pos_{x}" for i in (4, 5) for x in "hw"]  # block 4 on: a 2x2 grid, not 4x4
    resampled = [line for line in report if "resampled" in line]
    assert len(resampled) == len(tables)
    for key, line in zip(tables, resampled, strict=True):
        assert key in line and "from 7 to 3 rows" in line
        t = src.state_dict()[key]
        want = torch.stack([t[0] / 3 + 2 * t[1] / 3, t[3], 2 * t[5] / 3 + t[6] / 3])  # linear, align_corners=False
        torch.testing.assert_close(backbone.state_dict()[key], want, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(backbone.state_dict()[key],
                                   F.interpolate(t.t()[None], size=3, mode="linear")[0].t(), rtol=0, atol=0)
    file_sd = torch.load(dst, weights_only=True)["state_dict"]
    for key, value in backbone.state_dict().items():
        if key not in tables:
            assert torch.equal(value, file_sd[key]), key
    with torch.no_grad():
        out = backbone(clip())
    assert out.grid == (2, 2, 2) and torch.isfinite(out.tokens).all()


def test_load_init_refuses_what_changes_the_meaning(tmp_path):
    _, dst = converted_maskfeat(tmp_path)
    for key, value, theirs in (("dim_mul_in_att", None, False), ("cls_token", False, True),
                               ("backbone", "mvitv2_test", "mvitv2_demo")):
        cfg = dataclasses.replace(FT_DEMO, **{key: value})
        ours = {"dim_mul_in_att": True}.get(key, value)  # None is the size's own
        with pytest.raises(ValueError, match=rf"model\.{key}: the model has {ours!r}, .* have {theirs!r}"):
            load_init(create_backbone(cfg), dst, cfg)
    vit = ViTConfig(backbone="vit_test", patch_size=8)
    with pytest.raises(ValueError, match=r"model\.backbone: the model has 'vit_test'"):
        load_init(create_backbone(vit, (2, 4, 4)), dst, vit)

    # anything else mis-shaped is one error, and a table only resampled when it fits the weights' own layout
    converted = torch.load(dst, weights_only=True)
    converted["state_dict"]["blocks.0.mlp.fc1.bias"] = torch.zeros(5)
    converted["state_dict"]["blocks.4.attn.rel_pos_w"] = torch.zeros(5, 48)  # 7 rows in the weights' layout
    torch.save(converted, tmp_path / "bad.pt")
    for cfg in (FT_DEMO, dataclasses.replace(FT_DEMO, q_pool_blocks=[1])):
        with pytest.raises(ValueError, match=r"shape mismatches \(2\): blocks\.0\.mlp\.fc1\.bias: weights \(5,\) "
                                             r"vs model \(192,\); blocks\.4\.attn\.rel_pos_w: weights \(5, 48\)"):
            load_init(create_backbone(cfg), tmp_path / "bad.pt", cfg)


# ----------------------------------------------------------------------------------------------------
# The fine-tuning recipes
# ----------------------------------------------------------------------------------------------------


def pretraining_run(tmp_path, method: str):
    """A pretraining checkpoint of ``configs/methods/<method>.yaml``'s backbone, on the meta device (shapes only)."""
    cfg = load_config(f"configs/methods/{method}.yaml", ["data.datasets.digits_images.weight=1"])
    with torch.device("meta"):
        backbone = create_backbone(cfg.model, video_grid(cfg))
    run = tmp_path / method
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                "config": config_to_yaml(cfg), "task": "pretrain", "step": 0}, run / "checkpoints" / "last.pt")
    return run


def finetune_backbone(name: str):
    cfg = load_config(f"configs/finetune/{name}.yaml", task="finetune")
    with torch.device("meta"):
        return cfg, create_backbone(cfg.model, video_grid(cfg))


def test_maskfeat_mvit_s_recipe_takes_the_pretraining_layout(tmp_path):
    cfg, backbone = finetune_backbone("k400_maskfeat_mvit_s")
    o, a, m = cfg.optim, cfg.augment, cfg.model
    assert (o.layer_decay, o.clip_grad, o.warmup_epochs, cfg.train.epochs, m.drop_path) == (0.75, 5.0, 20, 100, 0.1)
    assert (m.global_pool, cfg.head.init_scale, a.rand_augment, a.random_erasing) == \
        ("avg", 0.001, "rand-m7-mstd0.5-inc1", 0.25)
    assert (cfg.eval.num_views, cfg.eval.num_crops, m.patch_size) == (10, 1, 32)
    report = load_init(backbone, pretraining_run(tmp_path, "maskfeat_mvit_s"), cfg.model)
    resampled = [line for line in report if "resampled" in line]
    assert [line.split()[1] for line in resampled] == ["blocks.15.attn.rel_pos_h", "blocks.15.attn.rel_pos_w"]
    assert all("from 27 to 13 rows" in line for line in resampled)


def test_mvitv2_s_recipe_accepts_a_converted_supervised_checkpoint(tmp_path):
    cfg, backbone = finetune_backbone("k400_mvitv2_s")
    assert cfg.init == "" and backbone.cls_token is not None and backbone.global_pool == "token"
    assert (cfg.optim.lr, cfg.optim.clip_grad, cfg.train.epochs, cfg.model.drop_path) == (8e-4, 1.0, 200, 0.2)
    # what `vmim convert --from slowfast` writes for SlowFast's MViTv2-S 16x4 (shapes only)
    model_cfg = MViTConfig(backbone="mvitv2_s_16x4", cls_token=True, dim_mul_in_att=True, q_pool_blocks=[1, 3, 14],
                           global_pool="token")
    with torch.device("meta"):
        sd = create_backbone(model_cfg).state_dict()
    torch.save({"format": "vmim-backbone", "version": 1, "model": dataclasses.asdict(model_cfg),
                "data": {"img_size": 224, "num_frames": 16, "mean": [0.45] * 3, "std": [0.225] * 3},
                "video_grid": [8, 7, 7], "state_dict": sd, "source": {"format": "slowfast"}}, tmp_path / "s.pt")
    report = load_init(backbone, tmp_path / "s.pt", cfg.model)
    assert len(report) == 1 and "converted slowfast file" in report[0]


def test_maskfeat_vit_b_recipe_takes_a_maskfeat_vit_run(tmp_path):
    cfg, backbone = finetune_backbone("in1k_maskfeat_vit_b")
    o = cfg.optim
    assert (o.lr, o.layer_decay, o.warmup_epochs, cfg.train.epochs, cfg.model.drop_path) == (1e-3, 0.65, 20, 100, 0.1)
    assert (cfg.model.global_pool, cfg.model.fc_norm, cfg.head.init_scale) == ("avg", True, 0.001)
    text = "\n".join(load_init(backbone, pretraining_run(tmp_path, "maskfeat_vit_b_in1k"), cfg.model))
    assert "dropped mask_token" in text and "fresh fc_norm.bias, fc_norm.weight" in text
