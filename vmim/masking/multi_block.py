"""V-JEPA's multi-block masking: a union of random spatial blocks, repeated over every time slice.

Kind ``multi_block`` (:func:`multi_block_mask`, count :func:`multi_block_count`; schema
:class:`vmim.masking.multi_block_schema.MultiBlockMaskingConfig`). Each sample draws one of ``block_sets`` uniformly;
a set is ``{num_blocks, scale: (min, max), aspect: (min, max)}``. One block size is drawn per sample (the reference
shares one size between all blocks of a mask): scale ``s`` uniform in the range, ``area = int(H' W' s)`` tokens,
aspect ratio ``a`` uniform in the range, ``h = round(sqrt(area a))``, ``w = round(sqrt(area / a))``, each clamped to
``1..`` the frame. Blocks are placed uniformly inside the frame; the union of the sample's blocks is masked in every
one of the T' slices (V-JEPA's ``temporal_scale: [1.0, 1.0]``: a block spans the whole clip).

Exact count (the decision): every mask of a grid hides exactly ``T' x num_masked((1, H', W'), ratio)`` tokens, the
contract of :mod:`vmim.masking.strategies` (visible-only encoders stack the samples of a batch). Per sample:

1. place the set's ``num_blocks`` blocks; while the union is still smaller than the count, place further blocks of
   the same size (on 14 x 14 tokens at ratio 0.9 the short-range set places 30 blocks on average, 16-49 for 90 %
   of the draws, instead of 8: its masks become many-block unions whose gaps are the context);
2. while the union is larger, take back the last block placed: if the cells only it covers are no more than the
   excess, remove it whole and go on with the block before; otherwise peel the excess off its own cells in raster
   order from one side (top, bottom, left or right, drawn), so it stays a rectangle plus one partial row or column.

Peeling from a side rather than un-masking random cells of the last block (the first idea): random holes leave single
visible tokens inside the region to predict, and their neighbours then predict them from next door, which is the
leak that blocks exist to avoid (I-JEPA / V-JEPA). A cap of ``4 H' W' + 64`` blocks bounds step 1; should it ever be
reached (it is not for any set whose blocks can reach the corners), the missing cells are masked at random so the
count still holds.

How this differs from the reference (facebookresearch/jepa ``src/masks/multiblock3d.py``, ``_MaskGenerator``):

* the reference hides a variable number of tokens: the union of exactly ``num_blocks`` blocks is the prediction
  target and its complement the context, and then every sample's context and target index lists are truncated to the
  batch's minimum length (``min_keep``), dropping their last tokens in raster order: those tokens are neither seen
  nor predicted, and the effective ratio depends on the batch size. Here the count is the config's ``ratio``, nothing
  is dropped (every unmasked token is context, every masked one a target), and a sample's mask depends only on its
  own generator (masks are drawn per sample in the loader workers; exact resume);
* the reference draws the block size once per batch from a generator seeded by a shared step counter; here once per
  sample;
* the reference applies **both** mask sets to every sample (the encoder and predictor run once per set, the losses
  are averaged); here each sample draws one set, so a batch holds both kinds at half the encoder passes. Running both
  on one clip would need two encoder masks per sample, which no method expresses today;
* the aspect ratio is uniform in its range, as the reference's ``_sample_block_size`` (not log-uniform like
  :func:`~vmim.masking.strategies.cube_mask`); ``max_temporal_keep`` and temporal scales below 1 are not expressed.

Default ``ratio`` 0.9 (the schema's): the paper's "average masking ratio of about 90 %". Measured with the reference's
sampling on 14 x 14 tokens, the union of 8 blocks of 0.15 covers 63 % on average and that of 2 blocks of 0.7 81 %,
but after the ``min_keep`` truncation (batch 24) the encoder sees 23 % and 6 % of the tokens: 77-94 % hidden.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from .strategies import Grid, num_masked

VJEPA_BLOCK_SETS: tuple[dict, ...] = (
    {"num_blocks": 8, "scale": (0.15, 0.15), "aspect": (0.75, 1.5)},  # short range
    {"num_blocks": 2, "scale": (0.7, 0.7), "aspect": (0.75, 1.5)},  # long range
)
"""V-JEPA's two mask sets (``configs/pretrain/vitl16.yaml``: ``mask[*].num_blocks / spatial_scale / aspect_ratio``)."""


