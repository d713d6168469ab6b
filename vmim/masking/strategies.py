"""Mask generators over a token grid ``(T', H', W')``.

Where masks are made: on the CPU, per sample, inside the dataset (data-loader workers), as VideoMAE,
OmniMAE and DINOv2 do. Each call gets its own ``numpy.random.Generator`` seeded from
``(seed, epoch, sample index)`` by the data pipeline, so a mask depends only on which sample it belongs
to: the same with any number of workers or ranks, different across samples, and reproduced exactly
when a run resumes mid-epoch.

Contract: a generator returns a flat bool array of ``T'*H'*W'`` entries in (t, h, w) row-major order,
True = masked, with exactly :func:`num_masked` True entries, so every sample of a batch (same grid,
same ratio) hides the same number of tokens and visible tokens can be gathered with a reshape.

Windowed masks (LoMaR, :func:`window_mask`) are the one exception, and a seam of their own: the encoder does not see
the grid but K local windows of it, each as its own sequence, so the mask is over the K x w window tokens, and a
:class:`WindowedMask` carries it with the windows' grid indices (windows may overlap, so no (N,) mask can say which
copy of a token is hidden). :func:`draw_masks` puts it into the sample's typed masks
(:class:`~vmim.masking.masks.SampleMasks`) as ``encoder`` (the mask over window tokens, still the same count per
sample) and ``windows``; the backbone encodes the windows, and the method
gathers the targets at the window tokens, so heads, losses and token sets work unchanged.

Registry: :data:`MASKINGS` maps a config ``kind`` to its function ``fn(grid, ratio, rng, **keys)``, where ``keys``
are the kind's own config keys; both derive from the registration table, so a new masking is a module with its
function and count, its dataclass in ``vmim/masking/schemas.py`` and one ``register`` line there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np

from ..config.registry import LazyRegistry
from .masks import SampleMasks

Grid = tuple[int, int, int]
MaskFn = Callable[[Grid, float, np.random.Generator], np.ndarray]


def num_masked(grid: Grid, ratio: float) -> int:
    """Masked tokens for a grid: ``round(ratio * N)``, kept within [1, N - 1]."""
    n = int(np.prod(grid))
    return min(max(int(round(ratio * n)), 1), n - 1)


def random_mask(grid: Grid, ratio: float, rng: np.random.Generator,
                unit_size: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """MAE: a uniformly random subset of all T'*H'*W' tokens; with ``unit_size`` (t, h, w) tokens, a random subset of
    those mask units (SimMIM: 2x2 tokens = 32 px on 16 px patches; t is capped at T', so an image's unit is one
    frame). Returns bool (N,)."""
    ut, uh, uw = min(unit_size[0], grid[0]), unit_size[1], unit_size[2]
    if grid[0] % ut or grid[1] % uh or grid[2] % uw:
        raise ValueError(f"mask unit {tuple(unit_size)} does not tile the token grid {tuple(grid)}")
    units = (grid[0] // ut, grid[1] // uh, grid[2] // uw)
    n = int(np.prod(units))
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: num_masked(units, ratio)]] = True
    mask = mask.reshape(units)
    return mask.repeat(ut, 0).repeat(uh, 1).repeat(uw, 2).reshape(-1)


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
        block_min_area: float = 0.2,
        block_aspect: float = 0.3,
        max_tries: int = 100,
) -> np.ndarray:
    """MaskFeat / BEiT space-time blocks on a grid of mask units (``unit_size`` tokens each).

    Blocks with a log-uniform aspect ratio in [block_aspect, 1 / block_aspect], an area between ``block_min_area``
    of a frame and the whole frame, and a temporal length uniform in 1..T_u are added while they do not overshoot
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
    min_block = max(1, int(block_min_area * hu * wu))
    max_block = hu * wu
    while count < target and tries < max_tries:
        tries += 1
        area = rng.uniform(min_block, max(min_block, max_block))
        log_ratio = rng.uniform(math.log(block_aspect), -math.log(block_aspect))
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


