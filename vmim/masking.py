"""Mask generators over a token grid ``(T', H', W')``.

Where masks are made: on the CPU, per sample, inside the dataset (data-loader workers), as VideoMAE,
OmniMAE and DINOv2 do. Each call gets its own ``numpy.random.Generator`` seeded from
``(seed, epoch, sample index)`` by the data pipeline, so a mask depends only on which sample it belongs
to: the same with any number of workers or ranks, different across samples, and reproduced exactly
when a run resumes mid-epoch.

Contract: a generator returns a flat bool array of ``T'*H'*W'`` entries in (t, h, w) row-major order,
True = masked, with exactly :func:`num_masked` True entries, so every sample of a batch (same grid,
same ratio) hides the same number of tokens and visible tokens can be gathered with a reshape.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

Grid = tuple[int, int, int]
MaskFn = Callable[[Grid, float, np.random.Generator], np.ndarray]


def num_masked(grid: Grid, ratio: float) -> int:
    """Masked tokens for a grid: ``round(ratio * N)``, kept within [1, N - 1]."""
    n = int(np.prod(grid))
    return min(max(int(round(ratio * n)), 1), n - 1)


def random_mask(grid: Grid, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """MAE: a uniformly random subset of all T'*H'*W' tokens. Returns bool (N,)."""
    n = int(np.prod(grid))
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: num_masked(grid, ratio)]] = True
    return mask


def tube_mask(grid: Grid, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """VideoMAE: one random spatial mask of ``round(ratio * H'W')`` tokens tiled over all T' slices."""
    t, h, w = grid
    frame = random_mask((1, h, w), ratio, rng)
    return np.tile(frame, t)


def cube_mask(
        grid: Grid,
        ratio: float,
        rng: np.random.Generator,
        unit_size: Sequence[int] = (1, 1, 1),
        min_area: float = 0.2,
        aspect: float = 0.3,
        max_tries: int = 100,
) -> np.ndarray:
    """MaskFeat / BEiT space-time blocks on a grid of mask units (``unit_size`` tokens each).

    Blocks with a log-uniform aspect ratio, an area between ``min_area`` of a frame and the whole frame, and a temporal length uniform in 1..T_u are added while they do not overshoot
    the target count; after ``max_tries`` failed draws the remaining units are filled at random, so the
    count is always exact. Units are then upsampled (nearest) to the token grid.
    """
    ut, uh, uw = min(unit_size[0], grid[0]), unit_size[1], unit_size[2]
    if grid[0] % ut or grid[1] % uh or grid[2] % uw:
        raise ValueError(f"mask unit {tuple(unit_size)} does not tile the token grid {tuple(grid)}")
    units = (grid[0] // ut, grid[1] // uh, grid[2] // uw)
    tu, hu, wu = units
    target = num_masked(units, ratio)
    mask = np.zeros(units, dtype=bool)
    count, tries = 0, 0
    min_block = max(1, int(min_area * hu * wu))
    max_block = hu * wu
    while count < target and tries < max_tries:
        tries += 1
        area = rng.uniform(min_block, max(min_block, max_block))
        log_ratio = rng.uniform(math.log(aspect), -math.log(aspect))
        bh = int(round(math.sqrt(area * math.exp(log_ratio))))
        bw = int(round(math.sqrt(area / math.exp(log_ratio))))
        bt = int(rng.integers(1, tu + 1))
        if not (0 < bh <= hu and 0 < bw <= wu):
            continue
        t0, h0, w0 = rng.integers(0, tu - bt + 1), rng.integers(0, hu - bh + 1), rng.integers(0, wu - bw + 1)
        block = mask[t0:t0 + bt, h0:h0 + bh, w0:w0 + bw]
        new = int((~block).sum())
        if 0 < new <= target - count:
            block[...] = True
            count += new
            tries = 0
    if count < target:  # fill the rest at random so every sample masks exactly `target` units
        free = np.flatnonzero(~mask.ravel())
        mask.ravel()[rng.choice(free, target - count, replace=False)] = True
    tokens = mask.repeat(ut, 0).repeat(uh, 1).repeat(uw, 2)
    return tokens.ravel()


class MaskGenerator:
    """Picks the ratio for a grid (image vs video) and calls one strategy.

    A grid with one token in time (an image, or a clip as short as one tubelet) uses ``ratio_image``.
    """

    def __init__(self, name: str, ratio_video: float, ratio_image: float, **strategy_kwargs):
        if name not in MASKINGS:
            raise KeyError(f"unknown masking '{name}'; registered: {sorted(MASKINGS)}")
        self.name = name
        self.ratio_video = ratio_video
        self.ratio_image = ratio_image
        self.strategy_kwargs = strategy_kwargs

    def ratio(self, grid: Grid) -> float:
        return self.ratio_image if grid[0] == 1 else self.ratio_video

    def num_masked(self, grid: Grid) -> int:
        if self.name == "tube":
            return grid[0] * num_masked((1, grid[1], grid[2]), self.ratio(grid))
        if self.name == "cube":
            u = self.strategy_kwargs.get("unit_size", (1, 1, 1))
            units = (grid[0] // min(u[0], grid[0]), grid[1] // u[1], grid[2] // u[2])
            return num_masked(units, self.ratio(grid)) * (grid[0] // units[0]) * u[1] * u[2]
        return num_masked(grid, self.ratio(grid))

    def __call__(self, grid: Grid, rng: np.random.Generator) -> np.ndarray:
        """Bool mask (T'*H'*W',), True = masked."""
        return MASKINGS[self.name](grid, self.ratio(grid), rng, **self.strategy_kwargs)


MASKINGS: dict[str, MaskFn] = {"random": random_mask, "tube": tube_mask, "cube": cube_mask}


def build_mask_generator(cfg) -> MaskGenerator:
    """From a :class:`vmim.config.MaskingConfig`."""
    kwargs = {}
    if cfg.name == "cube":
        kwargs = dict(unit_size=tuple(cfg.unit_size), min_area=cfg.block_min_area, aspect=cfg.block_aspect)
    return MaskGenerator(cfg.name, cfg.ratio_video, cfg.ratio_image, **kwargs)
