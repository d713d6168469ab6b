"""The pretraining task's schema (``task: pretrain``): the run sections plus the encoder's masking, an optional
decoder masking and the named targets (each with its head and loss). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

from .checks import _check, check_data_sizes, check_finite
from .registry import kinds
from .run import RunConfig, _check_img_size_schedule, stage_grids, validate_common

MASK_SECTIONS = {"encoder": "masking", "decoder": "decoder_masking"}
"""Mask role (a key of a sample's masks) -> the config section that draws it."""
KINDED_SECTIONS = {"model": "backbones", "masking": "maskings", "decoder_masking": "decoder_maskings"}
"""Top-level keys of a pretraining config holding one kinded entry, and their family."""


def token_sets() -> dict[str, tuple[str, ...]]:
    """Token set name -> the mask roles it reads (registered with ``info={"reads": ...}``)."""
    return {name: tuple(kind.info["reads"]) for name, kind in kinds("token_sets").items()}


@dataclass
class Config(RunConfig):
    """A pretraining run (``task: pretrain``)."""

    KINDED = KINDED_SECTIONS
    MAPPINGS = {"targets": "targets", "data.datasets": "datasets"}

    task: str = "pretrain"
    masking: Any = None
    """The encoder's mask: ``kind`` random, tube, cube, running_cell, window (LoMaR) or multi_block (V-JEPA), with
    that kind's keys."""
    decoder_masking: Any = None
    """A second mask for the decoder (VideoMAE V2: running_cell 0.5); kind none (default) = no decoder mask."""
    targets: Dict[str, Any] = field(default_factory=dict)
    """name -> a target entry (its kind: pixel, hog, momentum, teacher), with its head and loss."""

    def validate(self) -> None:
        validate(self)




def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express. Raises ConfigError naming the key."""
    _check(cfg.task == "pretrain", "task", f"'{cfg.task}' is not a pretraining run")
    check_finite(cfg)
    check_data_sizes(cfg)
    cfg.model.check("model", cfg)
    _check_img_size_schedule(cfg)  # before the maskings check their units on every stage's grid
    for i, (_, h, w) in enumerate(stage_grids(cfg)):  # masks keep 1..N-1 of a frame's N tokens: 1 leaves nothing
        key = "data.img_size" if i == 0 else f"data.img_size_schedule[{i - 1}].img_size"
        _check(h * w >= 2, key, f"a {h}x{w} token grid (over model.patch_size) leaves nothing to mask: each frame "
               "needs at least 2 tokens")
    cfg.masking.check("masking", cfg)
    cfg.decoder_masking.check("decoder_masking", cfg)
    _check(len(cfg.targets) > 0, "targets", "at least one target is required (e.g. targets.pixel.weight=1)")
    for name, target in cfg.targets.items():
        target.check(f"targets.{name}", cfg)
    for mask, section in MASK_SECTIONS.items():
        readers = [name for name, sets in token_sets().items() if mask in sets]
        _check(getattr(cfg, section).kind == "none" or any(t.token_set in readers for t in cfg.targets.values()),
               f"{section}.kind", f"a {mask} mask is drawn but no target uses it: set targets.<name>.token_set to "
               f"one of {', '.join(readers)}")

    validate_common(cfg)
