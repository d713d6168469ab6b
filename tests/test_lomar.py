"""LoMaR (configs/methods/lomar_vit_b.yaml): local windows drawn per sample, the exact masked count per window, an
encoder that runs each window as its own sequence (nothing outside a window reaches its tokens; the same as encoding
the window's crop on its own), its FLOP count, its config errors, and the method, shrunk, pretraining on the built-in
digits with a falling loss and starting a whole-image fine-tuning backbone."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import pretrain_with_falling_loss
from vmim.config import ConfigError, load_config
from vmim.masking import Masks, WindowedMask, build_mask_generator, build_mask_generators, draw_masks, window_mask
from vmim.meta_arch import build_method
from vmim.models.flops import count_macs, module_macs
from vmim.models.vit import VisionTransformer

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "configs/methods/lomar_vit_b.yaml"


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def window_boxes(windows: np.ndarray, grid: tuple[int, int, int]) -> list[tuple[tuple[int, int], ...]]:
    """Each window's (start, stop) per axis, after checking that its indices are exactly that box, row-major."""
    boxes = []
    for window in windows:
        coords = np.stack(np.unravel_index(window.ravel(), grid))  # (3, w)
        box = tuple((int(c.min()), int(c.max()) + 1) for c in coords)
        cells = np.arange(math.prod(grid)).reshape(grid)
        expected = cells[box[0][0]:box[0][1], box[1][0]:box[1][1], box[2][0]:box[2][1]]
        np.testing.assert_array_equal(window, expected)  # a full box, in (t, h, w) row-major order
        boxes.append(box)
    return boxes


@pytest.mark.parametrize("grid, frames, shape", [
    ((1, 14, 14), 0, (1, 7, 7)),   # images: LoMaR's 7x7 windows of the 14x14 grid
    ((8, 14, 14), 0, (8, 7, 7)),   # clips: space-time tubes over the whole clip
    ((8, 14, 14), 2, (2, 7, 7)),   # or t tokens in time
])
def test_windows_lie_inside_the_grid_are_distinct_and_differ_across_samples(grid, frames, shape):
    origins = []
    for sample in range(16):
        drawn = window_mask(grid, 0.8, rng(sample), num_windows=4, window_size=7, window_frames=frames)
        assert drawn.windows.shape == (4, *shape)
        boxes = window_boxes(drawn.windows, grid)
        assert all(0 <= lo < hi <= g for box in boxes for (lo, hi), g in zip(box, grid))
        tops, lefts = [b[1][0] for b in boxes], [b[2][0] for b in boxes]
        assert len(set(tops)) == 4 and len(set(lefts)) == 4, "distinct offsets per axis, as the reference's randperm"
        origins.append(tuple(b[0][0] for b in boxes) + tuple(tops) + tuple(lefts))
    # the reference shares one draw across the batch (and gives an image one window 4 times): here every sample of a
    # batch has its own windows
    assert len(set(origins)) == 16


def test_window_offsets_are_uniform_over_the_grid():
    """Tops are distinct draws from 0..H'-k: each offset of a 14-token side and 7-token window (8 choices) is a top
    with probability 4/8."""
    tops = np.zeros(8)
    n = 2000
    for seed in range(n):
        for box in window_boxes(window_mask((1, 14, 14), 0.8, rng(seed)).windows, (1, 14, 14)):
            tops[box[1][0]] += 1
    np.testing.assert_allclose(tops / n, 0.5, atol=0.05)


@pytest.mark.parametrize("grid, ratio, per_window", [
    ((1, 14, 14), 0.8, 39),         # int(49 x 0.8) = 39 masked, 10 visible, as the reference
    ((8, 14, 14), 0.75, 294),       # 392-token tube, 3/4 of it
    ((1, 5, 5), 0.8, 20),           # a grid smaller than the window: one 5x5 window, repeated offsets
])
def test_masked_count_is_exact_in_every_window(grid, ratio, per_window):
    gen = build_mask_generator(dataclasses.replace(
        load_config(METHOD, ["data.datasets.digits_images.weight=1"]).masking, ratio_image=ratio, ratio_video=ratio))
    assert gen.num_masked(grid) == 4 * per_window
    patterns = set()
    for seed in range(20):
        drawn = gen(grid, rng(seed))
        assert isinstance(drawn, WindowedMask)
        per = drawn.mask.reshape(4, -1).sum(1)
        assert (per == per_window).all(), per
        patterns.update(w.tobytes() for w in drawn.mask.reshape(4, -1))
    assert len(patterns) > 70, "each window draws its own mask"


