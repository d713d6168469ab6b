"""Heads and the masked-modeling method: what each head builds and what each loss counts.

Token order everywhere is (t, h, w) row-major over the grid (T/t, H/p, W/p).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import clip_batch, make_mask
from vmim.config import load_config
from vmim.masking import Masks
from vmim.meta_arch import MaskedModeling, build_method
from vmim.models import DecoderHead, EncoderOutput, LinearHead
from vmim.models.pos_embed import sincos_3d
from vmim.targets import PixelTarget

PATCH, TUBELET = 8, 2
GRID = (2, 2, 2)  # 4 frames x 16 x 16 at 2 x 8 x 8 patches


# ----------------------------------------------------------------------------------------------------
# Decoder head
# ----------------------------------------------------------------------------------------------------


def scatter_decoder(head: DecoderHead, visible: torch.Tensor, mask: torch.Tensor, grid) -> torch.Tensor:
    """The MAE reference: visible tokens scattered over the full grid with a mask token at every masked position,
    the fixed table added, blocks over all N positions in grid order; predictions at the masked positions."""
    b, n = mask.shape
    x = head.embed(visible)
    full = head.mask_token.expand(b, n, head.dim).clone()
    full[~mask] = x.reshape(-1, head.dim)
    full = full + sincos_3d(grid, head.dim)
    for block in head.blocks:
        full = block(full)
    return head.head(head.norm(full))[mask].reshape(b, -1, head.head.out_features)


@pytest.mark.parametrize("depth", [0, 2])
def test_decoder_head_equals_the_full_grid_decoder_on_masked_tokens(depth):
    torch.manual_seed(0)
    head = DecoderHead(in_dim=16, out_dim=10, depth=depth, dim=32, heads=2).eval()
    grid = (2, 2, 3)
    mask = make_mask(3, 12, 8, seed=1)
    visible = torch.randn(3, 4, 16)
    with torch.no_grad():
        out = head(EncoderOutput(visible, ~mask, grid), mask)
        assert out.shape == (3, 8, 10)
        torch.testing.assert_close(out, scatter_decoder(head, visible, mask, grid), atol=1e-5, rtol=1e-5)


def test_decoder_head_builds_only_the_queried_positions():
    torch.manual_seed(0)
    head = DecoderHead(in_dim=16, out_dim=10, depth=1, dim=32, heads=2).eval()
    seen = []
    head.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    mask = make_mask(2, 12, 9)
    query = make_mask(2, 12, 5, seed=3)  # any positions, also visible ones
    out = head(EncoderOutput(torch.randn(2, 3, 16), ~mask, (2, 2, 3)), query)
    assert out.shape == (2, 5, 10) and seen == [3 + 5]


def test_decoder_head_depth0_is_positional():
    # Without blocks nothing mixes: each prediction is mask token + position, whatever the encoder says.
    torch.manual_seed(0)
    head = DecoderHead(in_dim=16, out_dim=8, depth=0, dim=32, heads=2).eval()
    mask = make_mask(2, 12, 8, seed=1)
    with torch.no_grad():
        a = head(EncoderOutput(torch.randn(2, 4, 16), ~mask, (2, 2, 3)), mask)
        b = head(EncoderOutput(torch.randn(2, 4, 16), ~mask, (2, 2, 3)), mask)
    torch.testing.assert_close(a, b)


def test_decoder_head_with_blocks_mixes_tokens():
    torch.manual_seed(0)
    head = DecoderHead(in_dim=16, out_dim=8, depth=1, dim=32, heads=2).eval()
    mask = make_mask(1, 12, 8, seed=1)
    visible = torch.randn(1, 4, 16)
    with torch.no_grad():
        base = head(EncoderOutput(visible, ~mask, (2, 2, 3)), mask)
        bumped = visible.clone()
        bumped[0, 0] += 1.0
        changed = (head(EncoderOutput(bumped, ~mask, (2, 2, 3)), mask) - base).abs().amax(dim=-1) > 1e-6
    assert changed.all()  # every prediction attends to the changed visible token


def test_linear_head_reads_the_encoders_own_tokens():
    torch.manual_seed(0)
    head = LinearHead(16, 4)
    mask = make_mask(2, 12, 5)
    tokens = torch.randn(2, 7, 16)
    visible_only = EncoderOutput(tokens, ~mask, (2, 2, 3))
    torch.testing.assert_close(head(visible_only, ~mask), head.proj(tokens))
    with pytest.raises(ValueError, match="did not encode"):
        head(visible_only, mask)
    dense = torch.randn(2, 12, 16)
    out = head(EncoderOutput(dense, None, (2, 2, 3)), mask)
    torch.testing.assert_close(out, head.proj(dense[mask].reshape(2, 5, 16)))


# ----------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------

BASE = ["model.backbone=vit_test", f"model.patch_size={PATCH}", f"model.tubelet_size={TUBELET}",
        "data.img_size=16", "data.num_frames=4", "data.datasets.digits_images.weight=1"]
PIXEL = ["targets.pixel.weight=1.0", "targets.pixel.head.depth=1", "targets.pixel.head.dim=32",
         "targets.pixel.head.heads=2"]
HOG = ["targets.hog.weight=0.5", "targets.hog.cell_size=4", "targets.hog.head.depth=0",
       "targets.hog.head.dim=32", "targets.hog.head.heads=2"]


def method(*overrides: list[str]) -> MaskedModeling:
    torch.manual_seed(0)
    return build_method(load_config(None, BASE + [o for group in overrides for o in group]))


def pixel_target(clip: torch.Tensor) -> torch.Tensor:
    """The default per-channel normalized pixels of a uint8 clip, images repeated to the tubelet."""
    x = clip.float() / 255
    return PixelTarget((TUBELET, PATCH, PATCH), norm="per_channel")(x.expand(-1, -1, max(x.shape[2], TUBELET), -1, -1))


@pytest.mark.parametrize("backbone", ["vit_test", "vit_tiny"])
def test_losses_by_hand_and_gradients(backbone):
    model = method(PIXEL, HOG, [f"model.backbone={backbone}"]).train()
    clip, mask = clip_batch(), make_mask(2, 8, 6)
    out = model({"clip": clip, "masks": Masks(mask)})
    assert set(out) == {"loss", "loss/pixel", "loss/hog"}
    torch.testing.assert_close(out["loss"], 1.0 * out["loss/pixel"] + 0.5 * out["loss/hog"])
    with torch.no_grad():  # MSE over the masked tokens between the prediction and the normalized pixels
        _, predictions = model.predict({"clip": clip, "masks": Masks(mask)})
        query, weight, pred = predictions["pixel"]
        assert torch.equal(query, mask) and pred.shape == (2, 6, 2 * 8 * 8 * 3) and weight.eq(1).all()
        want = ((pred - pixel_target(clip)[mask].reshape(2, 6, -1)) ** 2).mean()
    torch.testing.assert_close(out["loss/pixel"].detach(), want, atol=1e-5, rtol=1e-5)
    out["loss"].backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_visible_token_set_with_a_linear_head_on_images():
    model = method(["targets.pixel.token_set=visible", "targets.pixel.head.kind=linear"]).train()
    image, mask = clip_batch(t=1), make_mask(2, 4, 3)  # image grid (1, 2, 2)
    out = model({"clip": image, "masks": Masks(mask)})
    with torch.no_grad():
        _, encoded = model.encode(image, mask)
        pred = model.heads["pixel"].proj(encoded.tokens)  # the encoder's own visible tokens, no decoder
        want = ((pred - pixel_target(image)[~mask].reshape(2, 1, -1)) ** 2).mean()
    torch.testing.assert_close(out["loss/pixel"].detach(), want, atol=1e-5, rtol=1e-5)


def test_a_head_reads_the_inner_block_it_names():
    """MR-MAE-style: a linear head on the visible tokens of block -2 (raw, before the final norm), next to the pixel
    decoder on the encoder output; the loss is the head applied to exactly that block's tokens."""
    model = method(PIXEL, ["targets.mimic.kind=hog", "targets.mimic.token_set=visible",
                           "targets.mimic.head.kind=linear", "targets.mimic.head.block=-2"]).train()
    assert model.heads["mimic"].proj.in_features == model.backbone.dims[-2]
    clip, mask = clip_batch(), make_mask(2, 8, 6)
    out = model({"clip": clip, "masks": Masks(mask)})
    with torch.no_grad():
        x = model.normalizer(model.normalizer.pixels(clip))
        _, blocks = model.backbone.forward_intermediates(x, mask, indices=[-2], norm=False)
        target = model.targets["mimic"](model.normalizer.pixels(clip))[~mask].reshape(2, 2, -1)
        want = ((model.heads["mimic"].proj(blocks[0]) - target) ** 2).mean()
    torch.testing.assert_close(out["loss/mimic"].detach(), want, atol=1e-5, rtol=1e-5)
    out["loss"].backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None
    with pytest.raises(ValueError, match=r"targets\.mimic\.head\.block': 7 is not a block of the 2-block vit_test"):
        method(["targets.mimic.kind=hog", "targets.mimic.head.kind=linear", "targets.mimic.head.block=7",
                "model.dense=true"])