def running_cell_mask(grid: Grid, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """VideoMAE V2's running cell: 2x2 cells, ``int(4 * ratio)`` of whose 4 positions are masked, the pattern rotating
    one step per time slice (period 4).

    The cell's 4 positions (row-major) read ``queue[(arange(4) + p + t + 1) % 4]`` at slice t, where
    ``queue = [1] * int(4 r) + [0] * (4 - int(4 r))`` and the start p in 0..3 is drawn per sample. For r = 0.5 and
    p = 0 the masked positions are: t0 diagonal, t1 bottom row, t2 anti-diagonal, t3 top row. Every position is
    masked in ``int(4 r)`` of any 4 consecutive slices, and every slice masks exactly ``int(4 r) / 4`` of its tokens.

    Returns:
        bool (T'*H'*W',), True = masked (for a decoder mask: not reconstructed).
    """
    t, h, w = grid
    k = int(4 * ratio)
    if not 0 < k < 4 or h % 2 or w % 2:
        raise ValueError(f"running_cell needs ratio in {{0.25, 0.5, 0.75}} and an even grid, got {ratio} on {grid}")
    queue = np.array([1] * k + [0] * (4 - k), dtype=bool)
    start = int(rng.integers(4))
    slices = [np.tile(queue[(np.arange(4) + start + i + 1) % 4].reshape(2, 2), (h // 2, w // 2)) for i in range(t)]
    return np.stack(slices).ravel()


@dataclasses.dataclass(frozen=True)
class WindowedMask:
    """A mask over the tokens of K local windows (LoMaR) rather than over the grid.

    Attributes:
        mask: bool ``(K * w,)``, True = masked, window-major (window k's ``w`` tokens in (t, h, w) row-major order).
        windows: int64 ``(K, wt, wh, ww)``: the grid index (row-major over ``(T', H', W')``) of each window token.
    """

    mask: np.ndarray
    windows: np.ndarray


def window_mask(grid: Grid, ratio: float, rng: np.random.Generator, num_windows: int = 4, window_size: int = 7,
                window_frames: int = 0) -> WindowedMask:
    """LoMaR: ``num_windows`` windows of ``window_frames`` x ``window_size``² tokens (frames 0 = all T'), each with
    exactly ``round(ratio * w)`` of its ``w`` tokens masked, uniformly at random.

    Window origins are drawn per sample from that sample's generator (the reference draws one set of offsets for the
    whole batch and pairs them so that each image gets a single window four times: not copied). As the reference,
    the K top offsets are distinct, and so are the K left offsets (``permutation(H' - k + 1)[:K]``); a sample's windows
    may overlap, and a token in two windows is encoded in each, in its own context with its own mask draw. The
    temporal offset is uniform. Grids smaller than a window shrink it to the grid.
    """
    t, h, w = grid
    wt = t if window_frames <= 0 else min(window_frames, t)
    wh, ww = min(window_size, h), min(window_size, w)
    tops, lefts = _offsets(h - wh + 1, num_windows, rng), _offsets(w - ww + 1, num_windows, rng)
    starts = rng.integers(0, t - wt + 1, size=num_windows)
    cells = np.arange(t * h * w).reshape(t, h, w)
    windows = np.stack([cells[s:s + wt, top:top + wh, left:left + ww] for s, top, left in zip(starts, tops, lefts)])
    size = wt * wh * ww
    mask = np.stack([random_mask((1, 1, size), ratio, rng) for _ in range(num_windows)]).reshape(-1)
    return WindowedMask(mask, windows.astype(np.int64))


def _offsets(choices: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct offsets in [0, choices) in random order; repeats only when there are fewer choices."""
    distinct = rng.permutation(choices)[:count]
    return np.concatenate([distinct, rng.integers(0, choices, size=count - len(distinct))])


def window_count(grid: Grid, ratio: float, num_windows: int = 4, window_size: int = 7, window_frames: int = 0
                 ) -> int:
    """Window tokens hidden by :func:`window_mask` (of ``num_windows`` x w encoded)."""
    wt = grid[0] if window_frames <= 0 else min(window_frames, grid[0])
    return num_windows * num_masked((wt, min(window_size, grid[1]), min(window_size, grid[2])), ratio)


def draw_masks(generators: dict[str, "MaskGenerator"], grid: Grid, rng: np.random.Generator) -> SampleMasks:
    """One sample's masks, drawn in order from its generator (role ``encoder`` / ``decoder`` -> generator), as numpy
    arrays in a :class:`~vmim.masking.masks.SampleMasks` (a windowed encoder mask fills its ``windows``)."""
    return SampleMasks.from_roles({role: make(grid, rng) for role, make in generators.items()})


class MaskGenerator:
    """Picks the ratio for a grid (image vs video) and calls one strategy.

    A grid with one token in time (an image, or a clip as short as one tubelet) uses ``ratio_image``.
    """

    def __init__(self, kind: str, ratio_video: float, ratio_image: float, **strategy_kwargs):
        if kind not in MASKINGS:
            raise KeyError(f"unknown masking '{kind}'; registered: {sorted(MASKINGS)}")
        self.kind = kind
        self.ratio_video = ratio_video
        self.ratio_image = ratio_image
        self.strategy_kwargs = strategy_kwargs

    def ratio(self, grid: Grid) -> float:
        return self.ratio_image if grid[0] == 1 else self.ratio_video

    def num_masked(self, grid: Grid) -> int:
        """How many tokens every mask of this grid hides (the same for every draw)."""
        return MASK_COUNTS[self.kind](grid, self.ratio(grid), **self.strategy_kwargs)

    def __call__(self, grid: Grid, rng: np.random.Generator) -> np.ndarray | WindowedMask:
        """Bool mask (T'*H'*W',), True = masked; a windowed kind's :class:`WindowedMask`."""
        return MASKINGS[self.kind](grid, self.ratio(grid), rng, **self.strategy_kwargs)


def cube_count(grid: Grid, ratio: float, unit_size: Sequence[int] = (1, 1, 1), **_) -> int:
    """Tokens hidden by :func:`cube_mask`: whole mask units."""
    ut = min(unit_size[0], grid[0])
    units = (grid[0] // ut, grid[1] // unit_size[1], grid[2] // unit_size[2])
    return num_masked(units, ratio) * ut * unit_size[1] * unit_size[2]


def tube_count(grid: Grid, ratio: float) -> int:
    """Tokens hidden by :func:`tube_mask`: one frame's count in every time slice."""
    return grid[0] * num_masked((1, grid[1], grid[2]), ratio)


def running_cell_count(grid: Grid, ratio: float) -> int:
    """Tokens hidden by :func:`running_cell_mask`: whole cells of the 2x2 pattern."""
    return int(4 * ratio) * grid[0] * grid[1] * grid[2] // 4


MASKINGS: Mapping[str, MaskFn] = LazyRegistry("maskings")
"""Kind -> mask function, from the registration table (``vmim/masking/schemas.py``)."""
MASK_COUNTS: Mapping[str, Callable[..., int]] = LazyRegistry("maskings", "count")
"""Kind -> ``(grid, ratio, **keys) -> masked token count``: each kind hides a fixed count, which the tests hold
every draw to."""


def build_mask_generator(cfg) -> MaskGenerator:
    """From a masking config (a dataclass of ``vmim.config.MASKINGS``): its keys other than kind and the ratios are
    the function's keyword arguments."""
    common = ("kind", "ratio_video", "ratio_image")
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in common}
    if "unit_size" in kwargs:
        kwargs["unit_size"] = tuple(kwargs["unit_size"])
    return MaskGenerator(cfg.kind, cfg.ratio_video, cfg.ratio_image, **kwargs)


def build_mask_generators(cfg) -> dict[str, MaskGenerator]:
    """The masks a run draws per sample, from a :class:`vmim.config.Config`: one per ``config.MASK_SECTIONS`` entry
    whose kind is not none (``encoder`` always; ``decoder`` for VideoMAE V2), drawn in that order from the sample's
    generator."""
    from ..config.pretrain import MASK_SECTIONS

    sections = {name: getattr(cfg, section) for name, section in MASK_SECTIONS.items()}
    return {name: build_mask_generator(section) for name, section in sections.items() if section.kind != "none"}
