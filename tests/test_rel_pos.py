"""The relative position bias (vmim.models.rel_pos) and its use in the ViT: index by hand, translation invariance,
table resizing, shared vs per-block tables, the visible-only gather, Block(queries) with a bias, and load_init."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from tests.conftest import make_mask
from vmim.config import ViTConfig
from vmim.convert.common import FILE_FORMAT, FILE_VERSION
from vmim.models.layers import Block
from vmim.models.loading import load_init
from vmim.models.registry import create_backbone
from vmim.models.rel_pos import RelativePositionBias, gather_present, relative_index, resize_table
from vmim.models.vit import vit_test


def test_index_by_hand_for_a_2x2_image():
    """Tokens (h, w) = 0:(0,0) 1:(0,1) 2:(1,0) 3:(1,1); table rows (dh + 1) * 3 + (dw + 1) for dh, dw in -1..1.
    Row i, column j is the offset pos(i) - pos(j): e.g. (1, 0) = (dh 0, dw +1) -> row 5, (2, 1) = (+1, -1) -> 6."""
    want = torch.tensor([[4, 3, 1, 0],
                         [5, 4, 2, 1],
                         [7, 6, 4, 3],
                         [8, 7, 5, 4]])
    assert torch.equal(relative_index((1, 2, 2)), want)


def test_index_by_hand_in_time_and_inside_a_larger_table():
    # two time steps, one spatial token: rows dt + 1
    assert torch.equal(relative_index((2, 1, 1)), torch.tensor([[1, 0], [2, 1]]))
    # a 1x2 grid read from the 2x2 grid's table (3x3 offsets): (0, 0) -> 4, (0, -1) -> 3, (0, +1) -> 5
    assert torch.equal(relative_index((1, 1, 2), (1, 2, 2)), torch.tensor([[4, 3], [5, 4]]))
    with pytest.raises(ValueError, match="does not fit"):
        relative_index((1, 3, 2), (1, 2, 2))


def test_bias_is_translation_invariant_and_reads_one_row_per_offset():
    torch.manual_seed(0)
    grid = (2, 3, 4)
    rpb = RelativePositionBias(3, grid)
    torch.nn.init.normal_(rpb.table)
    bias = rpb.bias(grid)
    n = 2 * 3 * 4
    assert bias.shape == (3, n, n)
    coords = list(itertools.product(range(2), range(3), range(4)))
    seen: dict[tuple[int, ...], torch.Tensor] = {}
    for i, j in itertools.product(range(n), repeat=2):
        offset = tuple(a - b for a, b in zip(coords[i], coords[j]))
        if offset in seen:
            assert torch.equal(bias[:, i, j], seen[offset]), offset
        seen[offset] = bias[:, i, j]
    assert len(seen) == rpb.table.shape[0] == 3 * 5 * 7  # every offset is used, each has its own row
    assert len({tuple(v.tolist()) for v in seen.values()}) == len(seen)


def test_smaller_grid_reads_the_same_offsets_and_larger_grid_resizes():
    torch.manual_seed(0)
    rpb = RelativePositionBias(2, (2, 4, 4))
    torch.nn.init.normal_(rpb.table)
    full, image = rpb.bias((2, 4, 4)), rpb.bias((1, 4, 4))
    torch.testing.assert_close(image, full[:, :16, :16])  # the t = 0 slice: same offsets, same values
    assert rpb.bias((1, 6, 5)).shape == (2, 30, 30)


def test_resize_keeps_a_constant_table_constant_and_the_same_size_unchanged():
    table = torch.full((3 * 5 * 5, 4), 0.7)
    for dst in [(2, 4, 4), (3, 3, 5), (1, 7, 7)]:
        out = resize_table(table, (2, 3, 3), dst)
        assert out.shape == ((2 * dst[0] - 1) * (2 * dst[1] - 1) * (2 * dst[2] - 1), 4)
        torch.testing.assert_close(out, torch.full_like(out, 0.7))
    torch.manual_seed(0)
    table = torch.randn(3 * 5 * 5, 4)
    assert torch.equal(resize_table(table, (2, 3, 3), (2, 3, 3)), table)
    with pytest.raises(ValueError, match="does not fit"):
        resize_table(table, (2, 3, 4), (2, 3, 3))


def test_shared_is_one_table_per_block_is_one_per_block():
    grid = (1, 4, 4)
    rows = 1 * 7 * 7
    counts = {}
    for kind in ("none", "shared", "per_block"):
        model = vit_test(patch_size=4, tubelet_size=1, pos_embed="none", rel_pos_bias=kind, video_grid=grid)
        tables = {n: p for n, p in model.named_parameters() if n.endswith("rel_pos.table")}
        counts[kind] = sum(p.numel() for p in tables.values())
        assert set(tables) <= set(model.no_weight_decay())
    assert counts == {"none": 0, "shared": rows * 2, "per_block": rows * 2 * 2}  # vit_test: 2 heads, 2 blocks


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero tables (they start at zero: no bias) so that the tests see them."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rel_pos.table"):
                p.normal_()
    return model.eval()


@pytest.mark.parametrize("kind", ["shared", "per_block"])
def test_dense_output_does_not_depend_on_masked_pixels(kind):
    torch.manual_seed(0)
    model = randomized(vit_test(patch_size=4, tubelet_size=1, dense=True, pos_embed="none", rel_pos_bias=kind,
                                layer_scale=0.1, video_grid=(1, 4, 4)))
    x = torch.randn(2, 3, 1, 16, 16)
    mask = make_mask(2, 16, 10, seed=3)
    pixels = mask.view(2, 1, 1, 4, 1, 4, 1).expand(2, 1, 1, 4, 4, 4, 4).reshape(2, 1, 1, 16, 16)
    y = torch.where(pixels, torch.randn_like(x), x)
    with torch.no_grad():
        a, b = model(x, mask).tokens, model(y, mask).tokens
        torch.testing.assert_close(a, b)
        assert not torch.allclose(model(x).tokens, model(y).tokens)  # the pixels matter when not masked


def test_visible_only_encoder_gathers_the_bias_of_present_tokens():
    """The visible-only ViT with a bias equals, per sample, its blocks run on the present tokens with the grid bias
    restricted to their rows and columns (and zero for the class token)."""
    torch.manual_seed(0)
    model = randomized(vit_test(patch_size=4, tubelet_size=1, rel_pos_bias="shared", cls_token=True,
                                video_grid=(1, 4, 4)))
    x = torch.randn(2, 3, 1, 16, 16)
    mask = make_mask(2, 16, 9, seed=4)
    with torch.no_grad():
        out = model(x, mask).tokens
        grid_bias = model.rel_pos.bias((1, 4, 4))
        for s in range(2):
            idx = torch.nonzero(~mask[s]).flatten()
            tokens, _ = model.embed(x[s:s + 1], mask[s:s + 1])
            bias = torch.zeros(2, len(idx) + 1, len(idx) + 1)
            bias[:, 1:, 1:] = grid_bias[:, idx][:, :, idx]
            for block in model.blocks:
                tokens = block(tokens, None, bias)
            torch.testing.assert_close(out[s], model.norm(tokens[0, 1:]))
        assert gather_present(grid_bias, ~mask).shape == (2, 2, 7, 7)


def test_block_with_queries_and_a_bias_is_the_full_block_at_the_last_rows():
    torch.manual_seed(0)
    block = Block(32, 4, layer_scale=0.1).eval()
    x = torch.randn(2, 10, 32)
    for bias in (torch.randn(4, 10, 10), torch.randn(2, 4, 10, 10)):
        out = block(x, queries=3, bias=bias)
        assert out.shape == (2, 3, 32)
        torch.testing.assert_close(out, block(x, bias=bias)[:, -3:])
        assert not torch.allclose(out, block(x, queries=3))


def save_backbone(path, cfg: ViTConfig, grid, model) -> None:
    """A ``vmim convert``-format file holding ``model``'s weights (what read_weights accepts)."""
    data = {"img_size": grid[1] * cfg.patch_size, "num_frames": 1, "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.save({"format": FILE_FORMAT, "version": FILE_VERSION, "model": dataclasses.asdict(cfg),
                "video_grid": list(grid), "state_dict": model.state_dict(), "data": data}, path)


