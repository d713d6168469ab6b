"""Learning-rate schedule, batch-size scaling and AdamW parameter groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vmim.config import load_config
from vmim.engine.optim import adamw_kernels, build_optimizer, cosine_lr, param_groups, scaled_lr
from vmim.meta_arch import build_method


# ----------------------------------------------------------------------------------------------------
# cosine_lr
# ----------------------------------------------------------------------------------------------------

TOTAL, WARMUP, PEAK, FINAL = 110, 10, 2.0, 0.2


def lr(step: int) -> float:
    return cosine_lr(step, TOTAL, WARMUP, PEAK, FINAL)


def test_cosine_lr_key_points():
    assert lr(0) == 0.0
    assert lr(WARMUP // 2) == pytest.approx(PEAK / 2)
    assert lr(WARMUP) == pytest.approx(PEAK)
    assert lr(WARMUP + (TOTAL - WARMUP) // 2) == pytest.approx((PEAK + FINAL) / 2)
    assert lr(TOTAL) == pytest.approx(FINAL)
    assert lr(TOTAL + 50) == pytest.approx(FINAL)  # stays at the floor if a run goes past its schedule


def test_cosine_lr_linear_warmup():
    for step in range(WARMUP + 1):
        assert lr(step) == pytest.approx(PEAK * step / WARMUP, abs=1e-12)


def test_cosine_lr_cosine_phase_by_hand():
    # A quarter of the way: final + (peak - final) * (1 + cos(pi / 4)) / 2.
    quarter = WARMUP + (TOTAL - WARMUP) // 4
    assert lr(quarter) == pytest.approx(FINAL + (PEAK - FINAL) * (1 + math.sqrt(0.5)) / 2)


def test_cosine_lr_monotone_after_warmup():
    values = [lr(step) for step in range(WARMUP, TOTAL + 20)]
    assert all(b <= a + 1e-15 for a, b in zip(values, values[1:]))
    assert all(FINAL - 1e-12 <= v <= PEAK + 1e-12 for v in values)


def test_cosine_lr_without_warmup_starts_at_peak():
    assert cosine_lr(0, 100, 0, 1.0, 0.0) == pytest.approx(1.0)
    assert cosine_lr(50, 100, 0, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 0, 1.0, 0.0) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# scaled_lr
# ----------------------------------------------------------------------------------------------------


def test_scaled_lr_videomae_recipe():
    # VideoMAE K400 ViT-B: base lr 1.5e-4 per 256, global batch 2048 -> 1.2e-3.
    assert scaled_lr(1.5e-4, 2048) == pytest.approx(1.2e-3, rel=1e-12)
    assert scaled_lr(1.5e-4, 256) == pytest.approx(1.5e-4, rel=1e-12)
    assert scaled_lr(1e-3, 64) == pytest.approx(2.5e-4, rel=1e-12)


# ----------------------------------------------------------------------------------------------------
# param_groups
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> nn.Module:
    cfg = load_config(None, [
        "model.backbone=vit_test", "model.patch_size=8", "data.img_size=16", "data.num_frames=4",
        "data.datasets.digits_images.weight=1",
        "model.dense=true", "model.pos_embed=learned",
        "targets.pixel.head.depth=1", "targets.pixel.head.dim=32", "targets.pixel.head.heads=2",
        "targets.hog.cell_size=4", "targets.hog.head.kind=linear",
    ])
    return build_method(cfg)


def expected_split(model: nn.Module) -> tuple[set[int], set[int]]:
    """(decay, no decay) parameter ids, classified by the module that owns each parameter."""
    decay, no_decay = set(), set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if isinstance(module, (nn.Linear, nn.Conv3d, nn.Conv2d)) and name == "weight":
                decay.add(id(param))
            elif isinstance(module, nn.LayerNorm) or name in ("bias", "mask_token", "table"):
                no_decay.add(id(param))
            else:
                raise AssertionError(f"unexpected parameter {name} of {type(module).__name__}")
    return decay, no_decay


def test_param_groups_decay_split(model):
    groups = param_groups(model, weight_decay=0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    want_decay, want_no_decay = expected_split(model)
    assert decay == want_decay
    assert no_decay == want_no_decay
    # spot checks by name
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[i] for i in no_decay}
    assert {"backbone.mask_token", "backbone.pos_embed.table"} <= no_decay_names
    assert "heads.pixel.mask_token" not in names.values()  # a decoder behind a dense encoder uses the encoder's
    assert "backbone.patch_embed.proj.bias" in no_decay_names and "backbone.norm.weight" in no_decay_names
    assert "backbone.patch_embed.proj.weight" in {names[i] for i in decay}
    assert all(p.ndim > 1 for p in groups[0]["params"])
    assert all(p.ndim <= 1 or names[id(p)].endswith(("mask_token", "pos_embed.table")) for p in groups[1]["params"])


def test_param_groups_each_trainable_parameter_exactly_once(model):
    groups = param_groups(model, weight_decay=0.05)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert len(ids) == len(list(model.parameters()))


def test_param_groups_skip_frozen_parameters(model):
    frozen = list(model.backbone.patch_embed.parameters())
    try:
        for p in frozen:
            p.requires_grad_(False)
        ids = {id(p) for g in param_groups(model, 0.1) for p in g["params"]}
        assert not ids & {id(p) for p in frozen}
        assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    finally:
        for p in frozen:
            p.requires_grad_(True)


def test_build_optimizer_scales_lr_and_keeps_groups(model):
    cfg = load_config(None, ["targets.pixel.weight=1", "data.datasets.digits_images.weight=1",
                             "optim.lr=1.5e-4", "optim.weight_decay=0.05", "optim.betas=[0.9,0.95]"]).optim
    opt = build_optimizer(model, cfg, global_batch=2048)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["lr"] == pytest.approx(1.2e-3) for g in opt.param_groups)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)


def _adamw_after_steps(impl: str, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    cfg = load_config(None, ["targets.pixel.weight=1", "data.datasets.digits_images.weight=1", f"optim.impl={impl}",
                             "optim.weight_decay=0.05"]).optim
    opt = build_optimizer(net, cfg, global_batch=256)
    assert opt.impl == impl
    x = torch.randn(32, 8)
    for _ in range(steps):
        net(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return [p.detach().clone() for p in net.parameters()]


def test_adamw_kernels_agree():
    """fused (the default) and foreach take the same steps as torch's per-parameter loop, the reference's AdamW."""
    loop = _adamw_after_steps("for_loop")
    for impl in ("fused", "foreach"):
        for a, b in zip(_adamw_after_steps(impl), loop):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(loop[0], _adamw_after_steps("for_loop", steps=0)[0])  # the steps moved the weights


def test_fused_adamw_falls_back_off_cpu_and_cuda():
    kernels, resolved = adamw_kernels([torch.empty(2, device="meta")], "fused")
    assert kernels == {"foreach": True} and resolved.startswith("foreach")
    assert adamw_kernels([torch.empty(2)], "fused") == ({"fused": True}, "fused")
    assert adamw_kernels([torch.empty(2)], "for_loop") == ({"foreach": False}, "for_loop")


# ----------------------------------------------------------------------------------------------------
# Layer-wise lr decay
# ----------------------------------------------------------------------------------------------------


def mae_layer_id(name: str, depth: int) -> int:
    """MAE's ``get_layer_id_for_vit`` (util/lr_decay.py), written out by name: the independent answer."""
    name = name.removeprefix("backbone.")
    if name.startswith(("cls_token", "mask_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def every_lr_scale(groups: list[dict], model: nn.Module) -> tuple[dict, dict]:
    """({id(param): its group's lr_scale}, {name: param}); every parameter is in exactly one group."""
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(scale_of) == len(names) == sum(len(g["params"]) for g in groups)
    return scale_of, names


@pytest.mark.parametrize("fc_norm", [False, True])
def test_layer_decay_scales_each_parameter_as_mae(fc_norm):
    from vmim.models.registry import BACKBONES

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = BACKBONES["vit_test"](patch_size=8, tubelet_size=2, pos_embed="learned", dense=True,
                                                  cls_token=True, fc_norm=fc_norm, video_grid=(2, 4, 4))
            self.head = nn.Linear(64, 10)

    model, decay = Classifier(), 0.75
    depth = model.backbone.depth
    groups = param_groups(model, weight_decay=0.05, layer_decay=decay)
    scale_of, names = every_lr_scale(groups, model)
    seen_ids = set()
    for name, param in names.items():
        layer = mae_layer_id(name, depth)
        seen_ids.add(layer)
        assert scale_of[id(param)] == pytest.approx(decay ** (depth + 1 - layer)), name
    assert seen_ids == set(range(depth + 2))  # stem, every block, and the head side
    opt = torch.optim.AdamW(groups, lr=1.0)
    from vmim.engine.optim import set_lr

    set_lr(opt, 2e-3)
    for group in opt.param_groups:
        assert group["lr"] == pytest.approx(2e-3 * group["lr_scale"])


# ----------------------------------------------------------------------------------------------------
# Head lr scale (optim.head_lr_scale)
# ----------------------------------------------------------------------------------------------------


def _classifier(fc_norm: bool = True) -> nn.Module:
    from vmim.models.registry import BACKBONES

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = BACKBONES["vit_test"](patch_size=8, tubelet_size=2, fc_norm=fc_norm, video_grid=(2, 4, 4))
            self.head = nn.Linear(64, 10)

    return Classifier()


@pytest.mark.parametrize("layer_decay", [1.0, 0.65])
def test_head_lr_scale_multiplies_what_follows_the_blocks(layer_decay):
    model, head_scale = _classifier(), 10.0
    depth = model.backbone.depth
    groups = param_groups(model, weight_decay=0.05, layer_decay=layer_decay, head_lr_scale=head_scale)
    scale_of, names = every_lr_scale(groups, model)
    heads = set()
    for name, param in names.items():
        layer = mae_layer_id(name, depth)
        want = layer_decay ** (depth + 1 - layer) * (head_scale if layer == depth + 1 else 1.0)
        assert scale_of[id(param)] == pytest.approx(want), name
        if layer == depth + 1:
            heads.add(name)
    assert {"head.weight", "head.bias", "backbone.fc_norm.weight"} <= heads  # the fresh classifier side
    assert not any(n.startswith(("backbone.blocks.", "backbone.patch_embed.")) for n in heads)
    # AdamW takes the scaled lr: one step on a zero gradient except sign(1) moves a head weight 10x a block weight
    opt = torch.optim.AdamW(groups, lr=1.0, weight_decay=0.0)
    from vmim.engine.optim import set_lr

    set_lr(opt, 1e-3)
    head_w, block_w = model.head.weight, model.backbone.blocks[-1].mlp.fc2.weight
    before = head_w.detach().clone(), block_w.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    head_step = (before[0] - head_w.detach()).abs().mean()
    block_step = (before[1] - block_w.detach()).abs().mean()
    assert head_step == pytest.approx(1e-3 * head_scale, rel=1e-3)  # Adam's first step is lr x sign(grad)
    assert block_step == pytest.approx(1e-3 * layer_decay, rel=1e-3)


def test_head_lr_scale_needs_a_backbone():
    net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    groups = param_groups(net, weight_decay=0.05, head_lr_scale=10.0)
    assert all(g["lr_scale"] == 1.0 for g in groups)  # no blocks: nothing "follows" them, the lr is the lr


def test_head_lr_scale_from_config_and_its_check():
    from vmim.config import ConfigError

    base = ["task=finetune", "data.datasets.d.kind=digits_images", "eval.datasets.t.kind=digits_images",
            "eval.datasets.t.split=test", "model.backbone=vit_test", "model.patch_size=8", "data.img_size=16",
            "data.num_frames=2"]
    cfg = load_config(None, base + ["optim.head_lr_scale=10", "optim.layer_decay=1"])
    model = _classifier()
    opt = build_optimizer(model, cfg.optim, global_batch=256)
    head = {id(p) for p in model.head.parameters()}
    assert {g["lr_scale"] for g in opt.param_groups if any(id(p) in head for p in g["params"])} == {10.0}
    assert load_config(None, base).optim.head_lr_scale == 1.0  # off by default
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="optim.head_lr_scale"):
            load_config(None, base + [f"optim.head_lr_scale={bad}"])
