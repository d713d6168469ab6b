"""Backbone, position embedding, decoder and pretrainer: sizes, shapes, token bookkeeping and gradients.

Token order everywhere is (t, h, w) row-major over the grid (T/t, H/p, W/p): token (n, i, j) covers frames
n*t .. n*t + t - 1, rows i*p .. i*p + p - 1 and columns j*p .. j*p + p - 1.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from vmim import config, masking
from vmim.config import load_config
from vmim.models import VIT_SIZES, MaskedDecoder, MaskedPretrainer, build_pretrainer, create_backbone
from vmim.models.layers import Block
from vmim.models.pos_embed import sincos_1d, sincos_3d
from vmim.models.vit import PatchEmbed3d
from vmim.targets import PixelTarget

FORWARD_SIZES = ["vit_test", "vit_tiny"]
PATCH, TUBELET = 8, 2


def make_mask(batch: int, n: int, n_masked: int, seed: int = 0) -> torch.Tensor:
    """(B, N) bool, exactly ``n_masked`` True per row, a different pattern per row."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(n, generator=gen)[:n_masked]] = True
    return mask


def token_region(token: int, grid: tuple[int, int, int], t: int = TUBELET, p: int = PATCH):
    """Index into (B, C, T, H, W) selecting the pixels of a token."""
    _, gh, gw = grid
    n, rest = divmod(token, gh * gw)
    i, j = divmod(rest, gw)
    return (slice(None), slice(None), slice(n * t, n * t + t), slice(i * p, i * p + p), slice(j * p, j * p + p))


@pytest.fixture(scope="module", params=FORWARD_SIZES)
def backbone(request) -> nn.Module:
    torch.manual_seed(0)
    return create_backbone(request.param, patch_size=PATCH, tubelet_size=TUBELET).eval()


# ----------------------------------------------------------------------------------------------------
# Sizes (no forward pass)
# ----------------------------------------------------------------------------------------------------

# Encoder parameters of the standard ViTs (timm, without the classifier head), in millions.
STANDARD_PARAMS_M = {"vit_tiny": 5.5, "vit_small": 21.7, "vit_base": 85.8, "vit_large": 303.0, "vit_huge": 630.0}
STANDARD_SHAPES = {  # (embed_dim, depth, num_heads) of ViT-Ti/S/B/L/H
    "vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16), "vit_huge": (1280, 32, 16),
}


def analytic_params(dim: int, depth: int, patch: int = 16, tubelet: int = 2, chans: int = 3) -> int:
    """Per block: qkv D x 3D + 3D, proj D x D + D, MLP D x 4D + 4D and 4D x D + D, two LayerNorms 2 x 2D
    = 12 D^2 + 13 D. Tubelet embedding: C*t*p*p x D + D. Final LayerNorm: 2 D."""
    return depth * (12 * dim * dim + 13 * dim) + (chans * tubelet * patch * patch * dim + dim) + 2 * dim


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(VIT_SIZES))
def test_vit_size_parameter_count(name):
    size = VIT_SIZES[name]
    assert size.embed_dim % size.num_heads == 0
    assert sincos_3d((2, 2, 2), size.embed_dim).shape == (8, size.embed_dim)  # the width splits into t, h, w
    # Build one block and the patch embedding on the meta device (no memory, no init cost), even for ViT-H.
    with torch.device("meta"):
        block = Block(size.embed_dim, size.num_heads)
        embed = PatchEmbed3d(16, 2, 3, size.embed_dim)
    total = size.depth * numel(block) + numel(embed) + 2 * size.embed_dim
    assert total == analytic_params(size.embed_dim, size.depth)
    if name in STANDARD_PARAMS_M:
        assert (size.embed_dim, size.depth, size.num_heads) == STANDARD_SHAPES[name]
        assert total / 1e6 == pytest.approx(STANDARD_PARAMS_M[name], rel=0.10)