@pytest.mark.parametrize("loss, fn", [
    ("l1", lambda p, t: (p - t).abs().mean()),
    ("smooth_l1", lambda p, t: torch.nn.functional.smooth_l1_loss(p, t, beta=2.0)),
    ("cosine", lambda p, t: (1 - torch.nn.functional.cosine_similarity(p, t, dim=-1, eps=1e-6)).mean()),
])
def test_configured_loss_is_used(loss, fn):
    extra = [f"targets.pixel.loss.kind={loss}"] + (["targets.pixel.loss.beta=2"] if loss == "smooth_l1" else [])
    model = method(PIXEL, extra)
    clip, mask = clip_batch(), make_mask(2, 8, 6)
    with torch.no_grad():
        out = model({"clip": clip, "masks": Masks(mask)})
        _, predictions = model.predict({"clip": clip, "masks": Masks(mask)})
        want = fn(predictions["pixel"][2], pixel_target(clip)[mask].reshape(2, 6, -1))
    torch.testing.assert_close(out["loss/pixel"], want, atol=1e-5, rtol=1e-5)


def test_features_are_the_unmasked_encoders_mean():
    model = method(PIXEL).eval()
    clip = clip_batch()
    with torch.no_grad():
        tokens = model.backbone((clip.float() / 255 - model.normalizer.mean) / model.normalizer.std).tokens
    torch.testing.assert_close(model.features(clip), tokens.mean(dim=1))


