"""MViTv2 backbone: published parameter counts, exact parity with timm's 2-D MViTv2 on images, dense masking,
grids and the contract helpers."""

from __future__ import annotations

import re

import pytest
import timm
import torch

from vmim.models import mvit as M

# (factory, classifier classes, published / recounted params in M: finetune-mvit-teachers.md §1.2)
PUBLISHED = {
    "mvitv2_s_16x4": (400, 34.54),
    "mvitv2_b_32x3": (400, 51.23),
    "mvitv2_l_40x3": (400, 213.40),
    "maskfeat_mvitv2_s_16x4": (400, 36.48),
    "mvitv2_t": (1000, 24.17),
    "mvitv2_s": (1000, 34.87),
    "mvitv2_b": (1000, 51.47),
}
KERNELS_2D = dict(stem_kernel=(1, 7, 7), stem_padding=(0, 3, 3), pool_kernel=(1, 3, 3))


# Multiply-adds per view recounted in finetune-mvit-teachers.md §1.2 / §6 (G; linear, conv, attention products), input
MACS = {
    "mvitv2_s_16x4": (63.2, (16, 224, 224)),
    "mvitv2_b_32x3": (222.4, (32, 224, 224)),
    "mvitv2_l_40x3": (2811.9, (40, 312, 312)),
    "maskfeat_mvitv2_s_16x4": (71.2, (16, 224, 224)),
    "mvitv2_t": (4.55, (1, 224, 224)),
    "mvitv2_s": (6.83, (1, 224, 224)),
    "mvitv2_b": (9.97, (1, 224, 224)),
}


def _count(model: M.MViT, num_classes: int) -> int:
    """Backbone parameters (the mask token is MaskFeat-only) plus a Linear classifier."""
    backbone = sum(p.numel() for n, p in model.named_parameters() if n != "mask_token")
    return backbone + num_classes * (model.embed_dim + 1)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
    num_classes, published = PUBLISHED[name]
    with torch.device("meta"):
        model = getattr(M, name)()
    assert _count(model, num_classes) / 1e6 == pytest.approx(published, rel=5e-3)


@pytest.mark.parametrize("name", sorted(MACS))
def test_multiply_adds_per_view_match_the_recount(name):
    """Counted on the meta device; images (T = 1) run the 3-D stem and pooling convs as their centre slices, so they
    cost what the 2-D models of the recount do."""
    from vmim.models.flops import count_macs

    recount, shape = MACS[name]
    with torch.device("meta"):
        model = getattr(M, name)().eval()
        x = torch.empty(1, 3, *shape)
    assert count_macs(model.forward_features, x) / 1e9 == pytest.approx(recount, rel=0.03)


def test_count_macs_known_answer():
    """A Linear (B*N x D_in x D_out multiply-adds) and a conv (output voxels x C_out x C_in x kernel), by hand."""
    from vmim.models.flops import count_macs

    linear, conv = torch.nn.Linear(8, 5), torch.nn.Conv3d(3, 4, (1, 2, 2), stride=(1, 2, 2))
    assert count_macs(linear, torch.zeros(2, 7, 8)) == 2 * 7 * 8 * 5
    assert count_macs(conv, torch.zeros(1, 3, 2, 6, 6)) == (2 * 3 * 3) * 4 * (3 * 1 * 2 * 2)


def test_maskfeat_pretraining_layout_keeps_widths_and_predicts_at_16_px():
    """SlowFast's MaskFeat pre-training MViT-S (POOL_Q_STRIDE [14, 1, 1, 1]): no q pooling at the last stage, width
    and heads still doubled there, KV still strided; an 8x14x14 output grid for 16x224x224; every weight has the
    fine-tuning layout's shape except the last block's spatial relative-position tables (27 rows vs 13)."""
    from vmim.config import load_config

    with torch.device("meta"):
        pre = M.maskfeat_mvitv2_s_16x4(q_pool_blocks=[1, 3])
        fine = M.maskfeat_mvitv2_s_16x4()
    assert pre.grid((1, 3, 16, 224, 224)) == (8, 14, 14) and pre.patch_size == (2, 16, 16)
    assert fine.grid((1, 3, 16, 224, 224)) == (8, 7, 7) and pre.dims == fine.dims and pre.embed_dim == 768
    assert pre.blocks[14].attn.pool_q.stride == (1, 1, 1) and pre.blocks[14].attn.pool_k.stride == (1, 2, 2)
    assert pre.blocks[15].attn.num_heads == fine.blocks[15].attn.num_heads == 8
    a, b = pre.state_dict(), fine.state_dict()
    assert a.keys() == b.keys()
    differ = {k: (tuple(a[k].shape), tuple(b[k].shape)) for k in a if a[k].shape != b[k].shape}
    assert differ == {f"blocks.15.attn.rel_pos_{x}": ((27, 96), (13, 96)) for x in "hw"}
    cfg = load_config("configs/methods/maskfeat_mvit_s.yaml", ["data.datasets.digits_clips.weight=1"])
    assert (cfg.model.tubelet_size, cfg.model.patch_size) == (2, 16) and cfg.model.q_pool_blocks == [1, 3]
    with pytest.raises(ValueError, match=r"model\.q_pool_blocks.*\[1, 3, 14\]"):
        load_config("configs/methods/maskfeat_mvit_s.yaml", ["data.datasets.digits_clips.weight=1",
                                                            "model.q_pool_blocks=[2]"])
    with pytest.raises(ValueError, match="stage transitions"):
        M.mvitv2_test(q_pool_blocks=(0,))