@pytest.mark.parametrize("name", FORWARD_SIZES)
def test_built_backbone_parameter_count(name):
    size = VIT_SIZES[name]
    model = create_backbone(name, patch_size=16, tubelet_size=2)
    assert model.embed_dim == size.embed_dim and len(model.blocks) == size.depth
    assert numel(model) == analytic_params(size.embed_dim, size.depth)
    assert numel(create_backbone(name, patch_size=8, tubelet_size=1)) == analytic_params(
        size.embed_dim, size.depth, patch=8, tubelet=1)


def test_backbone_builds_on_meta_device():
    with torch.device("meta"):
        model = create_backbone("vit_huge")
    assert numel(model) == analytic_params(1280, 32)


def test_unknown_backbone_lists_registered_names():
    with pytest.raises(KeyError) as info:
        create_backbone("vit_nope")
    message = str(info.value)
    assert "vit_nope" in message
    for name in VIT_SIZES:
        assert name in message


def test_config_registries_match_package():
    assert set(config.BACKBONES) == set(VIT_SIZES) and len(config.BACKBONES) == len(VIT_SIZES)
    assert set(config.MASKINGS) == set(masking.MASKINGS) and len(config.MASKINGS) == len(masking.MASKINGS)


# ----------------------------------------------------------------------------------------------------
# Position embedding
# ----------------------------------------------------------------------------------------------------


def hand_sincos(pos: int, dim: int) -> list[float]:
    """[sin(pos * w_k) for k] + [cos(pos * w_k) for k], w_k = 10000^(-2k/dim), k < dim/2."""
    w = [10000 ** (-2 * k / dim) for k in range(dim // 2)]
    return [math.sin(pos * x) for x in w] + [math.cos(pos * x) for x in w]


def test_sincos_1d_by_hand():
    out = sincos_1d(torch.tensor([0, 1, 5]), 4)  # w = (1, 1/100)
    want = torch.tensor([
        [0.0, 0.0, 1.0, 1.0],
        [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)],
        [math.sin(5), math.sin(0.05), math.cos(5), math.cos(0.05)],
    ], dtype=torch.float64)
    torch.testing.assert_close(out.double(), want, atol=1e-12, rtol=0)
    out = sincos_1d(torch.tensor([3]), 6)  # w = 1, 10000^(-1/3) = 0.0464159, 10000^(-2/3) = 0.00215443
    w = [1.0, 0.046415888336127774, 0.002154434690031882]
    want = torch.tensor([[math.sin(3 * x) for x in w] + [math.cos(3 * x) for x in w]], dtype=torch.float64)
    torch.testing.assert_close(out.double(), want, atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        sincos_1d(torch.arange(3), 5)


def test_sincos_3d_shape_and_separable_layout():
    grid, dim = (4, 3, 5), 64
    table = sincos_3d(grid, dim)
    assert table.shape == (4 * 3 * 5, dim) and table.dtype == torch.float32
    # A quarter of the channels encode t, the rest is split evenly between the row h and the column w.
    want = torch.tensor([hand_sincos(t, 16) + hand_sincos(h, 24) + hand_sincos(w, 24)
                         for t in range(4) for h in range(3) for w in range(5)])
    torch.testing.assert_close(table, want, atol=1e-6, rtol=0)


def test_sincos_3d_image_is_first_slice_of_video():
    video = sincos_3d((8, 4, 6), 64).view(8, 24, 64)
    image = sincos_3d((1, 4, 6), 64)
    assert torch.equal(image, video[0])


def test_sincos_3d_rows_are_distinct():
    table = sincos_3d((8, 7, 7), 96)
    distances = torch.cdist(table, table) + torch.eye(len(table)) * 1e9
    assert distances.min() > 1e-3


# ----------------------------------------------------------------------------------------------------
# Backbone forward
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, grid", [
    ((2, 3, 1, 16, 24), (1, 2, 3)),  # image: (H/p) * (W/p) tokens
    ((2, 3, 4, 16, 24), (2, 2, 3)),  # video: T/t * H/p * W/p tokens
    ((1, 3, 2, 32, 16), (1, 4, 2)),  # a clip of one tubelet
])
def test_backbone_output_shapes(backbone, shape, grid):
    n = grid[0] * grid[1] * grid[2]
    x = torch.randn(shape)
    assert backbone.grid(x.shape) == grid
    with torch.no_grad():
        out = backbone(x)
        assert out.shape == (shape[0], n, backbone.embed_dim)
        assert torch.isfinite(out).all()
        n_masked = n // 2
        masked = backbone(x, make_mask(shape[0], n, n_masked))
        assert masked.shape == (shape[0], n - n_masked, backbone.embed_dim)
        assert backbone.forward_features(x).shape == (shape[0], backbone.embed_dim)


