"""Torch-free schemas of the target kinds and their registration lines (the targets themselves: :mod:`vmim.targets`).

A target entry also names the method's side of it: its weight, the token set its loss is taken over, its head and
its loss (nested kinded entries of the ``heads`` and ``losses`` families)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..config.checks import Entry, _check, _choice
from ..config.pretrain import MASK_SECTIONS, token_sets
from ..config.registry import define_family, register
from ..models.schemas import BACKBONE_DEPTHS, _check_block

PIXEL_NORMS = ("per_channel", "joint", "none")



@dataclass
class TargetConfig(Entry):
    """What every target entry has; its kind adds its own keys."""

    kind: str = ""
    """A registered target; empty means the entry's key (``targets.hog`` is a HOG target)."""
    weight: float = 1.0
    """Weight of this target's loss in the total loss."""
    token_set: str = "masked"
    """Tokens the loss is taken over: masked (MAE, MaskFeat), visible (the encoder's tokens, MR-MAE feature
    mimicking), decoder_kept (masked for the encoder and kept by decoder_masking, VideoMAE V2)."""
    head: Any = None
    """The head predicting this target: ``{kind: decoder, depth, dim, heads}`` (default) or ``{kind: linear}``."""
    loss: Any = None
    """``{kind: mse}`` (default), ``{kind: smooth_l1, beta}``, ``{kind: l1}`` or ``{kind: cosine}``."""

    def check(self, key: str, cfg: Any) -> None:
        _check(self.weight > 0 and math.isfinite(self.weight), f"{key}.weight", f"{self.weight} must be positive")
        sets = token_sets()
        _choice(f"{key}.token_set", self.token_set, list(sets))
        for mask in sets[self.token_set]:
            section = MASK_SECTIONS[mask]
            _check(getattr(cfg, section).kind != "none", f"{key}.token_set",
                   f"{self.token_set} reads the {mask} mask: set {section}.kind (e.g. running_cell)")
        if self.head.kind == "linear" and self.token_set != "visible":
            _check(bool(getattr(cfg.model, "dense", False)), f"{key}.head.kind",
                   f"a linear head reads the encoder's own tokens, and the visible-only backbone has none at "
                   f"{self.token_set} positions: set model.dense=true, or use a decoder head")
        self.head.check(f"{key}.head", cfg)
        self.loss.check(f"{key}.loss", cfg)


@dataclass
class PixelTargetConfig(TargetConfig):
    """Per-token normalized pixels (MAE, VideoMAE, OmniMAE)."""

    norm: str = "per_channel"
    """per_channel (VideoMAE, OmniMAE; eps on the std), joint (MAE, MaskFeat; eps in the variance) or none."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _choice(f"{key}.norm", self.norm, PIXEL_NORMS)


@dataclass
class HOGTargetConfig(TargetConfig):
    """Histograms of oriented gradients (MaskFeat)."""

    nbins: int = 9
    """Orientation bins over 0..pi."""
    cell_size: int = 8
    """Cell size in pixels; must divide model.patch_size."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _check(self.nbins > 0, f"{key}.nbins", f"{self.nbins} must be positive")
        patch = cfg.model.patch_size
        _check(self.cell_size > 0 and patch % self.cell_size == 0, f"{key}.cell_size",
               f"{self.cell_size} does not divide model.patch_size={patch}")