def test_preview_pixel_target():
    model = method(PIXEL).eval()
    b, size = 3, 16
    clip, mask = clip_batch(b=b), make_mask(b, 8, 5, seed=2)
    image = model.preview({"clip": clip, "masks": Masks(mask)})
    assert image.shape == (3, 3 * size, b * size) and image.min() >= 0 and image.max() <= 1
    frames = clip[:, :, 0].float() / 255
    for i in range(b):
        cols = slice(i * size, (i + 1) * size)
        torch.testing.assert_close(image[:, :size, cols], frames[i])  # row 1: input
        keep = torch.ones(size, size)
        for token in torch.nonzero(mask[i]).flatten().tolist():
            if token < 4:  # first time slice of the (2, 2, 2) grid
                r, c = divmod(token, 2)
                keep[r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH] = 0
        torch.testing.assert_close(image[:, size:2 * size, cols], frames[i] * keep)  # row 2: masked input
        torch.testing.assert_close(image[:, 2 * size:, cols] * keep, frames[i] * keep)  # row 3: visible = input
    image_preview = model.preview({"clip": clip_batch(b=2, t=1), "masks": Masks(make_mask(2, 4, 3))})
    assert image_preview.shape == (3, 3 * size, 2 * size)


def test_preview_hog_only_is_none():
    model = method(HOG).eval()
    assert model.preview({"clip": clip_batch(), "masks": Masks(make_mask(2, 8, 6))}) is None