def test_backbone_rejects_indivisible_input(backbone):
    with pytest.raises(ValueError):
        backbone(torch.randn(1, 3, 3, 16, 16))  # 3 frames, tubelet 2
    with pytest.raises(ValueError):
        backbone(torch.randn(1, 3, 2, 12, 16))  # 12 rows, patch 8


def test_image_equals_frame_repeated_to_tubelet(backbone):
    image = torch.randn(2, 3, 1, 16, 24)
    clip = image.repeat(1, 1, TUBELET, 1, 1)
    mask = make_mask(2, 6, 2)
    with torch.no_grad():
        torch.testing.assert_close(backbone(image), backbone(clip), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(backbone(image, mask), backbone(clip, mask), atol=1e-6, rtol=1e-6)


def test_masked_pixels_do_not_change_output(backbone):
    grid = (2, 2, 3)
    x = torch.randn(2, 3, 4, 16, 24)
    mask = make_mask(2, 12, 8)
    with torch.no_grad():
        out = backbone(x, mask)
        y = x.clone()
        for b in range(2):
            for token in torch.nonzero(mask[b]).flatten().tolist():
                y[b:b + 1][token_region(token, grid)] = torch.randn(1, 3, TUBELET, PATCH, PATCH) * 10
        torch.testing.assert_close(backbone(y, mask), out, atol=1e-6, rtol=1e-6)
        # ... while a visible token's pixels do matter (for every token, through attention)
        visible = torch.nonzero(~mask[0]).flatten()[0].item()
        z = x.clone()
        z[0:1][token_region(visible, grid)] += 1.0
        changed = backbone(z, mask)
        assert not torch.allclose(changed[0], out[0], atol=1e-4)
        torch.testing.assert_close(changed[1], out[1], atol=1e-6, rtol=1e-6)  # samples stay independent


def test_masked_output_is_visible_tokens_in_row_major_order(backbone):
    # With zeroed attention and MLP every block is the identity, so the encoder works token by token; the masked
    # forward must then return exactly the full forward's rows at the unmasked positions, in increasing order.
    tokenwise = copy.deepcopy(backbone)
    with torch.no_grad():
        for block in tokenwise.blocks:
            for p in block.parameters():
                if p is not block.norm1.weight and p is not block.norm2.weight:
                    p.zero_()
        x = torch.randn(3, 3, 4, 16, 24)
        mask = make_mask(3, 12, 7, seed=3)
        full = tokenwise(x)
        masked = tokenwise(x, mask)
    assert masked.shape == (3, 5, backbone.embed_dim)
    for b in range(3):
        torch.testing.assert_close(masked[b], full[b][~mask[b]], atol=1e-5, rtol=1e-5)


def test_full_mask_of_visible_tokens_equals_reference_encoder(backbone):
    # Visible-only encoding = the same blocks run on the sequence of visible (embedded + positioned) tokens.
    x = torch.randn(2, 3, 4, 16, 24)
    mask = make_mask(2, 12, 9, seed=5)
    with torch.no_grad():
        grid = backbone.grid(x.shape)
        tokens = backbone.patch_embed(x) + sincos_3d(grid, backbone.embed_dim)
        for b in range(2):
            seq = tokens[b][~mask[b]][None]
            for block in backbone.blocks:
                seq = block(seq)
            torch.testing.assert_close(backbone(x, mask)[b], backbone.norm(seq)[0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Training-mode behaviour of the backbone
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORWARD_SIZES)
def test_grad_checkpointing_parity(name):
    torch.manual_seed(0)
    plain = create_backbone(name, patch_size=PATCH, tubelet_size=TUBELET)
    ckpt = create_backbone(name, patch_size=PATCH, tubelet_size=TUBELET, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    plain.train(), ckpt.train()
    x = torch.randn(2, 3, 4, 16, 24)
    mask = make_mask(2, 12, 6)
    weight = torch.randn(2, 6, plain.embed_dim)
    outs = []
    for model in (plain, ckpt):
        out = model(x, mask)
        (out * weight).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-6)
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_drop_path_deterministic_in_eval_random_in_train():
    torch.manual_seed(0)
    model = create_backbone("vit_test", patch_size=PATCH, tubelet_size=TUBELET, drop_path=0.5)
    x = torch.randn(4, 3, 4, 16, 24)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(1)
        c = model(x)
        torch.manual_seed(2)
        d = model(x)
    assert not torch.allclose(c, d)  # stochastic depth is active in training (last block rate 0.5)


# ----------------------------------------------------------------------------------------------------
# MaskedDecoder
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [0, 2])
def test_decoder_output_shape(depth):
    torch.manual_seed(0)
    dec = MaskedDecoder(in_dim=64, out_dim=40, depth=depth, dim=32, num_heads=2)
    mask = make_mask(3, 12, 8)
    out = dec(torch.randn(3, 4, 64), mask, (2, 2, 3))
    assert out.shape == (3, 12, 40) and torch.isfinite(out).all()
    assert len(dec.blocks) == depth


def test_decoder_depth0_is_tokenwise():
    # Without blocks the decoder works per position: the k-th visible input lands at the k-th unmasked position
    # (row-major) and nowhere else; masked positions only see the mask token and the position embedding.
    torch.manual_seed(0)
    dec = MaskedDecoder(in_dim=16, out_dim=8, depth=0, dim=32, num_heads=2).eval()
    mask = make_mask(2, 12, 8, seed=1)
    visible = torch.randn(2, 4, 16)
    with torch.no_grad():
        base = dec(visible, mask, (2, 2, 3))
        # masked positions: identical across the batch, independent of the visible inputs
        both = mask[0] & mask[1]
        assert both.any()
        torch.testing.assert_close(base[0][both], base[1][both])
        other = dec(torch.randn(2, 4, 16), mask, (2, 2, 3))
        torch.testing.assert_close(other[mask], base[mask])
        for k in range(4):
            bumped = visible.clone()
            bumped[0, k] += 1.0
            out = dec(bumped, mask, (2, 2, 3))
            changed = (out - base).abs().amax(dim=-1) > 1e-6
            position = torch.nonzero(~mask[0]).flatten()[k]
            want = torch.zeros_like(changed)
            want[0, position] = True
            assert torch.equal(changed, want), (k, changed)


def test_decoder_with_blocks_mixes_tokens():
    torch.manual_seed(0)
    dec = MaskedDecoder(in_dim=16, out_dim=8, depth=1, dim=32, num_heads=2).eval()
    mask = make_mask(1, 12, 8, seed=1)
    visible = torch.randn(1, 4, 16)
    with torch.no_grad():
        base = dec(visible, mask, (2, 2, 3))
        bumped = visible.clone()
        bumped[0, 0] += 1.0
        changed = (dec(bumped, mask, (2, 2, 3)) - base).abs().amax(dim=-1) > 1e-6
    assert changed.all()  # every prediction, visible or masked, attends to the changed visible token


# ----------------------------------------------------------------------------------------------------
# MaskedPretrainer
# ----------------------------------------------------------------------------------------------------

MODEL_OVERRIDES = [
    "model.backbone=vit_test", f"model.patch_size={PATCH}", f"model.tubelet_size={TUBELET}",
    "data.img_size=16", "data.num_frames=4", "data.datasets.digits_images.weight=1",
]
PIXEL = ["targets.pixel.weight=1.0", "targets.pixel.decoder_depth=1", "targets.pixel.decoder_dim=32",
         "targets.pixel.decoder_heads=2"]
HOG = ["targets.hog.weight=0.5", "targets.hog.cell_size=4", "targets.hog.decoder_depth=0",
       "targets.hog.decoder_dim=32", "targets.hog.decoder_heads=2"]


def pretrainer(*targets: list[str], backbone: str = "vit_test") -> MaskedPretrainer:
    torch.manual_seed(0)
    cfg = load_config(None, MODEL_OVERRIDES + [o for t in targets for o in t] + [f"model.backbone={backbone}"])
    return build_pretrainer(cfg)


def clip_batch(b: int = 2, t: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, t, size, size), generator=gen, dtype=torch.uint8)