SRC = ViTConfig(backbone="vit_test", patch_size=4, tubelet_size=1, dense=True, pos_embed="none",
                rel_pos_bias="shared", layer_scale=0.1)


@pytest.mark.parametrize("grid", [(1, 4, 4), (1, 6, 6)])
def test_load_init_copies_the_shared_table_into_every_block(tmp_path, grid):
    src = randomized(create_backbone(SRC, (1, 4, 4)))
    save_backbone(tmp_path / "w.pt", SRC, (1, 4, 4), src)
    cfg = dataclasses.replace(SRC, dense=False, rel_pos_bias="per_block", fc_norm=True)
    model = create_backbone(cfg, grid)
    report = load_init(model, tmp_path / "w.pt", cfg)
    want = resize_table(src.rel_pos.table.detach(), (1, 4, 4), grid)
    for block in model.blocks:
        torch.testing.assert_close(block.rel_pos.table.detach(), want)
    assert any("copied into each of the 2 blocks" in line for line in report)
    assert any("resized" in line for line in report) == (grid != (1, 4, 4))
    if grid == (1, 4, 4):  # same grid: the fine-tuning model's bias is the pretrained one, block for block
        torch.testing.assert_close(model.blocks[1].rel_pos.bias(grid), src.rel_pos.bias(grid))


