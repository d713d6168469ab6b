"""V-JEPA multi-block masking (:mod:`vmim.masking.multi_block`) and its schema
(:mod:`vmim.masking.multi_block_schema`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from vmim.config import ConfigError
from vmim.masking.multi_block import (VJEPA_BLOCK_SETS, block_size, multi_block_count, multi_block_frame,
                                      multi_block_mask)
from vmim.masking.multi_block_schema import BlockSet, MultiBlockMaskingConfig

REPO = Path(__file__).resolve().parents[1]
GRIDS = [(1, 14, 14), (8, 14, 14), (2, 4, 4), (1, 2, 1), (1, 1, 2), (3, 7, 5), (1, 16, 16), (4, 1, 9)]
RATIOS = [0.05, 0.3, 0.5, 0.75, 0.9, 0.99]


def expected_count(grid, ratio) -> int:
    """Per frame round(ratio x H'W') kept within 1..H'W'-1, times T' (written out, not num_masked)."""
    t, h, w = grid
    return t * min(max(int(round(ratio * h * w)), 1), h * w - 1)


def one(num_blocks: int, scale: float, aspect: float) -> list[dict]:
    return [{"num_blocks": num_blocks, "scale": (scale, scale), "aspect": (aspect, aspect)}]


def bbox(frame: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(frame.any(1)), np.flatnonzero(frame.any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def connected(frame: np.ndarray) -> bool:
    """The True cells form one 4-connected component."""
    cells = {tuple(c) for c in np.argwhere(frame)}
    stack, seen = [next(iter(cells))], set()
    while stack:
        r, c = stack.pop()
        if (r, c) in seen:
            continue
        seen.add((r, c))
        stack += [n for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)) if n in cells]
    return seen == cells


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_exact_count_every_draw(grid):
    sets = [None, [{"num_blocks": 3, "scale": (0.02, 0.3), "aspect": (0.3, 3.0)}], one(1, 1.0, 1.0)]
    for ratio in RATIOS:
        for block_sets in sets:
            for seed in range(15):
                mask = multi_block_mask(grid, ratio, np.random.default_rng(seed), block_sets)
                assert mask.dtype == bool and mask.shape == (int(np.prod(grid)),)
                assert mask.sum() == expected_count(grid, ratio) == multi_block_count(grid, ratio), (ratio, seed)


def test_repeated_over_time():
    for seed in range(20):
        mask = multi_block_mask((8, 14, 14), 0.75, np.random.default_rng(seed)).reshape(8, 14 * 14)
        assert (mask == mask[0]).all()
        assert 0 < mask[0].sum() < 14 * 14


def test_one_block_is_one_rectangle_of_the_expected_size():
    """One block and a ratio equal to its area: the mask is exactly that block, h = round(sqrt(area a)),
    w = round(sqrt(area / a)) (area int(0.36 x 100) = 36: a=1 gives 6 x 6; int(0.32 x 100) = 32, a=2: 8 x 4)."""
    for scale, aspect, shape in ((0.36, 1.0, (6, 6)), (0.32, 2.0, (8, 4))):
        corners = set()
        for seed in range(30):
            frame = multi_block_mask((1, 10, 10), scale, np.random.default_rng(seed), one(1, scale, aspect))
            frame = frame.reshape(10, 10)
            r0, r1, c0, c1 = bbox(frame)
            assert (r1 - r0, c1 - c0) == shape
            assert frame[r0:r1, c0:c1].all() and frame.sum() == shape[0] * shape[1]
            corners.add((r0, c0))
        assert len(corners) > 5  # placed uniformly, not at a fixed spot


def test_trimmed_block_stays_contiguous():
    """A 7x7 block (area int(0.5 x 100) = 50) at ratio 0.3 is peeled to 30 tokens from one side: one connected
    piece inside the block, full rows or columns but one."""
    sides = set()
    for seed in range(40):
        frame = multi_block_mask((1, 10, 10), 0.3, np.random.default_rng(seed), one(1, 0.5, 1.0)).reshape(10, 10)
        assert frame.sum() == 30 and connected(frame)
        r0, r1, c0, c1 = bbox(frame)
        assert r1 - r0 <= 7 and c1 - c0 <= 7
        rows, cols = frame.sum(1)[r0:r1], frame.sum(0)[c0:c1]
        assert (rows == 7).sum() >= len(rows) - 1 or (cols == 7).sum() >= len(cols) - 1
        sides.add("rows" if (rows == 7).sum() >= len(rows) - 1 else "cols")
    assert sides == {"rows", "cols"}  # peeled from different sides


