"""Mask generators and per-sample mask determinism, against counts and layouts derived by hand.

Grid convention (vmim.masking): a mask is a flat bool array over the token grid ``(T', H', W')`` in (t, h, w)
row-major order, True = masked, so ``mask.reshape(T', H', W')[t]`` is the spatial mask of time slice t.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import rng
from vmim import config
from vmim.data import DigitClips, DigitImages, MaskedClipDataset, MixedBatchSampler
from vmim.data.pretrain_dataset import collate
from vmim.masking import MASKINGS, MaskGenerator, build_mask_generator, cube_mask, num_masked, random_mask, tube_mask

GRIDS = [(1, 8, 8), (4, 8, 8), (8, 14, 14)]
RATIOS = [0.4, 0.75, 0.9]
SEEDS = range(12)


def round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def expected_count(n: int, ratio: float) -> int:
    """round(ratio * n), kept within [1, n - 1] (at least one token masked and one visible)."""
    return min(max(round_half_up(ratio * n), 1), n - 1)


def check_flat_bool(mask: np.ndarray, grid: tuple[int, int, int]) -> None:
    assert isinstance(mask, np.ndarray)
    assert mask.dtype == np.bool_
    assert mask.shape == (grid[0] * grid[1] * grid[2],)


def units_of(mask: np.ndarray, grid: tuple[int, int, int], unit: tuple[int, int, int]) -> np.ndarray:
    """(T, H, W) mask -> (T/ut, ut, H/uh, uh, W/uw, uw): axes 1, 3, 5 run inside one mask unit."""
    t, h, w = grid
    ut, uh, uw = unit
    return mask.reshape(t // ut, ut, h // uh, uh, w // uw, uw)


# ----------------------------------------------------------------------------------------------------
# num_masked
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid, ratio, want", [
    ((1, 8, 8), 0.75, 48),  # 64 * 0.75 = 48
    ((1, 8, 8), 0.4, 26),  # 25.6 -> 26
    ((4, 8, 8), 0.9, 230),  # 256 * 0.9 = 230.4 -> 230
    ((8, 14, 14), 0.4, 627),  # 1568 * 0.4 = 627.2 -> 627
    ((8, 14, 14), 0.9, 1411),  # 1411.2 -> 1411
    ((1, 2, 2), 0.01, 1),  # 0.04 -> 0, clamped up: at least one masked token
    ((1, 2, 2), 0.99, 3),  # 3.96 -> 4, clamped down: at least one visible token
])
def test_num_masked_by_hand(grid, ratio, want):
    assert num_masked(grid, ratio) == want


# ----------------------------------------------------------------------------------------------------
# Exact counts, dtype and shape
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_random_mask_exact_count(grid, ratio):
    n = grid[0] * grid[1] * grid[2]
    gen = MaskGenerator("random", ratio_video=ratio, ratio_image=ratio)
    assert gen.num_masked(grid) == expected_count(n, ratio) == num_masked(grid, ratio)
    for seed in SEEDS:
        mask = random_mask(grid, ratio, rng(seed))
        check_flat_bool(mask, grid)
        assert mask.sum() == expected_count(n, ratio)
        via_generator = gen(grid, rng(seed))
        check_flat_bool(via_generator, grid)
        assert via_generator.sum() == gen.num_masked(grid)


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_tube_mask_same_pattern_in_every_slice(grid, ratio):
    t, h, w = grid
    per_slice = expected_count(h * w, ratio)
    gen = MaskGenerator("tube", ratio_video=ratio, ratio_image=ratio)
    assert gen.num_masked(grid) == t * per_slice
    for seed in SEEDS:
        mask = tube_mask(grid, ratio, rng(seed))
        check_flat_bool(mask, grid)
        slices = mask.reshape(t, h, w)
        for k in range(t):
            np.testing.assert_array_equal(slices[k], slices[0])
            assert slices[k].sum() == per_slice
        assert mask.sum() == t * per_slice
        assert gen(grid, rng(seed)).sum() == gen.num_masked(grid)


def test_tube_count_by_hand():
    # 0.9 * 64 = 57.6 -> 58 tokens per slice, x 4 slices = 232 (a random mask of the same grid hides 230).
    assert tube_mask((4, 8, 8), 0.9, rng(0)).sum() == 232
    assert MaskGenerator("tube", 0.9, 0.5).num_masked((4, 8, 8)) == 232
    # 0.4 * 196 = 78.4 -> 78 per slice, x 8 = 624.
    assert tube_mask((8, 14, 14), 0.4, rng(0)).sum() == 624


@pytest.mark.parametrize("unit", [(1, 2, 2), (2, 2, 2)], ids=str)
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_cube_mask_constant_within_units_and_exact(grid, ratio, unit):
    # A unit longer than the grid in time is cut to the grid (an image has one token in time).
    u = (min(unit[0], grid[0]), unit[1], unit[2])
    n_units = (grid[0] // u[0]) * (grid[1] // u[1]) * (grid[2] // u[2])
    want = expected_count(n_units, ratio) * u[0] * u[1] * u[2]
    gen = MaskGenerator("cube", ratio_video=ratio, ratio_image=ratio, unit_size=unit)
    assert gen.num_masked(grid) == want
    for seed in SEEDS:
        mask = cube_mask(grid, ratio, rng(seed), unit_size=unit)
        check_flat_bool(mask, grid)
        assert mask.sum() == want
        blocks = units_of(mask.reshape(grid), grid, u)
        np.testing.assert_array_equal(blocks.all(axis=(1, 3, 5)), blocks.any(axis=(1, 3, 5)))
        assert gen(grid, rng(seed)).sum() == want


@pytest.mark.parametrize("grid, unit, ratio, want", [
    ((4, 8, 8), (1, 2, 2), 0.9, 232),  # units (4, 4, 4) = 64: 57.6 -> 58 units x 4 tokens
    ((8, 14, 14), (2, 2, 2), 0.75, 1176),  # units (4, 7, 7) = 196: 147 units x 8 tokens
    ((1, 8, 8), (2, 2, 2), 0.4, 24),  # image: units (1, 4, 4) = 16: 6.4 -> 6 units x (1 * 2 * 2) tokens
])
def test_cube_count_by_hand(grid, unit, ratio, want):
    for seed in range(5):
        assert cube_mask(grid, ratio, rng(seed), unit_size=unit).sum() == want
    assert MaskGenerator("cube", ratio, ratio, unit_size=unit).num_masked(grid) == want


def test_cube_mask_is_made_of_blocks():
    # MaskFeat masks space-time blocks, not scattered tokens. Count, per masked token, the spatial edges between a
    # masked and a visible token: a random mask at ratio 0.4 has about 4 x 0.6 = 2.4 of them (a bit less at the
    # borders), compact blocks far fewer (a k x k block has 4k edges for k^2 tokens).
    def boundary_per_masked(mask3d: np.ndarray) -> float:
        edges = (mask3d[:, 1:, :] != mask3d[:, :-1, :]).sum() + (mask3d[:, :, 1:] != mask3d[:, :, :-1]).sum()
        return edges / mask3d.sum()

    grid = (4, 14, 14)
    cube = np.mean([boundary_per_masked(cube_mask(grid, 0.4, rng(s)).reshape(grid)) for s in range(20)])
    rand = np.mean([boundary_per_masked(random_mask(grid, 0.4, rng(s)).reshape(grid)) for s in range(20)])
    assert cube < 0.6 * rand


# ----------------------------------------------------------------------------------------------------
# Determinism
# ----------------------------------------------------------------------------------------------------


RANDOM_KINDS = sorted(set(MASKINGS) - {"running_cell", "window", "multi_block"})
"""Grid maskings with many patterns (running_cell has 4: test_videomae_v2.py; window masks window tokens:
test_lomar.py; multi_block places a few rectangles, repeated over time: test_multi_block.py)."""


@pytest.mark.parametrize("name", RANDOM_KINDS)
def test_same_seed_same_mask_different_seed_different_mask(name):
    grid = (4, 8, 8)
    gen = MaskGenerator(name, ratio_video=0.75, ratio_image=0.5)
    for seed in range(5):
        np.testing.assert_array_equal(gen(grid, rng(seed)), gen(grid, rng(seed)))
    masks = [gen(grid, rng(seed)) for seed in range(20)]
    distinct = {m.tobytes() for m in masks}
    assert len(distinct) >= 18


# ----------------------------------------------------------------------------------------------------
# Image vs video ratio
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RANDOM_KINDS)
def test_generator_picks_image_ratio_for_one_time_slice(name):
    gen = MaskGenerator(name, ratio_video=0.9, ratio_image=0.5)
    assert gen.ratio((1, 8, 8)) == 0.5
    assert gen.ratio((2, 8, 8)) == 0.9
    assert gen.ratio((4, 8, 8)) == 0.9
    # Counts: image 0.5 * 64 = 32; a (4, 8, 8) video at 0.9 hides 256 * 0.9 = 230.4 -> 230 (random; cube with
    # 1x1x1 units) or 4 slices x round(57.6) = 232 (tube).
    assert gen((1, 8, 8), rng(0)).sum() == 32
    video = gen((4, 8, 8), rng(0)).sum()
    assert video == (232 if name == "tube" else 230)
    # A clip as short as one tubelet is a one-slice grid, hence also an "image".
    assert gen((1, 14, 14), rng(1)).sum() == 98


def test_build_mask_generator_from_config():
    cfg = config.CubeMaskingConfig(ratio_video=0.9, ratio_image=0.6, unit_size=[1, 2, 2])
    gen = build_mask_generator(cfg)
    assert isinstance(gen, MaskGenerator) and gen.kind == "cube"
    assert gen.ratio((1, 8, 8)) == 0.6 and gen.ratio((4, 8, 8)) == 0.9
    mask = gen((4, 8, 8), rng(0))
    blocks = units_of(mask.reshape(4, 8, 8), (4, 8, 8), (1, 2, 2))
    np.testing.assert_array_equal(blocks.all(axis=(1, 3, 5)), blocks.any(axis=(1, 3, 5)))
    assert mask.sum() == 58 * 4  # 64 units at 0.9 -> 58 units of 4 tokens
    tube = build_mask_generator(config.TubeMaskingConfig(ratio_video=0.75, ratio_image=0.6))
    assert tube.kind == "tube" and tube((2, 4, 4), rng(0)).sum() == 2 * 12


def test_unknown_masking_name():
    with pytest.raises(KeyError, match="blocks"):
        MaskGenerator("blocks", 0.9, 0.75)


# ----------------------------------------------------------------------------------------------------
# No positional bias
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, grid, ratio", [
    ("random", (2, 4, 4), 0.75),
    ("random", (1, 6, 6), 0.5),
    ("tube", (3, 4, 4), 0.5),
    ("tube", (2, 5, 5), 0.75),  # 18.75 -> 19 of 25 per slice: frequency 0.76
])
def test_every_position_masked_with_frequency_ratio(name, grid, ratio):
    n_masks = 3000
    gen = np.random.default_rng(1234)
    freq = np.mean([MASKINGS[name](grid, ratio, gen) for _ in range(n_masks)], axis=0)
    per = grid[1] * grid[2] if name == "tube" else grid[0] * grid[1] * grid[2]
    exact = expected_count(per, ratio) / per  # the mean frequency is fixed by the exact count
    assert freq.mean() == pytest.approx(exact, abs=1e-9)
    # sd of one position's frequency is sqrt(p(1-p)/3000) < 0.01: a 0.05 band is > 5 sd.
    assert np.abs(freq - exact).max() < 0.05, freq.reshape(grid)


# ----------------------------------------------------------------------------------------------------
# Masks in the data pipeline depend only on the sample key
# ----------------------------------------------------------------------------------------------------

PATCH = (2, 4, 4)


@pytest.fixture(scope="module")
def sources():
    return [DigitImages("train", img_size=16), DigitClips("train", img_size=16, num_frames=4)]


@pytest.fixture(scope="module")
def dataset(sources):
    return MaskedClipDataset(sources, {"encoder": MaskGenerator("tube", ratio_video=0.75, ratio_image=0.5)}, PATCH)


@pytest.mark.parametrize("source_id, grid", [(0, (1, 4, 4)), (1, (2, 4, 4))])
def test_dataset_item_is_a_function_of_its_key(dataset, source_id, grid):
    n = grid[0] * grid[1] * grid[2]
    ratio = 0.5 if grid[0] == 1 else 0.75
    key = (source_id, 7, 12345)
    a, b = dataset[key], dataset[key]
    assert a["masks"].encoder.dtype == torch.bool and a["masks"].encoder.shape == (n,)
    assert int(a["masks"].encoder.sum()) == grid[0] * expected_count(grid[1] * grid[2], ratio)
    assert a["clip"].dtype == torch.uint8 and a["clip"].shape == (3, 4 if source_id else 1, 16, 16)
    assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["masks"].encoder, b["masks"].encoder)
    assert a["label"] == b["label"] and a["dataset"] == b["dataset"] == source_id
    masks = {dataset[(source_id, 7, seed)]["masks"].encoder.numpy().tobytes() for seed in range(10)}
    assert len(masks) >= 8  # different seeds -> different masks (16 positions per slice: collisions are rare)
    assert {dataset[(source_id, 7, seed)]["label"] for seed in range(3)} == {a["label"]}


def collect(loader: DataLoader) -> list[dict]:
    return [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()} for batch in loader]


def test_batches_identical_with_any_worker_count(dataset, sources):
    sampler = MixedBatchSampler([len(s) for s in sources], [1.0, 1.0], batch_size=3, seed=5, batches_per_epoch=6)
    sampler.set_epoch(2)
    keys = list(sampler)
    single = collect(DataLoader(dataset, batch_sampler=sampler, num_workers=0, collate_fn=collate))
    multi = collect(DataLoader(dataset, batch_sampler=sampler, num_workers=2, collate_fn=collate))
    assert len(single) == len(multi) == len(keys) == 6
    assert {int(b["dataset"][0]) for b in single} == {0, 1}  # both datasets (and both grids) are exercised
    for batch_keys, a, b in zip(keys, single, multi):
        assert set(a) == set(b) == {"clip", "masks", "label", "dataset", "bad"}
        assert a["bad"] == b["bad"] == []  # built-in data never fails to load
        for name in ("clip", "label", "dataset"):
            assert torch.equal(a[name], b[name]), name
        assert torch.equal(a["masks"].encoder, b["masks"].encoder)
        for row, key in enumerate(batch_keys):  # and each row is exactly dataset[key]
            item = dataset[key]
            assert torch.equal(a["clip"][row], item["clip"])
            assert torch.equal(a["masks"].encoder[row], item["masks"].encoder)


def test_random_mask_units_are_whole_and_counted():
    """Random masking of (2, 2, 2)-token units on a (4, 4, 6) grid: 2 x 2 x 3 = 12 units, 6 masked, each a
    whole 2x2x2 block; on an image (one frame) the unit's t is capped to the frame."""
    from vmim.masking import random_mask

    rng = np.random.default_rng(0)
    mask = random_mask((4, 4, 6), 0.5, rng, unit_size=(2, 2, 2)).reshape(4, 4, 6)
    units = mask[::2, ::2, ::2]
    assert (mask == units.repeat(2, 0).repeat(2, 1).repeat(2, 2)).all() and units.sum() == 6
    image = random_mask((1, 4, 6), 0.5, rng, unit_size=(2, 2, 2)).reshape(4, 6)
    assert (image == image[::2, ::2].repeat(2, 0).repeat(2, 1)).all() and image.sum() == 3 * 4
    with pytest.raises(ValueError, match="does not tile"):
        random_mask((4, 5, 6), 0.5, rng, unit_size=(1, 2, 2))