def test_load_init_refuses_to_drop_the_tables_or_the_layer_scale(tmp_path):
    src = create_backbone(SRC, (1, 4, 4))
    save_backbone(tmp_path / "w.pt", SRC, (1, 4, 4), src)
    for change, key in [({"rel_pos_bias": "none"}, "model.rel_pos_bias"), ({"layer_scale": 0.0}, "model.layer_scale")]:
        cfg = dataclasses.replace(SRC, **change)
        with pytest.raises(ValueError, match=key):
            load_init(create_backbone(cfg, (1, 4, 4)), tmp_path / "w.pt", cfg)


def test_load_init_leaves_missing_tables_fresh(tmp_path):
    plain = dataclasses.replace(SRC, rel_pos_bias="none")
    save_backbone(tmp_path / "w.pt", plain, (1, 4, 4), create_backbone(plain, (1, 4, 4)))
    cfg = dataclasses.replace(SRC, rel_pos_bias="per_block")
    model = create_backbone(cfg, (1, 4, 4))
    report = load_init(model, tmp_path / "w.pt", cfg)
    assert any("left fresh" in line and "blocks.0.rel_pos.table" in line for line in report)
    assert all(torch.equal(b.rel_pos.table, torch.zeros_like(b.rel_pos.table)) for b in model.blocks)


@pytest.mark.parametrize("dense", [True, False])
def test_bias_and_layer_scale_add_no_counted_macs(dense):
    """vmim.models.flops counts a ViT with a relative position bias and layer scale as the plain one (an addition
    to the logits and an elementwise scale), and FlopCounterMode agrees exactly."""
    from vmim.models.flops import count_macs, module_macs

    shape = (2, 3, 1, 16, 16)
    mask = make_mask(2, 16, 12, seed=2)
    plain = vit_test(patch_size=4, tubelet_size=1, dense=dense).eval()
    model = randomized(vit_test(patch_size=4, tubelet_size=1, dense=dense, pos_embed="none", rel_pos_bias="shared",
                                layer_scale=0.1, video_grid=(1, 4, 4)))
    for m in (None, mask):
        n_masked = 0 if m is None else 12
        assert module_macs(model, shape, n_masked) == module_macs(plain, shape, n_masked)
        assert module_macs(model, shape, n_masked) == count_macs(model, torch.zeros(shape), m)
