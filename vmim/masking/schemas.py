"""Torch-free schemas of the masking kinds and their registration lines (the strategies are numpy functions in
:mod:`vmim.masking.strategies`; each kind registers its mask function and its token count)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List

from ..config.checks import Entry, _check
from ..config.registry import define_family, register
from ..config.run import stage_grids, video_grid
from ..models.schemas import ViTConfig


@dataclass
class MaskingConfig(Entry):
    kind: str = "tube"
    """A registered masking (random, tube, cube, running_cell, window)."""
    ratio_video: float = 0.9
    """Fraction of tokens masked in clips with more than one token in time."""
    ratio_image: float = 0.75
    """Fraction of tokens masked in images (and clips with one token in time)."""

    def check(self, key: str, cfg: Any) -> None:
        for name in ("ratio_video", "ratio_image"):
            ratio = getattr(self, name)
            _check(0.0 < ratio < 1.0, f"{key}.{name}", f"{ratio} is outside (0, 1)")


def _check_unit_size(key: str, unit_size: List[int], cfg: Any) -> None:
    _check(len(unit_size) == 3 and all(u > 0 for u in unit_size), f"{key}.unit_size",
           f"{unit_size} must be three positive ints (t, h, w)")
    for grid in stage_grids(cfg):
        _check(all(g % u == 0 for g, u in zip(grid, unit_size)), f"{key}.unit_size",
               f"{unit_size} does not tile the video token grid {list(grid)}"
               + (" (a stage of data.img_size_schedule)" if grid != video_grid(cfg) else ""))


@dataclass
class RandomMaskingConfig(MaskingConfig):
    """MAE: a uniformly random subset of all tokens (or of mask units of several tokens: SimMIM)."""

    kind: str = "random"
    unit_size: List[int] = field(default_factory=lambda: [1, 1, 1])
    """Mask unit in tokens (t, h, w): SimMIM masks 32 px units of 16 px patches, [1, 2, 2]."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _check_unit_size(key, self.unit_size, cfg)


@dataclass
class TubeMaskingConfig(MaskingConfig):
    """VideoMAE: one random spatial mask repeated over time."""

    kind: str = "tube"


@dataclass
class CubeMaskingConfig(MaskingConfig):
    """MaskFeat / BEiT: space-time blocks of mask units."""

    kind: str = "cube"
    unit_size: List[int] = field(default_factory=lambda: [1, 1, 1])
    """Mask unit in tokens (t, h, w); MaskFeat uses [1, 2, 2] (32x32 px x 2 frames)."""
    block_min_area: float = 0.2
    """Smallest block area as a fraction of a frame's mask units (MaskFeat: 9 of 49)."""
    block_aspect: float = 0.3
    """Block aspect ratios are log-uniform in [block_aspect, 1 / block_aspect]."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _check_unit_size(key, self.unit_size, cfg)
        _check(0.0 < self.block_min_area <= 1.0, f"{key}.block_min_area", f"{self.block_min_area} is outside (0, 1]")
        _check(0.0 < self.block_aspect <= 1.0, f"{key}.block_aspect", f"{self.block_aspect} is outside (0, 1]")


@dataclass
class RunningCellMaskingConfig(MaskingConfig):
    """VideoMAE V2's decoder mask: a 2x2-cell pattern whose offset moves one step per time slice."""

    kind: str = "running_cell"
    ratio_video: float = 0.5
    ratio_image: float = 0.5

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        for name in ("ratio_video", "ratio_image"):
            ratio = getattr(self, name)
            _check(0 < int(4 * ratio) < 4 and math.isclose(4 * ratio, int(4 * ratio)), f"{key}.{name}",
                   f"{ratio} must be 0.25, 0.5 or 0.75 (a whole number of the 4 cells)")
        for _, h, w in stage_grids(cfg):
            _check(h % 2 == 0 and w % 2 == 0, f"{key}.kind",
                   f"running_cell tiles 2x2 cells over the {h}x{w} token grid; both sides must be even")


@dataclass
class WindowMaskingConfig(MaskingConfig):
    """LoMaR: K random local windows per sample, a ratio of each window's tokens masked; the encoder runs each window
    as its own dense sequence (``vmim.masking.window_mask``). Needs the dense ViT (mask token on tokens) and a
    relative position bias (LoMaR has no absolute positions); an encoder mask only (no decoder masking)."""

    kind: str = "window"
    ratio_video: float = 0.8
    ratio_image: float = 0.8
    num_windows: int = 4
    """Windows per sample (LoMaR: 4)."""
    window_size: int = 7
    """Window side in tokens (LoMaR: 7, i.e. 7x7 patches of 16 px)."""
    window_frames: int = 0
    """Window length in tokens in time; 0 = the whole clip (space-time tubes)."""
    decoder_mask = False
    """Not a decoder masking (a class attribute, not a key)."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _check(self.num_windows >= 1, f"{key}.num_windows", f"{self.num_windows} must be >= 1")
        t, h, w = video_grid(cfg)
        _check(0 <= self.window_frames <= t, f"{key}.window_frames",
               f"{self.window_frames} must be in 0..{t} (0 = all; the clip has {t} tokens in time)")
        _check(1 < self.window_size <= min(h, w), f"{key}.window_size",
               f"{self.window_size} tokens must be in 2..{min(h, w)} (the {h}x{w} token grid of data.img_size)")
        m = cfg.model
        _check(isinstance(m, ViTConfig) and m.dense and m.mask_in == "tokens", "model.dense",
               "local windows (masking.kind=window) run on the dense ViT: set model.dense=true (mask_in tokens), with "
               "a vit_* backbone")
        _check(m.rel_pos_bias != "none" or m.pos_embed != "none", "model.rel_pos_bias",
               "a windowed encoder without positions sees a bag of tokens: set model.rel_pos_bias (LoMaR: per_block) "
               "or a model.pos_embed")


@dataclass
class NoMaskingConfig(Entry):
    """No mask of this role (the default decoder masking: the decoder predicts every encoder-masked token)."""

    kind: str = "none"


define_family("maskings", "masking", default_kind="tube")
define_family("decoder_maskings", "decoder masking", default_kind="none", extends="maskings",
              admit_attr="decoder_mask")

_S = "vmim.masking.strategies"
register("maskings", "random", RandomMaskingConfig, f"{_S}:random_mask", count=f"{_S}:cube_count")
register("maskings", "tube", TubeMaskingConfig, f"{_S}:tube_mask", count=f"{_S}:tube_count")
register("maskings", "cube", CubeMaskingConfig, f"{_S}:cube_mask", count=f"{_S}:cube_count")
register("maskings", "running_cell", RunningCellMaskingConfig, f"{_S}:running_cell_mask",
         count=f"{_S}:running_cell_count")
register("maskings", "window", WindowMaskingConfig, f"{_S}:window_mask", count=f"{_S}:window_count")
register("decoder_maskings", "none", NoMaskingConfig)