def lomar_vit(seed: int = 0, cls_token: bool = False) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(32, 2, 2, patch_size=4, tubelet_size=2, dense=True, pos_embed="none",
                            rel_pos_bias="per_block", video_grid=(2, 6, 6), cls_token=cls_token).eval()
    with torch.no_grad():  # a non-trivial bias (its init is zero)
        for block in vit.blocks:
            block.rel_pos.table.normal_()
    return vit


def window_batch(vit: VisionTransformer, x: torch.Tensor, ratio: float = 0.5, size: int = 3, seed: int = 0):
    grid = vit.grid(x.shape)
    gen = build_mask_generator(dataclasses.replace(
        load_config(METHOD, ["data.datasets.digits_images.weight=1"]).masking, ratio_image=ratio, ratio_video=ratio,
        window_size=size))
    drawn = [gen(grid, rng(seed + b)) for b in range(x.shape[0])]
    mask = torch.from_numpy(np.stack([d.mask for d in drawn]))
    windows = torch.from_numpy(np.stack([d.windows for d in drawn]))
    return mask, windows


@pytest.mark.parametrize("frames, cls_token", [(4, False), (1, False), (4, True)])
def test_window_tokens_equal_the_window_crop_encoded_on_its_own(frames, cls_token):
    """Independent answer: crop each window's pixels out of the clip and encode the crop alone with that window's
    mask: a windowed encoder is exactly that, window by window (relative positions read the same offsets)."""
    vit = lomar_vit(cls_token=cls_token)
    x = torch.randn(2, 3, frames, 24, 24)  # grid (T', 6, 6) of 4 px tokens
    mask, windows = window_batch(vit, x)
    with torch.no_grad():
        out = vit(x, mask, windows=windows)
        assert out.tokens.shape == (2, 4 * windows[0, 0].numel(), 32)
        torch.testing.assert_close(out.index, windows.flatten(1))
        per_window = out.tokens.reshape(2, 4, -1, 32)
        w = windows[0, 0].numel()
        for b in range(2):
            for k in range(4):
                t, top, left = np.unravel_index(int(windows[b, k, 0, 0, 0]), vit.grid(x.shape))
                wt = windows.shape[2]
                crop = x[b:b + 1, :, 2 * t:2 * (t + wt) if frames > 1 else 1, 4 * top:4 * top + 12,
                         4 * left:4 * left + 12]
                alone = vit(crop, mask[b:b + 1, k * w:(k + 1) * w]).tokens
                torch.testing.assert_close(per_window[b, k], alone[0], rtol=1e-5, atol=1e-5)