def test_small_blocks_are_added_until_the_count():
    """Blocks of 2x2 (int(0.04 x 100) = 4 tokens): 13 are needed at least to hide 50 tokens; the union is made of
    blocks, so every masked cell has a masked 2x2 square around it."""
    for seed in range(20):
        frame = multi_block_mask((1, 10, 10), 0.5, np.random.default_rng(seed), one(1, 0.04, 1.0)).reshape(10, 10)
        assert frame.sum() == 50
        squares = frame[:-1, :-1] & frame[1:, :-1] & frame[:-1, 1:] & frame[1:, 1:]  # (9, 9) 2x2 squares
        covered = np.zeros_like(frame)
        for r, c in np.argwhere(squares):
            covered[r:r + 2, c:c + 2] = True
        assert (frame & ~covered).sum() <= 3  # only the last, peeled block may leave a part of a square


def test_deterministic_per_seed():
    a = multi_block_mask((8, 14, 14), 0.9, np.random.default_rng(7))
    b = multi_block_mask((8, 14, 14), 0.9, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    masks = {multi_block_mask((8, 14, 14), 0.9, np.random.default_rng(s)).tobytes() for s in range(30)}
    assert len(masks) == 30


def test_aspect_is_uniform_in_its_range():
    """h / w of 4000 block sizes on a 64x64 frame (area 409, rounding moves the ratio by <~ 10 %): inside the range,
    mean at the uniform law's (0.25 + 4) / 2 = 2.125, not the log-uniform's 3.75 / ln 16 = 1.35."""
    rng = np.random.default_rng(0)
    sizes = np.array([block_size((64, 64), (0.1, 0.1), (0.25, 4.0), rng) for _ in range(4000)])
    ratio = sizes[:, 0] / sizes[:, 1]
    assert ratio.min() >= 0.25 * 0.85 and ratio.max() <= 4.0 * 1.15
    assert abs(ratio.mean() - 2.125) < 0.1
    areas = sizes.prod(1)
    assert abs(areas.mean() - 409) < 0.1 * 409
    rng = np.random.default_rng(1)
    scales = np.array([block_size((64, 64), (0.05, 0.45), (1.0, 1.0), rng) for _ in range(2000)]).prod(1) / 4096
    assert abs(scales.mean() - 0.25) < 0.02 and scales.min() > 0.04 and scales.max() < 0.47  # uniform scale


def test_both_sets_are_drawn():
    """A 6x6 square set and a 9x4 set (both 36 tokens = the count at ratio 0.36): each sample's mask is one of the
    two, and both appear about half the time."""
    sets = one(1, 0.36, 1.0) + one(1, 0.36, 2.25)
    shapes = []
    for seed in range(200):
        frame = multi_block_mask((1, 10, 10), 0.36, np.random.default_rng(seed), sets).reshape(10, 10)
        r0, r1, c0, c1 = bbox(frame)
        shapes.append((r1 - r0, c1 - c0))
    assert set(shapes) == {(6, 6), (9, 4)}
    assert 70 < shapes.count((6, 6)) < 130


def test_default_sets_are_vjepas():
    assert [s["num_blocks"] for s in VJEPA_BLOCK_SETS] == [8, 2]
    assert [s["scale"] for s in VJEPA_BLOCK_SETS] == [(0.15, 0.15), (0.7, 0.7)]
    assert all(s["aspect"] == (0.75, 1.5) for s in VJEPA_BLOCK_SETS)
    with pytest.raises(ValueError, match="at least one block set"):
        multi_block_mask((1, 4, 4), 0.5, np.random.default_rng(0), [])


def test_frame_accepts_schema_block_sets():
    frame = multi_block_frame((6, 6), 20, BlockSet(3, [0.1, 0.3], [0.5, 2.0]), np.random.default_rng(0))
    assert frame.shape == (6, 6) and frame.sum() == 20


# ----------------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------------


def entry(raw: dict) -> MultiBlockMaskingConfig:
    """As the loader builds an entry: the structured schema in struct mode, merged with the raw keys."""
    schema = OmegaConf.structured(MultiBlockMaskingConfig)
    OmegaConf.set_struct(schema, True)
    return OmegaConf.to_object(OmegaConf.merge(schema, raw))


def test_schema_defaults_are_the_recipe():
    cfg = entry({})
    assert cfg.kind == "multi_block" and cfg.ratio_video == 0.9 and cfg.ratio_image == 0.9
    assert [(s.num_blocks, s.scale, s.aspect) for s in cfg.block_sets] == \
        [(8, [0.15, 0.15], [0.75, 1.5]), (2, [0.7, 0.7], [0.75, 1.5])]
    cfg.check("masking", None)


def test_schema_block_sets_feed_the_generator():
    cfg = entry({"block_sets": [{"num_blocks": 3, "scale": [0.1, 0.2]}]})
    assert isinstance(cfg.block_sets[0], BlockSet) and cfg.block_sets[0].aspect == [0.75, 1.5]
    cfg.check("masking", None)
    mask = multi_block_mask((2, 8, 8), cfg.ratio_video, np.random.default_rng(0), cfg.block_sets)
    assert mask.sum() == expected_count((2, 8, 8), 0.9)


@pytest.mark.parametrize("raw, key", [
    ({"block_sets": []}, "masking.block_sets"),
    ({"block_sets": [{"num_blocks": 0}]}, "masking.block_sets[0].num_blocks"),
    ({"block_sets": [{"scale": [0.0, 0.2]}]}, "masking.block_sets[0].scale"),
    ({"block_sets": [{}, {"scale": [0.5, 1.5]}]}, "masking.block_sets[1].scale"),
    ({"block_sets": [{"scale": [0.3, 0.2]}]}, "masking.block_sets[0].scale"),
    ({"block_sets": [{"scale": [0.3]}]}, "masking.block_sets[0].scale"),
    ({"block_sets": [{"aspect": [1.5, 0.75]}]}, "masking.block_sets[0].aspect"),
    ({"block_sets": [{"aspect": [0.0, 1.0]}]}, "masking.block_sets[0].aspect"),
    ({"ratio_video": 1.0}, "masking.ratio_video"),
])
def test_schema_refuses_bad_values_naming_the_key(raw, key):
    cfg = entry(raw)
    with pytest.raises(ConfigError, match=f"config key '{key.replace('[', '.').replace(']', '.')}'"):
        cfg.check("masking", None)


def test_schema_refuses_unknown_and_mistyped_block_set_keys():
    with pytest.raises(Exception, match="num_blokcs"):
        entry({"block_sets": [{"num_blokcs": 3}]})
    with pytest.raises(Exception, match="num_blocks"):
        entry({"block_sets": [{"num_blocks": "many"}]})


# ----------------------------------------------------------------------------------------------------
# Shipped configs (once the kind is registered)
# ----------------------------------------------------------------------------------------------------


def _registered() -> bool:
    from vmim.config import schemas

    return "multi_block" in schemas("maskings")


@pytest.mark.parametrize("name", ["methods/vjepa_vit_b.yaml", "methods/vjepa_vit_l.yaml",
                                  "demo/vjepa_motion_pretrain.yaml"])
def test_vjepa_configs_load(name):
    if not _registered():
        pytest.skip("masking kind multi_block is not registered yet")
    from vmim.config import load_config

    extra = ["data.datasets.digits_images.weight=1"] if name.startswith("methods/") else []
    cfg = load_config(REPO / "configs" / name, extra)
    assert cfg.masking.kind == "multi_block" and len(cfg.masking.block_sets) == 2
    assert list(cfg.targets) == ["momentum"] and cfg.targets["momentum"].loss.kind == "l1"
    head = cfg.targets["momentum"].head
    assert head.kind == "decoder" and head.depth == (4 if name.startswith("demo/") else 12)