def _get(block_set: Any, name: str) -> Any:
    """A key of a block set given as a mapping or as an object (the schema's ``BlockSet`` dataclass)."""
    return block_set[name] if isinstance(block_set, Mapping) else getattr(block_set, name)


def block_size(frame: tuple[int, int], scale: Sequence[float], aspect: Sequence[float], rng: np.random.Generator
               ) -> tuple[int, int]:
    """One block's (h, w) in tokens on an ``(H', W')`` frame: ``int(H' W' s)`` tokens for ``s`` uniform in ``scale``,
    aspect ratio h / w uniform in ``aspect``, each side rounded and clamped to ``1..`` the frame."""
    height, width = frame
    area = max(1, int(height * width * rng.uniform(scale[0], scale[1])))
    ratio = rng.uniform(aspect[0], aspect[1])
    h = min(height, max(1, int(round(math.sqrt(area * ratio)))))
    w = min(width, max(1, int(round(math.sqrt(area / ratio)))))
    return h, w


def _peel_order(h: int, w: int, side: int) -> np.ndarray:
    """Flat indices of an h x w block in the order cells are peeled from side 0 top, 1 bottom, 2 left, 3 right."""
    cells = np.arange(h * w).reshape(h, w)
    order = cells.ravel() if side < 2 else cells.T.ravel()
    return order[::-1] if side % 2 else order


def multi_block_frame(frame: tuple[int, int], target: int, block_set: Any, rng: np.random.Generator) -> np.ndarray:
    """Bool ``(H', W')``: a union of blocks of ``block_set`` covering exactly ``target`` cells (module docstring)."""
    height, width = frame
    h, w = block_size(frame, _get(block_set, "scale"), _get(block_set, "aspect"), rng)
    cover = np.zeros(frame, dtype=np.int32)  # how many placed blocks cover each cell
    blocks: list[tuple[int, int]] = []
    count, cap = 0, 4 * height * width + 64
    while (len(blocks) < int(_get(block_set, "num_blocks")) or count < target) and len(blocks) < cap:
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        region = cover[top:top + h, left:left + w]
        count += int((region == 0).sum())
        region += 1
        blocks.append((top, left))
    if count < target:  # the cap was reached: fill at random so the count holds
        free = np.flatnonzero(cover.ravel() == 0)
        cover.ravel()[rng.choice(free, target - count, replace=False)] = 1
        count = target
    excess = count - target
    while excess > 0:
        top, left = blocks.pop()
        region = cover[top:top + h, left:left + w]
        own = region == 1
        if int(own.sum()) <= excess:
            excess -= int(own.sum())
            region -= 1
            continue
        order = _peel_order(h, w, int(rng.integers(4)))
        peel = order[own.ravel()[order]][:excess]
        rows, cols = np.divmod(peel, w)
        cover[top + rows, left + cols] -= 1
        excess = 0
    return cover > 0


def multi_block_mask(grid: Grid, ratio: float, rng: np.random.Generator,
                     block_sets: Sequence[Any] | None = None) -> np.ndarray:
    """V-JEPA multi-block: one block set drawn per sample, its union of blocks adjusted to exactly
    ``num_masked((1, H', W'), ratio)`` tokens, repeated over all T' slices. ``block_sets``: mappings or objects with
    ``num_blocks``, ``scale`` (min, max) and ``aspect`` (min, max); None = :data:`VJEPA_BLOCK_SETS`.

    Returns:
        bool ``(T' * H' * W',)`` in (t, h, w) row-major order, True = masked.
    """
    t, h, w = grid
    sets = VJEPA_BLOCK_SETS if block_sets is None else block_sets
    if not len(sets):
        raise ValueError("multi_block masking needs at least one block set")
    chosen = sets[int(rng.integers(len(sets)))]
    frame = multi_block_frame((h, w), num_masked((1, h, w), ratio), chosen, rng)
    return np.tile(frame.ravel(), t)


def multi_block_count(grid: Grid, ratio: float, **_) -> int:
    """Tokens hidden by :func:`multi_block_mask`: ``T' x num_masked((1, H', W'), ratio)``, whatever the block sets."""
    return grid[0] * num_masked((1, grid[1], grid[2]), ratio)
