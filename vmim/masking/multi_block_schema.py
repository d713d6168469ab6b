"""Config schema of the ``multi_block`` masking (V-JEPA), torch-free: :class:`MultiBlockMaskingConfig`.

Its keys are :func:`vmim.masking.multi_block.multi_block_mask`'s keyword arguments (``block_sets``), plus the ratios
every masking has; the defaults are V-JEPA's recipe (facebookresearch/jepa ``configs/pretrain/vitl16.yaml``, ``mask``):
a short-range set of 8 blocks of 15 % of a frame and a long-range set of 2 blocks of 70 %, aspect ratios in
[0.75, 1.5], ratio 0.9 (the paper's average; how an exact count replaces the reference's variable one is in
:mod:`vmim.masking.multi_block`).

``block_sets`` is a list of :class:`BlockSet` dataclasses, which OmegaConf's structured configs type-check (a key
unknown to a block set, or a string for ``num_blocks``, stops the merge naming the key). Ranges are two-element lists
rather than tuples: YAML and CLI overrides give lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from ..config.checks import _check
from ..config.registry import register
from .schemas import MaskingConfig


@dataclass
class BlockSet:
    """One mask set: ``num_blocks`` blocks of one drawn size, their union masked (then adjusted to the count)."""

    num_blocks: int = 8
    """Blocks placed before the union is adjusted to the count (V-JEPA: 8 short-range, 2 long-range)."""
    scale: List[float] = field(default_factory=lambda: [0.15, 0.15])
    """(min, max) of a block's area as a fraction of a frame's tokens, drawn uniformly per sample."""
    aspect: List[float] = field(default_factory=lambda: [0.75, 1.5])
    """(min, max) of a block's height / width, drawn uniformly per sample."""


def _vjepa_block_sets() -> List[BlockSet]:
    return [BlockSet(8, [0.15, 0.15], [0.75, 1.5]), BlockSet(2, [0.7, 0.7], [0.75, 1.5])]


@dataclass
class MultiBlockMaskingConfig(MaskingConfig):
    """V-JEPA: each sample draws one block set; the union of its random spatial blocks, adjusted to exactly the ratio
    of a frame's tokens, is masked in every time slice."""

    kind: str = "multi_block"
    ratio_video: float = 0.9
    """Fraction of each frame's tokens masked (the union of blocks is adjusted to it); V-JEPA's average is ~90 %."""
    ratio_image: float = 0.9
    """The same for images (V-JEPA pretrains on video only)."""
    block_sets: List[BlockSet] = field(default_factory=_vjepa_block_sets)
    """The mask sets, one drawn per sample: ``[{num_blocks, scale: [min, max], aspect: [min, max]}, ...]``."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _check(len(self.block_sets) > 0, f"{key}.block_sets",
               "needs at least one block set, e.g. [{num_blocks: 8, scale: [0.15, 0.15], aspect: [0.75, 1.5]}]")
        for i, block_set in enumerate(self.block_sets):
            at = f"{key}.block_sets[{i}]"
            _check(block_set.num_blocks >= 1, f"{at}.num_blocks", f"{block_set.num_blocks} must be >= 1")
            scale, aspect = list(block_set.scale), list(block_set.aspect)
            _check(len(scale) == 2, f"{at}.scale", f"{scale} must be [min, max]")
            _check(0.0 < scale[0] <= 1.0 and 0.0 < scale[1] <= 1.0, f"{at}.scale",
                   f"{scale} must lie in (0, 1] (a fraction of a frame's tokens)")
            _check(scale[0] <= scale[1], f"{at}.scale", f"min {scale[0]} is above max {scale[1]}")
            _check(len(aspect) == 2, f"{at}.aspect", f"{aspect} must be [min, max]")
            _check(aspect[0] > 0.0 and aspect[1] > 0.0, f"{at}.aspect", f"{aspect} must be positive (height / width)")
            _check(aspect[0] <= aspect[1], f"{at}.aspect", f"min {aspect[0]} is above max {aspect[1]}")


register("maskings", "multi_block", MultiBlockMaskingConfig, "vmim.masking.multi_block:multi_block_mask",
         count="vmim.masking.multi_block:multi_block_count")
