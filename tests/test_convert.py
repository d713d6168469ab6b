"""Reference checkpoint import (``vmim convert``) and starting weights (``load_backbone``, ``load_init``).

Parity is checked against independent forwards: timm's own ViT (timm and MAE layouts), and a VideoMAE-style
reference written here from ``modeling_finetune.py``'s semantics (separate q / v biases with an explicit softmax,
the 1-D sinusoid table over the flattened token index, mean pooling + fc_norm). Models are tiny: timm
``VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)`` is our ``vit_test``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

from vmim.config import ViTConfig, config_to_yaml, load_config
from vmim.models import create_backbone, load_backbone, load_init
from vmim.convert import convert_checkpoint, convert_file, convert_state_dict
from vmim.models.pos_embed import resample_table, sincos_3d, sincos_flat

DIM, DEPTH, HEADS, PATCH, IMG = 64, 2, 2, 8, 32
ATOL, RTOL = 1e-5, 1e-4


def perturb(module: nn.Module, seed: int, scale: float = 0.05) -> nn.Module:
    """Add seeded noise to every parameter (biases and norms too), so that no weight keeps a trivial init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()


def timm_vit(global_pool: str = "token", seed: int = 0, **kwargs) -> TimmViT:
    torch.manual_seed(seed)
    kw = dict(img_size=IMG, patch_size=PATCH, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, num_classes=10,
              global_pool=global_pool)
    return perturb(TimmViT(**{**kw, **kwargs}), seed)