MOMENTUM_SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class MomentumTargetConfig(TargetConfig):
    """Features of an EMA copy of the student encoder on the full clip (BootMAE, data2vec); the EMA is in the
    checkpoint (exact resume), never in the optimizer, ``vmim convert`` or fine-tuning."""

    dim: int = 0
    """Features per token: 0 = the student's width at ``blocks`` (what it must be; a non-zero value is checked when the
    method is built)."""
    blocks: List[int] = field(default_factory=lambda: [-1])
    """EMA encoder blocks (negative from the end) whose outputs, before the final norm, are the target; several are
    averaged (after ``norm``, when on: data2vec). BootMAE: [-1]."""
    norm: bool = False
    """LayerNorm without affine (eps 1e-6) on each block's output (BootMAE: on)."""
    momentum: float = 0.999
    """EMA momentum m at the first update (ema = m * ema + (1 - m) * student, after every optimizer step)."""
    momentum_end: float = 1.0
    """Momentum at the end of the run (cosine, linear)."""
    schedule: str = "cosine"
    """cosine (DINO: momentum -> momentum_end over the run), linear (through the milestones, if any) or constant."""
    milestones: List[float] = field(default_factory=list)
    """linear only: knots as fractions of the run, increasing inside (0, 1), e.g. BootMAE's epochs 100 and 400 of
    800: [0.125, 0.5]."""
    milestone_momenta: List[float] = field(default_factory=list)
    """The momentum at each milestone (BootMAE: [0.9999, 0.99999])."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _check(self.dim >= 0, f"{key}.dim",
               f"{self.dim}: 0 (the student's width at blocks {self.blocks}) or that width")
        _check(len(self.blocks) > 0, f"{key}.blocks", "name at least one encoder block, e.g. [-1]")
        for i, block in enumerate(self.blocks):
            _check_block(f"{key}.blocks[{i}]", block, cfg)
        depth = BACKBONE_DEPTHS.get(getattr(cfg.model, "backbone", ""))
        _check(depth is None or len({b % depth for b in self.blocks}) == len(self.blocks), f"{key}.blocks",
               f"{self.blocks} names a block twice")
        for name in ("momentum", "momentum_end"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{key}.{name}", f"{value} is outside [0, 1]")
        _choice(f"{key}.schedule", self.schedule, MOMENTUM_SCHEDULES)
        _check(not self.milestones or self.schedule == "linear", f"{key}.milestones",
               f"milestones shape a linear schedule, not {self.schedule}")
        _check(len(self.milestones) == len(self.milestone_momenta), f"{key}.milestone_momenta",
               f"needs one momentum per milestone ({len(self.milestones)})")
        knots = [0.0, *self.milestones, 1.0]
        _check(all(a < b for a, b in zip(knots, knots[1:])), f"{key}.milestones",
               f"{self.milestones} must increase strictly inside (0, 1)")
        _check(all(0.0 <= m <= 1.0 for m in self.milestone_momenta), f"{key}.milestone_momenta",
               f"{self.milestone_momenta} must lie in [0, 1]")


@dataclass
class TeacherTargetConfig(TargetConfig):
    """Features of a frozen teacher model at chosen blocks, on the student's token grid (MVD, MR-MAE). The teacher
    runs in eval mode without grad under the run's autocast, stays out of the optimizer and the student's checkpoint;
    the checkpoint records its source and content hash, and a resume with other teacher weights stops. Frames, grid
    mapping and resampling: ``vmim.targets.teacher``."""

    path: str = ""
    """The teacher's weights: a vmim run directory, one of our checkpoints or a ``vmim convert`` file (VideoMAE, MAE,
    MVD); with ``timm_model``, a local torch or safetensors state dict. Never downloaded."""
    timm_model: str = ""
    """A timm architecture (e.g. vit_base_patch16_224.dino), built with pretrained=False and loaded strictly from
    ``path`` (head.* keys dropped); empty: ``path`` is a vmim source."""
    blocks: List[int] = field(default_factory=lambda: [-1])
    """Teacher blocks (negative from the end) whose outputs are the target; several are concatenated in this order
    (dim = teacher width x len(blocks) for a ViT)."""
    final_norm: bool = False
    """Apply the teacher's final norm to the chosen blocks; False = the raw block output (MVD)."""
    norm_features: bool = False
    """LayerNorm without affine (eps 1e-6) on each block's features per token (MVD's --norm_feature, off there)."""
    input_size: int = 0
    """Teacher frame height in pixels (frames resized, bilinear); 0 = the student's frames (MVD's H/14: 196)."""
    mean: Optional[List[float]] = None
    """Teacher input mean of [0, 1] pixels; None = the source's (its run's data.mean, timm's pretrained_cfg)."""
    std: Optional[List[float]] = None
    """Teacher input std; None = the source's."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _check(bool(self.path), f"{key}.path", "a teacher needs weights: a vmim run directory, checkpoint or "
               "converted file, or a local weights file together with timm_model")
        _check(len(self.blocks) > 0 and len(set(self.blocks)) == len(self.blocks), f"{key}.blocks",
               f"{self.blocks}: name one or more distinct teacher blocks, e.g. [-1]")
        _check(self.input_size >= 0, f"{key}.input_size", f"{self.input_size} must be >= 0 (0: the student's size)")
        in_chans = cfg.model.in_chans
        for name in ("mean", "std"):
            values = getattr(self, name)
            _check(values is None or (len(values) == in_chans and (name == "mean" or min(values) > 0)),
                   f"{key}.{name}", f"{values} needs {in_chans} values (model.in_chans)"
                   + (", all positive" if name == "std" else ""))


define_family("targets", "target", nested=(("head", "heads"), ("loss", "losses")))

register("targets", "pixel", PixelTargetConfig, "vmim.targets.pixel:PixelTarget")
register("targets", "hog", HOGTargetConfig, "vmim.targets.hog:HOGTarget")
register("targets", "momentum", MomentumTargetConfig, "vmim.targets.momentum:MomentumTarget")
register("targets", "teacher", TeacherTargetConfig, "vmim.targets.teacher:TeacherTarget")