def test_parameter_count_equals_timm_with_2d_kernels():
    for ours, theirs in (("mvitv2_t", "mvitv2_tiny"), ("mvitv2_b", "mvitv2_base")):
        with torch.device("meta"):
            model = getattr(M, ours)(**KERNELS_2D)
            ref = timm.create_model(theirs, pretrained=False)
        assert _count(model, 1000) == sum(p.numel() for p in ref.parameters())


def _randomize_vectors(model: torch.nn.Module) -> None:
    """Non-trivial norms and biases, so that parity cannot rest on the init."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + float(name.endswith("norm1.weight")
                                                                          or name.endswith("norm2.weight")))


@pytest.mark.parametrize("ours,theirs", [("mvitv2_t", "mvitv2_tiny"), ("mvitv2_s", "mvitv2_small")])
def test_exact_parity_with_timm_on_images(ours, theirs):
    torch.manual_seed(0)
    ref = timm.create_model(theirs, pretrained=False).eval()
    _randomize_vectors(ref)
    model = getattr(M, ours)().eval()
    missing, unexpected = model.load_state_dict(M.from_timm_mvitv2(ref.state_dict()), strict=False)
    assert missing == ["mask_token"] and unexpected == []
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref_tokens = ref.forward_features(x)
        ref_pooled = ref.forward_head(ref_tokens, pre_logits=True)
        out = model(x.unsqueeze(2))
        pooled = model.forward_features(x.unsqueeze(2))
    assert out.grid == (1, 7, 7)
    torch.testing.assert_close(out.tokens, ref_tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-4)


def _small(**kwargs) -> M.MViT:
    """Three q-pools (output 2x32x32 pixels per token), cls token and absolute positions: every optional path."""
    cfg = dict(depth=4, embed_dim=16, num_heads=1, stage_blocks=(1, 2, 3), input_size=(4, 64, 64),
               kv_stride_adaptive=(1, 4, 4), cls_token=True, abs_pos=True)
    cfg.update(kwargs)
    return M.MViT(**cfg)


def test_masked_unit_interiors_do_not_reach_the_output():
    torch.manual_seed(0)
    model = _small().eval()
    assert model.patch_size == (2, 32, 32)
    x = torch.randn(2, 3, 4, 64, 64)
    assert model.stem_grid(x.shape) == (2, 16, 16) and model.grid(x.shape) == (2, 2, 2)
    units = torch.tensor([[1, 0, 0, 1, 0, 1, 1, 0], [0, 1, 1, 0, 1, 0, 0, 1]], dtype=torch.bool).view(2, 2, 2, 2)
    mask = units.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3).flatten(1)  # (B, 2*16*16) stem tokens
    with torch.no_grad():
        base = model(x, mask).tokens
        hidden, shown = x.clone(), x.clone()
        for b, t, h, w in units.nonzero().tolist():  # frame 2t, 4-pixel margin: only unit (t, h, w) stem tokens see it
            hidden[b, :, 2 * t, 32 * h + 4:32 * h + 28, 32 * w + 4:32 * w + 28] += 5.0
        for b, t, h, w in (~units).nonzero().tolist():
            shown[b, :, 2 * t, 32 * h + 4:32 * h + 28, 32 * w + 4:32 * w + 28] += 5.0
        assert torch.equal(model(hidden, mask).tokens, base)
        changed = (model(shown, mask).tokens - base).abs().amax(dim=-1)
    assert bool((changed > 1e-4).all())  # every output token sees some visible unit
    assert not torch.equal(model(x).tokens, base)  # the mask token does replace the masked stem tokens
    with torch.no_grad():  # the contract's mask: over the output grid (what mask generators draw), one unit a token
        torch.testing.assert_close(model(x, units.flatten(1)).tokens, base, rtol=0, atol=0)
    with pytest.raises(ValueError, match="fits neither"):
        model(x, torch.zeros(2, 7, dtype=torch.bool))


def test_shapes_grids_and_intermediates():
    with torch.device("meta"):
        video_s = M.mvitv2_s_16x4()
    assert video_s.patch_size == (2, 32, 32)
    assert video_s.stem_grid((1, 3, 16, 224, 224)) == (8, 56, 56)
    assert video_s.grid((1, 3, 16, 224, 224)) == (8, 7, 7) and video_s.grid((1, 3, 1, 224, 224)) == (1, 7, 7)
    assert video_s.embed_dim == 768 and video_s.depth == 16 and video_s.dense
    torch.manual_seed(0)
    model = _small(abs_pos=False).eval()
    x = torch.randn(2, 3, 8, 64, 64)  # longer than configured: the temporal table is interpolated
    with torch.no_grad():
        out, inter = model.forward_intermediates(x, indices=None)
        _, last = model.forward_intermediates(x, indices=2, norm=True)
        pooled = model.forward_features(x)
    assert out.grid == model.grid(x.shape) == (4, 2, 2) and out.present is None
    assert out.tokens.shape == (2, 16, 128) and pooled.shape == (2, 128)
    assert [t.shape[1:] for t in inter] == [(4 * 16 * 16, 16), (4 * 8 * 8, 32), (4 * 4 * 4, 64), (4 * 2 * 2, 128)]
    torch.testing.assert_close(last[-1], out.tokens)
    torch.testing.assert_close(pooled, model.norm(inter[-1].mean(dim=1)))


def test_image_through_video_weights_uses_only_the_centre_temporal_slice():
    torch.manual_seed(0)
    model = _small(abs_pos=False).eval()
    x = torch.randn(1, 3, 1, 64, 64)
    with torch.no_grad():
        out = model(x)
        model.patch_embed.proj.weight[:, :, [0, 2]] = 0
        for block in model.blocks:
            for pool in (block.attn.pool_q, block.attn.pool_k, block.attn.pool_v):
                pool.weight[:, :, [0, 2]] = 0
        torch.testing.assert_close(model(x).tokens, out.tokens)
    assert out.grid == (1, 2, 2)


def test_checkpointing_drop_path_and_optimizer_helpers():
    torch.manual_seed(0)
    model = _small(drop_path=0.3)
    assert [getattr(b.drop_path, "drop_prob", 0.0) for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    model = _small()
    x = torch.randn(1, 3, 4, 64, 64)
    model(x).tokens.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.grad_checkpointing = True
    model(x).tokens.sum().backward()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n])
    nwd = model.no_weight_decay()
    assert {"mask_token", "cls_token", "pos_embed", "blocks.0.attn.rel_pos_t"} <= nwd
    assert all(re.search(r"rel_pos|token|pos_embed", n) for n in nwd)
    groups = model.group_matcher()
    for name, _ in model.named_parameters():
        assert re.match(groups["stem"], name) or any(re.match(p, name) for p, _ in groups["blocks"]), name


@pytest.mark.parametrize("method,model", [
    ("maskfeat_mvit_s", ["model.backbone=mvitv2_test", "model.q_pool_blocks=[1]"]),
    ("maskfeat_vit_b_in1k", ["model.backbone=vit_test", "model.patch_size=8"]),
])
def test_maskfeat_pretrains_on_builtin_images_and_clips(tmp_path, method, model):
    """The MaskFeat method configs, shrunk (MViT in its pre-training layout; the image ViT with a class token and
    learned positions): images and clips of the built-in digits through one model, finite losses, a checkpoint."""
    from vmim.config import load_config
    from vmim.engine.checkpoint import load
    from vmim.engine.metrics import read_metrics
    from vmim.engine.pretrain import pretrain

    cfg = load_config(f"configs/methods/{method}.yaml", [
        f"output_dir={tmp_path}", *model, "data.img_size=32", "data.num_frames=4", "data.num_workers=0",
        "data.datasets.digits_images.weight=1", "data.datasets.digits_clips.weight=1", "data.batch_size=4",
        "train.steps_per_epoch=6", "train.epochs=1", "train.precision=fp32", "optim.warmup_epochs=0",
        "log.every_steps=1", "log.progress_bar=false", "log.image_every_steps=0"])
    assert pretrain(cfg).step == 6
    records = read_metrics(tmp_path / "metrics.jsonl")
    losses = [r["loss/hog"] for r in records if "loss/hog" in r]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert {"loss_by_dataset/digits_images", "loss_by_dataset/digits_clips"} <= {k for r in records for k in r}
    assert any(k.startswith("backbone.blocks.") for k in load(tmp_path / "checkpoints" / "last.pt")["model"])


def test_config_knows_every_size_stage_blocks():
    """vmim.config (no torch import) keeps a copy of the sizes' stage starts: it must match the models."""
    from vmim.config import MVIT_STAGE_BLOCKS, MVIT_STEM_STRIDE

    assert MVIT_STAGE_BLOCKS == {name: size.stage_blocks for name, size in M.MVIT_SIZES.items()}
    with torch.device("meta"):
        assert all(getattr(M, name)().stem_stride == MVIT_STEM_STRIDE for name in M.MVIT_SIZES)