def timm_features(model: TimmViT, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> timm's pooled pre-logits features (B, D)."""
    with torch.no_grad():
        return model.forward_head(model.forward_features(images), pre_logits=True)


def images(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def ours(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)


def run_convert_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``vmim convert ...`` through the real command line parser."""
    from vmim.cli import main

    rc = main(["convert", *argv])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


# ----------------------------------------------------------------------------------------------------
# timm
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("global_pool,class_token", [("token", True), ("avg", True), ("avg", False)])
def test_timm_parity_images_and_repeated_frames(tmp_path, capsys, global_pool, class_token):
    ref = timm_vit(global_pool, class_token=class_token)
    src, dst = tmp_path / "timm.pth", tmp_path / "vit.pt"
    sd = ref.state_dict()
    torch.save(sd if global_pool == "token" else {"state_dict": sd}, src)
    rc, out = run_convert_cli(["--from", "timm", str(src), str(dst), "--num-frames", "4"], capsys)
    assert rc == 0 and "vit_test" in out and "pos_embed learned" in out and str(dst) in out
    model = load_backbone(dst)
    cfg = torch.load(dst, weights_only=True)["model"]
    assert (cfg["global_pool"], cfg["fc_norm"], cfg["tubelet_size"]) == (global_pool, global_pool == "avg", 2)
    assert cfg["cls_token"] is class_token

    x = images()
    expected = timm_features(ref, x)
    torch.testing.assert_close(ours(model, x[:, :, None]), expected, rtol=RTOL, atol=ATOL)
    # Inflated tubelet-2 weights on a clip of identical frames. One tubelet (T=2): sum_t W/2 x = W x, the image's
    # tokens. T=4 gives every grid token twice; attention is invariant to duplicating EVERY key, so the features
    # are the image's without a class token. A class token is not duplicated, and so loses half its relative
    # attention weight: there T=4 differs, by construction (not checked).
    for t in (2, 4) if not class_token else (2,):
        clip = x[:, :, None].expand(-1, -1, t, -1, -1)
        torch.testing.assert_close(ours(model, clip), expected, rtol=RTOL, atol=ATOL)


def test_timm_no_inflation_and_folded_class_token(tmp_path):
    ref = timm_vit("token")
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    out = convert_checkpoint("timm", tmp_path / "timm.pth", tubelet_size=1, num_frames=1)
    sd = out["state_dict"]
    assert sd["patch_embed.proj.weight"].shape == (DIM, 3, 1, PATCH, PATCH)
    torch.testing.assert_close(sd["cls_token"], ref.cls_token + ref.pos_embed[:, :1])
    torch.testing.assert_close(sd["pos_embed.table"], ref.pos_embed[0, 1:])
    assert out["video_grid"] == [1, 4, 4] and out["data"]["img_size"] == IMG


# ----------------------------------------------------------------------------------------------------
# MAE
# ----------------------------------------------------------------------------------------------------


def mae_2d_sincos(dim: int, side: int) -> np.ndarray:
    """MAE's ``get_2d_sincos_pos_embed(dim, side, cls_token=True)``: (1 + side², dim), zero class row."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)), axis=0)
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def mae_decoder_keys(dec: int = 32) -> dict[str, torch.Tensor]:
    n = (IMG // PATCH) ** 2
    keys = {"decoder_embed.weight": torch.randn(dec, DIM), "decoder_embed.bias": torch.randn(dec),
            "mask_token": torch.randn(1, 1, dec), "decoder_pos_embed": torch.randn(1, 1 + n, dec),
            "decoder_norm.weight": torch.ones(dec), "decoder_norm.bias": torch.zeros(dec),
            "decoder_pred.weight": torch.randn(3 * PATCH ** 2, dec), "decoder_pred.bias": torch.zeros(3 * PATCH ** 2)}
    block = nn.Module()
    block.norm1, block.attn, block.norm2 = nn.LayerNorm(dec), nn.Module(), nn.LayerNorm(dec)
    block.attn.qkv, block.attn.proj = nn.Linear(dec, 3 * dec), nn.Linear(dec, dec)
    block.mlp = nn.Sequential()
    block.mlp.fc1, block.mlp.fc2 = nn.Linear(dec, 4 * dec), nn.Linear(4 * dec, dec)
    keys.update({f"decoder_blocks.0.{k}": v for k, v in block.state_dict().items()})
    return keys


def test_mae_layout_parity_and_dropped_decoder(tmp_path):
    ref = timm_vit("token", seed=3)
    with torch.no_grad():  # MAE's fixed 2-D sin-cos table, saved as a parameter, class row zeros
        ref.pos_embed.copy_(torch.from_numpy(mae_2d_sincos(DIM, IMG // PATCH)).float()[None])
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}
    decoder = mae_decoder_keys()
    torch.save({"model": {**sd, **decoder}}, tmp_path / "mae.pth")
    out = convert_file("mae", tmp_path / "mae.pth", tmp_path / "vit.pt", num_frames=4)
    assert sorted(out["source"]["dropped"]) == sorted(decoder)
    assert out["model"]["global_pool"] == "token" and out["model"]["pos_embed"] == "learned"
    x = images()
    torch.testing.assert_close(ours(load_backbone(tmp_path / "vit.pt"), x[:, :, None]), timm_features(ref, x),
                               rtol=RTOL, atol=ATOL)


def test_mae_finetuned_layout_drops_head(tmp_path):
    ref = timm_vit("avg", seed=4)  # MAE models_vit with global_pool: fc_norm, head, no norm
    torch.save({"model": ref.state_dict()}, tmp_path / "mae_ft.pth")
    out = convert_file("mae", tmp_path / "mae_ft.pth", tmp_path / "vit.pt")
    assert out["source"]["dropped"] == ["head.bias", "head.weight"]
    assert out["model"]["fc_norm"] and out["model"]["global_pool"] == "avg"
    x = images()
    torch.testing.assert_close(ours(load_backbone(tmp_path / "vit.pt"), x[:, :, None]), timm_features(ref, x),
                               rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# VideoMAE (a reference forward written here) and MVD
# ----------------------------------------------------------------------------------------------------


def videomae_table(n: int, dim: int) -> torch.Tensor:
    """VideoMAE's ``get_sinusoid_encoding_table(n, dim)`` (without the batch axis): angle p / 10000^(2 (j // 2) /
    dim), sin on even channels, cos on odd ones."""
    table = np.array([[p / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for p in range(n)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float)


class RefAttention(nn.Module):
    """VideoMAE ``Attention`` with ``qkv_bias=True``: a bias-free qkv Linear, separate q and v biases."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.zeros(dim)), nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), RefAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), nn.Module()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        h = self.mlp.fc2(self.mlp.act(self.mlp.fc1(self.norm2(x))))
        return x + h


class RefVideoMAE(nn.Module):
    """VideoMAE ``VisionTransformer`` (fine-tune: mean pooling, ``norm`` Identity, ``fc_norm``, head) or the pretrain
    encoder (``norm`` LayerNorm, no fc_norm, no head). The position table is a plain attribute, as in VideoMAE."""

    def __init__(self, finetune: bool, dim: int = DIM, depth: int = DEPTH, heads: int = HEADS, tubelet: int = 2,
                 num_tokens: int = 2 * 4 * 4):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, dim, (tubelet, PATCH, PATCH), stride=(tubelet, PATCH, PATCH))
        self.pos_embed = videomae_table(num_tokens, dim)
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(depth))
        self.norm = nn.Identity() if finetune else nn.LayerNorm(dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6) if finetune else None
        self.head = nn.Linear(dim, 5) if finetune else nn.Identity()

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens(x)
        return self.fc_norm(x.mean(1)) if self.fc_norm is not None else x.mean(1)


def clip(b: int = 2, t: int = 4, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, t, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def test_sincos_flat_is_videomae_table():
    for n, dim in ((50, 64), (8 * 14 * 14, 192)):
        torch.testing.assert_close(sincos_flat((1, 1, n), dim), videomae_table(n, dim), rtol=0, atol=1e-5)


def test_videomae_finetune_layout_matches_reference_forward(tmp_path):
    torch.manual_seed(5)
    ref = perturb(RefVideoMAE(finetune=True), seed=5)
    sd = {f"_orig_mod.{k}": v for k, v in ref.state_dict().items()}  # torch.compile prefix (VideoMAE V2)
    assert "blocks.0.attn.q_bias" in ref.state_dict() and "pos_embed" not in ref.state_dict()
    torch.save({"model": sd, "epoch": 3, "args": argparse.Namespace(model="vit_test")}, tmp_path / "ft.pth")
    out = convert_file("videomae", tmp_path / "ft.pth", tmp_path / "vit.pt", num_frames=4, img_size=IMG)
    m = out["model"]
    assert (m["pos_embed"], m["fc_norm"], m["global_pool"], m["tubelet_size"]) == ("sincos_1d", True, "avg", 2)
    assert out["source"]["dropped"] == ["head.bias", "head.weight"]
    model = load_backbone(tmp_path / "vit.pt")
    q = ref.blocks[0].attn.q_bias
    torch.testing.assert_close(model.blocks[0].attn.qkv.bias, torch.cat([q, torch.zeros_like(q),
                                                                        ref.blocks[0].attn.v_bias]))
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(ours(model, x), ref.forward_features(x), rtol=RTOL, atol=ATOL)


def test_videomae_pretrain_layout(tmp_path):
    torch.manual_seed(6)
    wrapper = nn.Module()  # modeling_pretrain.PretrainVisionTransformer's names
    wrapper.encoder = perturb(RefVideoMAE(finetune=False), seed=6)
    wrapper.encoder_to_decoder = nn.Linear(DIM, 32, bias=False)
    wrapper.mask_token = nn.Parameter(torch.zeros(1, 1, 32))
    wrapper.decoder = nn.Module()
    wrapper.decoder.blocks = nn.ModuleList([RefBlock(32, 2)])
    wrapper.decoder.norm, wrapper.decoder.head = nn.LayerNorm(32), nn.Linear(32, 3 * 2 * PATCH * PATCH)
    torch.save({"module": wrapper.state_dict()}, tmp_path / "pre.pth")
    out = convert_file("videomae", tmp_path / "pre.pth", tmp_path / "vit.pt", num_frames=4, img_size=IMG)
    dropped = out["source"]["dropped"]
    assert "encoder_to_decoder.weight" in dropped and "mask_token" in dropped
    assert {k for k in dropped if k.startswith("decoder.")} == {k for k in wrapper.state_dict() if
                                                                k.startswith("decoder.")}
    assert out["model"]["fc_norm"] is False and out["state_dict"]["norm.weight"].shape == (DIM,)
    assert out["state_dict"]["patch_embed.proj.weight"].shape == (DIM, 3, 2, PATCH, PATCH)
    model = load_backbone(tmp_path / "vit.pt")
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(model(x).tokens, wrapper.encoder.tokens(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("table", ["sincos_3d", "sincos_1d", "random"])
def test_mvd_student_pos_embed_kind(tmp_path, table):
    torch.manual_seed(7)
    ref = perturb(RefVideoMAE(finetune=False), seed=7)
    grid = (2, 4, 4)
    pos = {"sincos_3d": sincos_3d(grid, DIM), "sincos_1d": sincos_flat(grid, DIM),
           "random": torch.randn(32, DIM) * 0.02}[table]
    ref.pos_embed = pos
    sd = dict(ref.state_dict(), pos_embed=pos[None].clone())
    extra = {}
    for kind in ("img", "vid"):  # one decoder per teacher
        extra.update({f"mask_token_{kind}": torch.zeros(1, 1, 32), f"down_{kind}.weight": torch.randn(32, DIM),
                      f"down_{kind}.bias": torch.zeros(32), f"pos_embed_{kind}": torch.randn(1, 32, 32),
                      f"decoder_{kind}.norm.weight": torch.ones(32), f"decoder_{kind}.head.weight": torch.randn(8, 32)})
    torch.save({"model": {**sd, **extra}}, tmp_path / "mvd.pth")
    out = convert_file("mvd", tmp_path / "mvd.pth", tmp_path / "vit.pt", num_frames=4)
    assert sorted(out["source"]["dropped"]) == sorted(extra)
    assert out["model"]["pos_embed"] == ("learned" if table == "random" else table)
    assert out["data"]["img_size"] == IMG and out["video_grid"] == [2, 4, 4]
    x = clip()
    with torch.no_grad():
        torch.testing.assert_close(load_backbone(tmp_path / "vit.pt")(x).tokens, ref.tokens(x), rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------


def test_refuses_unknown_and_missing_keys_listing_all():
    sd = timm_vit().state_dict()
    extra = dict(sd, **{"blocks.0.attn.foo": torch.zeros(3), "blocks.1.ls1.gamma": torch.ones(DIM)})
    with pytest.raises(ValueError, match="unexpected keys") as err:
        convert_state_dict("timm", extra)
    assert "blocks.0.attn.foo" in str(err.value) and "blocks.1.ls1.gamma" in str(err.value)
    missing = {k: v for k, v in sd.items() if k not in ("blocks.1.mlp.fc2.bias", "blocks.0.norm2.weight")}
    with pytest.raises(ValueError, match="missing keys") as err:
        convert_state_dict("timm", missing)
    assert "blocks.1.mlp.fc2.bias" in str(err.value) and "blocks.0.norm2.weight" in str(err.value)


def test_refuses_unregistered_size_other_mlp_ratio_and_wrong_backbone():
    with pytest.raises(ValueError, match="registered: vit_test"):
        convert_state_dict("timm", timm_vit(embed_dim=96, num_heads=2).state_dict())
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight"):
        convert_state_dict("timm", timm_vit(mlp_ratio=2.0).state_dict())
    with pytest.raises(ValueError, match="--backbone vit_base"):
        convert_state_dict("timm", timm_vit().state_dict(), backbone="vit_base")


def test_cli_reports_errors(tmp_path, capsys):
    torch.save({"model": timm_vit(mlp_ratio=2.0).state_dict()}, tmp_path / "bad.pth")
    rc, out = run_convert_cli(["--from", "timm", str(tmp_path / "bad.pth"), str(tmp_path / "x.pt")], capsys)
    assert rc == 2 and "MLP ratio" in out and not (tmp_path / "x.pt").exists()


def converted_timm(tmp_path, **opts) -> tuple[TimmViT, object]:
    ref = timm_vit("token")
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    dst = tmp_path / "vit.pt"
    convert_file("timm", tmp_path / "timm.pth", dst, **opts)
    return ref, dst


def vit_cfg(**kwargs) -> ViTConfig:
    base = dict(backbone="vit_test", patch_size=PATCH, tubelet_size=2, pos_embed="learned", cls_token=True,
                global_pool="token")
    return ViTConfig(**{**base, **kwargs})


def test_load_init_refuses_architecture_changes(tmp_path):
    _, dst = converted_timm(tmp_path, num_frames=4)
    for key, value, grid in (("patch_size", 4, (2, 8, 8)), ("pos_embed", "sincos_3d", (2, 4, 4)),
                             ("backbone", "vit_tiny", (2, 4, 4))):
        cfg = vit_cfg(**{key: value})
        with pytest.raises(ValueError, match=rf"model\.{key}: the model has {value!r}"):
            load_init(create_backbone(cfg, grid), dst, cfg)
    cfg = vit_cfg(tubelet_size=4)  # only 1 -> t is an inflation
    with pytest.raises(ValueError, match=r"model\.tubelet_size"):
        load_init(create_backbone(cfg, (1, 4, 4)), dst, cfg)


# ----------------------------------------------------------------------------------------------------
# load_init from our own checkpoints; position tables
# ----------------------------------------------------------------------------------------------------


def test_load_init_from_pretraining_checkpoint(tmp_path):
    from vmim.meta_arch import build_method

    cfg = load_config("configs/demo/digits.yaml", [
        "model.backbone=vit_test", "data.img_size=32", "model.patch_size=8", "targets.pixel.head.depth=1",
        "targets.pixel.head.dim=32", "targets.pixel.head.heads=2"])
    torch.manual_seed(8)
    method = perturb(build_method(cfg), seed=8)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": method.state_dict(), "config": config_to_yaml(cfg), "task": "pretrain", "step": 0},
               run / "checkpoints" / "last.pt")

    ft_cfg = ViTConfig(backbone="vit_test", patch_size=8, tubelet_size=2, fc_norm=True)
    backbone = create_backbone(ft_cfg, (2, 4, 4))
    report = load_init(backbone, run, ft_cfg)
    for name, value in method.backbone.state_dict().items():
        if not name.startswith("norm."):
            torch.testing.assert_close(backbone.state_dict()[name], value, rtol=0, atol=0)
    text = "\n".join(report)
    assert "dropped norm.bias, norm.weight" in text and "fresh fc_norm.bias, fc_norm.weight" in text
    assert "pretrain checkpoint" in text and "last.pt" in text
    torch.testing.assert_close(backbone.fc_norm.weight, torch.ones(DIM))

    whole = load_backbone(run)  # the same run as a whole backbone (its own norm, its own pooling)
    x = clip(t=4)
    torch.testing.assert_close(ours(whole, x), ours(method.backbone.eval(), x), rtol=0, atol=0)


def test_load_init_dense_mask_token_and_inflation(tmp_path):
    ref, dst = converted_timm(tmp_path, tubelet_size=1, num_frames=1)
    cfg = vit_cfg(tubelet_size=2, dense=True)
    backbone = create_backbone(cfg, (1, 4, 4)).eval()
    report = "\n".join(load_init(backbone, dst, cfg))
    assert "left fresh mask_token" in report and "inflated from tubelet 1 to 2" in report
    x = images()
    torch.testing.assert_close(ours(backbone, x[:, :, None]), timm_features(ref, x), rtol=RTOL, atol=ATOL)


def test_position_table_over_time_and_space(tmp_path):
    ref, dst = converted_timm(tmp_path, num_frames=8)  # tubelet 2: a (4, 4, 4) table, every slice the 2-D one
    table_2d = ref.pos_embed[0, 1:].detach()
    assert torch.load(dst, weights_only=True)["video_grid"] == [4, 4, 4]
    for grid in ((8, 4, 4), (2, 4, 4)):
        cfg = vit_cfg()
        backbone = create_backbone(cfg, grid)
        report = load_init(backbone, dst, cfg)
        assert any("resampled" in line for line in report)
        slices = backbone.pos_embed.table.detach().reshape(grid[0], 16, DIM)
        assert all(torch.equal(s, table_2d) for s in slices)
    # another image size: bicubic in space (shape; a constant table stays constant)
    cfg = vit_cfg()
    backbone = create_backbone(cfg, (4, 6, 6))
    load_init(backbone, dst, cfg)
    assert backbone.pos_embed.table.shape == (4 * 36, DIM)
    const = torch.ones(16, DIM)
    torch.testing.assert_close(resample_table(const, (1, 4, 4), (3, 6, 6)), torch.ones(108, DIM))
    # slices that differ are interpolated linearly over time: the two-step table's mean at the middle
    two = torch.stack([torch.zeros(16, DIM), torch.ones(16, DIM)]).reshape(32, DIM)
    out = resample_table(two, (2, 4, 4), (4, 4, 4)).reshape(4, 16, DIM)
    assert out[0].max() == 0 and out[-1].min() == 1 and 0 < out[1].mean() < out[2].mean() < 1
    # convert-time interpolation to another img_size
    out = convert_checkpoint("timm", tmp_path / "timm.pth", img_size=48, num_frames=4)
    assert out["video_grid"] == [2, 6, 6] and out["state_dict"]["pos_embed.table"].shape == (72, DIM)
    assert math.isclose(float(out["state_dict"]["pos_embed.table"].reshape(2, 36, DIM)[0].std()),
                        float(out["state_dict"]["pos_embed.table"].reshape(2, 36, DIM)[1].std()))


def test_load_init_from_finetuning_checkpoint_keeps_fc_norm(tmp_path):
    from vmim.config import build_config, video_grid

    cfg = build_config({"task": "finetune", "model": {"backbone": "vit_test", "patch_size": 8, "fc_norm": True},
                        "data": {"img_size": 32, "num_frames": 4, "datasets": {"digits_images": {}}}})
    torch.manual_seed(9)
    trained = perturb(create_backbone(cfg.model, video_grid(cfg)), seed=9)
    state = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    state.update({"head.weight": torch.zeros(10, DIM), "head.bias": torch.zeros(10)})
    torch.save({"model": state, "config": config_to_yaml(cfg), "task": "finetune", "step": 7}, tmp_path / "ft.pt")

    backbone = create_backbone(cfg.model, video_grid(cfg))
    report = "\n".join(load_init(backbone, tmp_path / "ft.pt", cfg.model))
    assert "finetune checkpoint" in report and "fresh" not in report and "dropped" not in report
    torch.testing.assert_close(backbone.fc_norm.weight, trained.fc_norm.weight, rtol=0, atol=0)
    x = clip()
    torch.testing.assert_close(ours(load_backbone(tmp_path / "ft.pt"), x), ours(trained, x), rtol=0, atol=0)

    plain = ViTConfig(backbone="vit_test", patch_size=8)  # per-token norm: the weights have none to give
    with pytest.raises(ValueError, match=r"missing keys.*norm\.bias, norm\.weight.*model\.fc_norm"):
        load_init(create_backbone(plain, (2, 4, 4)), tmp_path / "ft.pt", plain)
    with pytest.raises(ValueError, match="convert reference checkpoints first"):
        torch.save({"model": trained.state_dict()}, tmp_path / "raw.pth")
        load_init(backbone, tmp_path / "raw.pth", cfg.model)


def test_reference_files_load_without_running_pickled_code(tmp_path):
    """VideoMAE / MAE files pickle their argparse args (allowed); any other object is refused before it can run."""
    import argparse

    from vmim.convert import load_reference

    sd = {"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=1e-3)}
    torch.save(sd, tmp_path / "ok.pth")
    assert load_reference(tmp_path / "ok.pth")["args"].lr == 1e-3
    torch.save({"model": {"w": torch.zeros(2)}, "hook": Exploit(tmp_path / "pwned")}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="refused for safety"):
        load_reference(tmp_path / "bad.pth")
    assert not (tmp_path / "pwned").exists()


class Exploit:
    """Unpickling runs ``touch <target>``."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))