def test_nothing_outside_a_window_and_no_masked_pixel_reaches_its_tokens():
    """Changing the pixels of every cell outside window k, or of the cells masked in it (and visible in no other
    place of it), leaves window k's tokens as they were; changing one of its visible cells moves them."""
    vit = lomar_vit()
    x = torch.randn(1, 3, 4, 24, 24)
    mask, windows = window_batch(vit, x, seed=3)
    grid = vit.grid(x.shape)
    w = windows[0, 0].numel()

    def window_tokens(cells: torch.Tensor, k: int) -> torch.Tensor:
        region = torch.zeros(math.prod(grid))
        region[cells] = 50.0  # a large change to these cells' pixels
        px = region.view(1, 1, *grid).repeat_interleave(2, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
        with torch.no_grad():
            return vit(x + px, mask, windows=windows).tokens.reshape(4, w, 32)[k]

    nothing = torch.zeros(0, dtype=torch.long)
    for k in range(4):
        cells, hidden = windows[0, k].flatten(), mask[0, k * w:(k + 1) * w]
        outside = torch.ones(math.prod(grid), dtype=torch.bool)
        outside[cells] = False
        base = window_tokens(nothing, k)
        torch.testing.assert_close(window_tokens(outside.nonzero().flatten(), k), base, rtol=0, atol=1e-5)
        torch.testing.assert_close(window_tokens(cells[hidden], k), base, rtol=0, atol=1e-5)
        assert not torch.allclose(window_tokens(cells[~hidden][:1], k), base, atol=1e-3)


def test_windowed_flop_count_matches_the_counted_forward():
    """The analytic count (patch embedding of K x w tokens, blocks over B x K sequences) against FlopCounterMode on
    the real forward."""
    vit = lomar_vit(cls_token=True)
    x = torch.randn(2, 3, 4, 24, 24)
    mask, windows = window_batch(vit, x)
    w = windows[0, 0].numel()
    counted = count_macs(vit, x, mask, windows=windows)
    assert module_macs(vit, tuple(x.shape), int(mask[0].sum()), windows=(4, w)) == counted


def test_window_masking_config_errors_name_the_key():
    base = ["data.datasets.digits_images.weight=1"]
    with pytest.raises(ConfigError, match="model.dense"):
        load_config(METHOD, [*base, "model.dense=false"])
    with pytest.raises(ConfigError, match="model.dense"):
        load_config(METHOD, [*base, "model.backbone=mvitv2_test", "~model.patch_size", "~model.tubelet_size",
                             "~model.pos_embed", "~model.rel_pos_bias"])
    with pytest.raises(ConfigError, match="masking.window_size"):
        load_config(METHOD, [*base, "masking.window_size=15"])  # the 224 px grid is 14 tokens wide
    with pytest.raises(ConfigError, match="model.rel_pos_bias"):
        load_config(METHOD, [*base, "model.rel_pos_bias=none"])
    with pytest.raises(ConfigError, match="decoder_masking.kind"):
        load_config(METHOD, [*base, "decoder_masking.kind=window"])


def test_method_gathers_targets_at_window_tokens_and_previews():
    """The loss compares each window token's prediction with the target of the grid cell it stands for: with the
    head's output forced to the clean targets gathered by hand, the loss is zero; the preview leaves cells outside
    every window black."""
    cfg = load_config(METHOD, [
        "model.backbone=vit_test", "model.patch_size=4", "data.img_size=24", "masking.window_size=3",
        "data.datasets.digits_images.weight=1"])
    torch.manual_seed(0)
    method = build_method(cfg).eval()
    clip = torch.randint(0, 256, (2, 3, 1, 24, 24), dtype=torch.uint8)
    grid = method.backbone.grid(clip.shape)
    gens = build_mask_generators(cfg)
    drawn = [draw_masks(gens, grid, rng(b)) for b in range(2)]
    masks = Masks.stack(drawn)
    assert masks.windows is not None and masks.decoder is None
    batch = {"clip": clip, "masks": masks}
    pixels = method.normalizer.pixels(clip)
    full = method.targets["pixel"](pixels)  # (B, N, D) per grid cell
    slots = masks.windows.flatten(1)
    by_hand = torch.stack([full[b, slots[b][masks.encoder[b]]] for b in range(2)])
    with torch.no_grad():
        _, predictions = method.predict(batch)
        assert predictions["pixel"][2].shape == by_hand.shape
        method.heads["pixel"].forward = lambda encoded, query: by_hand
        assert float(method(batch)["loss"]) == pytest.approx(0.0, abs=1e-10)
        image = method.preview(batch)
    assert image is not None and image.shape == (3, 3 * 24, 2 * 24)
    covered = torch.zeros(2, math.prod(grid), dtype=torch.bool)
    for b in range(2):
        covered[b, slots[b]] = True
    outside = ~covered.view(2, 6, 6).repeat_interleave(4, 1).repeat_interleave(4, 2)  # (B, 24, 24) pixels
    rows = image.view(3, 3, 24, 2, 24).permute(1, 3, 0, 2, 4)  # (row, sample, C, H, W)
    for b in range(2):
        assert outside[b].any()
        assert (rows[1, b][:, outside[b]] == 0).all() and (rows[2, b][:, outside[b]] == 0).all()


@pytest.mark.slow
def test_lomar_pretrains_on_builtin_digits_and_starts_a_whole_image_finetuning(tmp_path):
    from vmim.engine.checkpoint import load
    from vmim.models.loading import load_init
    from vmim.models.registry import create_backbone

    cfg = pretrain_with_falling_loss(METHOD, tmp_path, "data.img_size=24", "masking.window_size=3",
                                     "log.image_every_steps=20")
    state = load(tmp_path / "checkpoints" / "last.pt")["model"]
    table = state["backbone.blocks.0.rel_pos.table"]  # offsets of the (1, 6, 6) grid: 11 x 11
    assert table.shape == (121, 2)
    offsets = table.abs().sum(1).view(11, 11)
    assert (offsets[3:8, 3:8] > 0).all(), "offsets inside a 3x3 window learned"
    assert (offsets[0] == 0).all() and (offsets[:, 10] == 0).all(), "offsets no window holds stay at zero"
    # the whole-image fine-tuning backbone reads the same tables
    ft = dataclasses.replace(cfg.model, dense=False, fc_norm=True)
    backbone = create_backbone(ft, (1, 6, 6))
    load_init(backbone, tmp_path, ft)
    torch.testing.assert_close(backbone.blocks[1].rel_pos.table.detach(), state["backbone.blocks.1.rel_pos.table"])
    with torch.no_grad():
        assert backbone.forward_features(torch.randn(2, 3, 1, 24, 24)).shape == (2, 64)