@pytest.mark.parametrize("name", FORWARD_SIZES)
def test_pretrainer_losses_and_gradients(name):
    model = pretrainer(PIXEL, HOG, backbone=name).train()
    clip = clip_batch()
    mask = make_mask(2, 8, 6)  # grid (2, 2, 2)
    out = model(clip, mask)
    assert set(out) == {"loss", "loss/pixel", "loss/hog"}
    for value in out.values():
        assert value.shape == () and torch.isfinite(value)
    torch.testing.assert_close(out["loss"], 1.0 * out["loss/pixel"] + 0.5 * out["loss/hog"])
    # pixel loss by hand: MSE over the masked tokens between the decoder's prediction and the (default)
    # per-channel normalized pixel target of the clip in [0, 1]
    with torch.no_grad():
        pixels, preds = model.predict(clip, mask)
        target = PixelTarget((TUBELET, PATCH, PATCH), norm="per_channel")(clip.float() / 255)
        want = ((preds["pixel"][mask] - target[mask]) ** 2).mean()
    torch.testing.assert_close(out["loss/pixel"].detach(), want, atol=1e-5, rtol=1e-5)
    out["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
    assert any(param.grad.abs().sum() > 0 for param in model.backbone.parameters())


def test_pretrainer_visible_token_set_and_images():
    model = pretrainer(PIXEL + ["targets.pixel.token_set=visible"]).train()
    image = clip_batch(t=1)
    mask = make_mask(2, 4, 3)  # image grid (1, 2, 2)
    out = model(image, mask)
    with torch.no_grad():
        _, preds = model.predict(image, mask)
        target = PixelTarget((TUBELET, PATCH, PATCH))(image.float().repeat(1, 1, TUBELET, 1, 1) / 255)
        want = ((preds["pixel"][~mask] - target[~mask]) ** 2).mean()
    torch.testing.assert_close(out["loss/pixel"].detach(), want, atol=1e-5, rtol=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_preview_pixel_target():
    model = pretrainer(PIXEL).eval()
    b, size = 3, 16
    clip = clip_batch(b=b)
    mask = make_mask(b, 8, 5, seed=2)
    image = model.preview(clip, mask)
    assert image.shape == (3, 3 * size, b * size)
    assert image.min() >= 0 and image.max() <= 1
    frames = clip[:, :, 0].float() / 255  # (B, 3, H, W)
    for i in range(b):
        cols = slice(i * size, (i + 1) * size)
        torch.testing.assert_close(image[:, :size, cols], frames[i])  # row 1: input
        keep = torch.ones(size, size)
        for token in torch.nonzero(mask[i]).flatten().tolist():
            if token < 4:  # first time slice of the (2, 2, 2) grid
                r, c = divmod(token, 2)
                keep[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = 0
        torch.testing.assert_close(image[:, size:2 * size, cols], frames[i] * keep)  # row 2: masked input
        recon = image[:, 2 * size:, cols]
        torch.testing.assert_close(recon * keep, frames[i] * keep)  # row 3: visible patches are the input
    assert model.preview(clip, mask, max_items=2).shape == (3, 3 * size, 2 * size)
    image_preview = model.preview(clip_batch(b=2, t=1), make_mask(2, 4, 3))
    assert image_preview.shape == (3, 3 * size, 2 * size)


def test_preview_hog_only_is_none():
    model = pretrainer(HOG).eval()
    assert model.preview(clip_batch(), make_mask(2, 8, 6)) is None
