"""ViT backbone and position embeddings: sizes, shapes, token bookkeeping and gradients (registry-wide contracts
are in test_contracts.py; heads and the method in test_method.py).

Token order everywhere is (t, h, w) row-major over the grid (T/t, H/p, W/p): token (n, i, j) covers frames
n*t .. n*t + t - 1, rows i*p .. i*p + p - 1 and columns j*p .. j*p + p - 1.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import make_mask
from vmim import config
from vmim.models import BACKBONES, VIT_SIZES, create_backbone
from vmim.models.layers import Block
from vmim.models.pos_embed import PositionEmbedding, sincos_1d, sincos_3d, sincos_flat
from vmim.models.vit import PatchEmbed3d

FORWARD_SIZES = ["vit_test", "vit_tiny"]
PATCH, TUBELET = 8, 2


def token_region(token: int, grid: tuple[int, int, int], t: int = TUBELET, p: int = PATCH):
    """Index into (B, C, T, H, W) selecting the pixels of a token."""
    _, gh, gw = grid
    n, rest = divmod(token, gh * gw)
    i, j = divmod(rest, gw)
    return (slice(None), slice(None), slice(n * t, n * t + t), slice(i * p, i * p + p), slice(j * p, j * p + p))


def vit(name: str, patch_size: int = 16, tubelet_size: int = 2, video_grid=None, **kwargs) -> nn.Module:
    """A registered ViT built through the registry from its config dataclass."""
    cfg = config.ViTConfig(backbone=name, patch_size=patch_size, tubelet_size=tubelet_size, **kwargs)
    return create_backbone(cfg, video_grid)


@pytest.fixture(scope="module", params=FORWARD_SIZES)
def backbone(request) -> nn.Module:
    torch.manual_seed(0)
    return vit(request.param, patch_size=PATCH, tubelet_size=TUBELET).eval()


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
    model = vit(name, patch_size=16, tubelet_size=2)
    assert model.embed_dim == size.embed_dim and len(model.blocks) == size.depth
    assert numel(model) == analytic_params(size.embed_dim, size.depth)
    assert numel(vit(name, patch_size=8, tubelet_size=1)) == analytic_params(
        size.embed_dim, size.depth, patch=8, tubelet=1)
    # a dense ViT adds its mask token, a learned position table its (N, D) rows
    assert numel(vit(name, dense=True)) == analytic_params(size.embed_dim, size.depth) + size.embed_dim
    learned = vit(name, pos_embed="learned", video_grid=(8, 14, 14))
    assert numel(learned) == analytic_params(size.embed_dim, size.depth) + 8 * 14 * 14 * size.embed_dim


def test_backbone_builds_on_meta_device():
    with torch.device("meta"):
        model = vit("vit_huge")
    assert numel(model) == analytic_params(1280, 32)


def test_unknown_backbone_lists_registered_names():
    with pytest.raises(KeyError) as info:
        create_backbone(config.ViTConfig(backbone="vit_nope"))
    message = str(info.value)
    assert "vit_nope" in message
    for name in VIT_SIZES:
        assert name in message


def test_every_vit_size_is_registered():
    assert set(VIT_SIZES) <= set(BACKBONES)


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
        assert out.tokens.shape == (shape[0], n, backbone.embed_dim) and out.present is None and out.grid == grid
        assert torch.isfinite(out.tokens).all()
        n_masked = n // 2
        mask = make_mask(shape[0], n, n_masked)
        masked = backbone(x, mask)
        assert masked.tokens.shape == (shape[0], n - n_masked, backbone.embed_dim)
        assert torch.equal(masked.present, ~mask)
        torch.testing.assert_close(backbone.forward_features(x), out.tokens.mean(dim=1))  # avg pool, per-token norm


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
        torch.testing.assert_close(backbone(image).tokens, backbone(clip).tokens, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(backbone(image, mask).tokens, backbone(clip, mask).tokens, atol=1e-6, rtol=1e-6)


def test_masked_pixels_do_not_change_output(backbone):
    grid = (2, 2, 3)
    x = torch.randn(2, 3, 4, 16, 24)
    mask = make_mask(2, 12, 8)
    with torch.no_grad():
        out = backbone(x, mask).tokens
        y = x.clone()
        for b in range(2):
            for token in torch.nonzero(mask[b]).flatten().tolist():
                y[b:b + 1][token_region(token, grid)] = torch.randn(1, 3, TUBELET, PATCH, PATCH) * 10
        torch.testing.assert_close(backbone(y, mask).tokens, out, atol=1e-6, rtol=1e-6)
        # ... while a visible token's pixels do matter (for every token, through attention)
        visible = torch.nonzero(~mask[0]).flatten()[0].item()
        z = x.clone()
        z[0:1][token_region(visible, grid)] += 1.0
        changed = backbone(z, mask).tokens
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
        full = tokenwise(x).tokens
        masked = tokenwise(x, mask).tokens
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
            torch.testing.assert_close(backbone(x, mask).tokens[b], backbone.norm(seq)[0], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Training-mode behaviour of the backbone
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORWARD_SIZES)
def test_grad_checkpointing_parity(name):
    torch.manual_seed(0)
    plain = vit(name, patch_size=PATCH, tubelet_size=TUBELET)
    ckpt = vit(name, patch_size=PATCH, tubelet_size=TUBELET, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    plain.train(), ckpt.train()
    x = torch.randn(2, 3, 4, 16, 24)
    mask = make_mask(2, 12, 6)
    weight = torch.randn(2, 6, plain.embed_dim)
    outs = []
    for model in (plain, ckpt):
        out = model(x, mask).tokens
        (out * weight).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=1e-6)
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert b.grad is not None, name
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_drop_path_deterministic_in_eval_random_in_train():
    torch.manual_seed(0)
    model = vit("vit_test", patch_size=PATCH, tubelet_size=TUBELET, drop_path=0.5)
    x = torch.randn(4, 3, 4, 16, 24)
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(x).tokens
        torch.manual_seed(2)
        b = model(x).tokens
        assert torch.equal(a, b)
        model.train()
        torch.manual_seed(1)
        c = model(x).tokens
        torch.manual_seed(2)
        d = model(x).tokens
    assert not torch.allclose(c, d)  # stochastic depth is active in training (last block rate 0.5)




# ----------------------------------------------------------------------------------------------------
# Dense ViT, position embedding kinds, intermediates
# ----------------------------------------------------------------------------------------------------


def test_dense_vit_replaces_masked_tokens_by_the_mask_token():
    torch.manual_seed(0)
    model = vit("vit_test", patch_size=PATCH, tubelet_size=TUBELET, dense=True).eval()
    x = torch.randn(2, 3, 4, 16, 24)
    mask = make_mask(2, 12, 5, seed=4)
    with torch.no_grad():
        out = model(x, mask)
        assert out.tokens.shape == (2, 12, model.embed_dim) and out.present is None
        # what the encoder saw at a masked position is the mask token + position: the pixels there do not matter
        y = x.clone()
        for token in torch.nonzero(mask[0]).flatten().tolist():
            y[0:1][token_region(token, (2, 2, 3))] = 100.0
        torch.testing.assert_close(model(y, mask).tokens, out.tokens, atol=1e-5, rtol=1e-5)
        embedded, present = model.embed(x, mask)
        want = model.mask_token[0, 0] + model.pos_embed((2, 2, 3), x.device)
        torch.testing.assert_close(embedded[mask], want.expand(2, 12, -1)[mask])
        assert present is None
        assert not torch.allclose(model(x).tokens, out.tokens)  # without a mask every patch is seen


def test_sincos_flat_is_videomae_table_by_hand():
    dim = 6
    table = sincos_flat((2, 1, 2), dim)  # 4 positions
    for pos in range(4):
        want = [math.sin(pos / 10000 ** (2 * (j // 2) / dim)) if j % 2 == 0 else
                math.cos(pos / 10000 ** (2 * (j // 2) / dim)) for j in range(dim)]
        torch.testing.assert_close(table[pos].double(), torch.tensor(want, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.equal(sincos_flat((1, 3, 3), 8), sincos_flat((4, 3, 3), 8)[:9])  # an image is the first slice


def test_learned_position_table_for_its_grid_and_first_slice():
    torch.manual_seed(0)
    pos = PositionEmbedding("learned", 16, video_grid=(2, 2, 3))
    assert pos.table.shape == (12, 16) and pos.table.requires_grad
    assert torch.equal(pos((2, 2, 3), torch.device("cpu")), pos.table)
    assert torch.equal(pos((1, 2, 3), torch.device("cpu")), pos.table[:6])
    with pytest.raises(ValueError, match="time slices"):
        pos((3, 2, 3), torch.device("cpu"))
    with pytest.raises(ValueError, match="needs"):
        PositionEmbedding("learned", 16)


def test_learned_position_table_is_resampled_for_another_resolution():
    """Progressive resolution: another spatial size reads the table resampled per time slice, bicubic (a constant
    table stays constant; by hand: F.interpolate of each slice), and the gradient reaches the table."""
    torch.manual_seed(0)
    pos = PositionEmbedding("learned", 8, video_grid=(2, 4, 4))
    out = pos((2, 3, 3), torch.device("cpu"))
    slices = pos.table.detach().reshape(2, 4, 4, 8).permute(0, 3, 1, 2)
    by_hand = F.interpolate(slices, size=(3, 3), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(out.detach(), by_hand.permute(0, 2, 3, 1).reshape(18, 8))
    torch.testing.assert_close(pos((1, 3, 3), torch.device("cpu")).detach(), out[:9].detach())
    out.sum().backward()
    assert pos.table.grad is not None and pos.table.grad.abs().sum() > 0
    with torch.no_grad():
        pos.table.fill_(0.25)
    torch.testing.assert_close(pos((2, 6, 6), torch.device("cpu")), torch.full((72, 8), 0.25))


@pytest.mark.parametrize("kind", ["sincos_3d", "sincos_1d", "learned"])
def test_backbone_adds_its_position_embedding(kind):
    torch.manual_seed(0)
    model = vit("vit_test", patch_size=PATCH, tubelet_size=TUBELET, pos_embed=kind, video_grid=(2, 2, 3)).eval()
    x = torch.randn(1, 3, 4, 16, 24)
    tokens, _ = model.embed(x, None)
    want = {"sincos_3d": lambda: sincos_3d((2, 2, 3), 64), "sincos_1d": lambda: sincos_flat((2, 2, 3), 64),
            "learned": lambda: model.pos_embed.table}[kind]()
    torch.testing.assert_close(tokens[0], model.patch_embed(x)[0] + want)


def test_forward_intermediates_are_the_blocks_outputs():
    torch.manual_seed(0)
    model = vit("vit_test", patch_size=PATCH, tubelet_size=TUBELET).eval()
    x = torch.randn(2, 3, 4, 16, 24)
    mask = make_mask(2, 12, 6)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, mask)
        assert len(inter) == model.depth and all(t.shape == (2, 6, 64) for t in inter)
        tokens, _ = model.embed(x, mask)
        first = model.blocks[0](tokens)
        torch.testing.assert_close(inter[0], first)
        torch.testing.assert_close(model.norm(inter[-1]), final.tokens)
        torch.testing.assert_close(final.tokens, model(x, mask).tokens)
        _, last = model.forward_intermediates(x, mask, indices=1, norm=True)
        assert len(last) == 1
        torch.testing.assert_close(last[0], final.tokens)
        _, chosen = model.forward_intermediates(x, mask, indices=[-2])
        torch.testing.assert_close(chosen[0], inter[0])


@pytest.mark.parametrize("frames", [4, 1])
def test_visible_only_patch_embedding_is_the_conv_at_the_kept_tokens(frames):
    """Only the kept tubelets are embedded (a linear layer on them); the independent answer is the Conv3d over every
    token, then the kept rows. Images (one frame) are repeated to the tubelet first in both."""
    torch.manual_seed(0)
    embed = PatchEmbed3d(4, 2, 3, 32)
    x = torch.randn(2, 3, frames, 16, 16)
    n = math.prod(embed.grid(x.shape))
    keep = torch.rand(2, n).argsort(dim=1) < n // 4  # n/4 kept per sample, at different positions
    full = embed.proj(x.expand(-1, -1, max(frames, 2), -1, -1)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(embed(x, keep), full[keep].reshape(2, n // 4, 32))
    torch.testing.assert_close(embed(x), full)


def test_block_with_queries_is_the_full_block_at_the_last_rows():
    torch.manual_seed(0)
    block = Block(32, 4).eval()
    x = torch.randn(2, 10, 32)
    out = block(x, queries=3)
    assert out.shape == (2, 3, 32)
    torch.testing.assert_close(out, block(x)[:, -3:])
