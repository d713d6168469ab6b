"""FastMIM (configs/methods/fastmim_vit_b.yaml): the pixel-space mask token, the decoder that runs over a dense
encoder's own tokens, and the method, shrunk, pretraining on the built-in digits with a falling loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import make_mask, pretrain_with_falling_loss
from vmim.models import EncoderOutput
from vmim.models.heads import DecoderHead
from vmim.models.pos_embed import sincos_3d
from vmim.models.vit import VisionTransformer

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "configs/methods/fastmim_vit_b.yaml"


def pixel_masked_vit() -> VisionTransformer:
    torch.manual_seed(0)
    vit = VisionTransformer(32, 2, 2, patch_size=4, tubelet_size=2, dense=True, mask_in="pixels").eval()
    with torch.no_grad():
        vit.mask_token.copy_(torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1, 1))
    return vit


def test_pixel_mask_token_is_a_colour_painted_over_the_masked_tubelets():
    """Independent answer: paint the masked tubelets by hand with the mask colour and encode without a mask."""
    vit = pixel_masked_vit()
    x = torch.randn(2, 3, 4, 8, 8)  # grid (2, 2, 2): token (n, i, j) covers frames 2n..2n+1, rows/cols 4i.., 4j..
    mask = make_mask(2, 8, 3, seed=1)
    painted = x.clone()
    for b in range(2):
        for token in torch.nonzero(mask[b]).flatten().tolist():
            n, i, j = token // 4, token // 2 % 2, token % 2
            painted[b, :, 2 * n:2 * n + 2, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = vit.mask_token.view(3, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(vit(x, mask).tokens, vit(painted).tokens)
        changed = x + 10 * mask.view(2, 1, 2, 1, 2, 1, 2, 1).float().expand(2, 3, 2, 2, 2, 4, 2, 4).reshape(x.shape)
        torch.testing.assert_close(vit(changed, mask).tokens, vit(x, mask).tokens)  # masked pixels reach nothing


def test_pixel_mask_token_on_an_image_covers_its_one_frame():
    vit = pixel_masked_vit()
    x = torch.randn(2, 3, 1, 8, 8)
    mask = make_mask(2, 4, 2, seed=2)
    painted, changed = x.clone(), x.clone()
    for b in range(2):
        for token in torch.nonzero(mask[b]).flatten().tolist():
            i, j = token // 2, token % 2
            painted[b, :, 0, 4 * i:4 * i + 4, 4 * j:4 * j + 4] = vit.mask_token.view(3, 1, 1)
            changed[b, :, 0, 4 * i:4 * i + 4, 4 * j:4 * j + 4] += 10
    with torch.no_grad():
        out = vit(x, mask).tokens
        assert out.shape == (2, 4, 32)
        torch.testing.assert_close(out, vit(painted).tokens)
        torch.testing.assert_close(vit(changed, mask).tokens, out)


def test_dense_decoder_runs_over_the_encoder_tokens_and_reads_the_queries():
    """Independent answer: embedding + sin-cos positions, every block over the N tokens, norm and head, then the
    query rows; no tokens appended and no mask token of its own (a parameter without gradient would stop DDP)."""
    torch.manual_seed(0)
    head = DecoderHead(in_dim=16, out_dim=10, depth=2, dim=32, heads=2, dense=True).train()
    assert head.mask_token is None and "mask_token" not in dict(head.named_parameters())
    grid = (2, 2, 3)
    tokens = torch.randn(3, 12, 16)
    query = make_mask(3, 12, 5, seed=4)
    out = head(EncoderOutput(tokens, None, grid), query)
    x = head.embed(tokens) + sincos_3d(grid, 32)
    for block in head.blocks:
        x = block(x)
    torch.testing.assert_close(out, head.head(head.norm(x))[query].reshape(3, 5, 10))
    out.square().sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    with pytest.raises(ValueError, match="a token at every position"):
        head(EncoderOutput(tokens[:, :8], ~make_mask(3, 12, 4), grid), query)


@pytest.mark.slow
def test_fastmim_pretrains_on_builtin_digits_with_a_falling_loss(tmp_path):
    pretrain_with_falling_loss(METHOD, tmp_path, "targets.hog.cell_size=4", "targets.hog.head.dim=32",
                               "targets.hog.head.heads=2")
