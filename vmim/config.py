"""Typed run configuration: per-kind dataclasses, YAML files with ``_base_`` inheritance, CLI overrides.

Precedence is ``CLI overrides > experiment YAML > its _base_ files (in order) > dataclass defaults``.
Every key has a type and a default; an unknown key, a key of another kind, a wrong type or an invalid value
raises :class:`ConfigError` naming the key (and, for a typo, the closest valid key) before any work starts.

Families of interchangeable parts (backbones, maskings, targets, heads, losses, datasets) are
``{kind: dataclass}`` mappings (:data:`FAMILIES`): an entry's ``kind`` picks its dataclass, so each entry holds
exactly the keys of its kind (``norm`` is a key of a pixel target, and a HOG target rejects it, saying so), and
each builder in the package receives only its own sub-config. The mappings' keys are the registered names;
``tests/test_registries.py`` checks that every registry in the package equals its mapping here. This module
deliberately imports neither torch nor the model code, so a broken config fails in well under a second.

YAML conventions:
  * ``_base_: path`` or a list of paths, relative to the file, merged before the file's own keys.
  * A mapping holding ``_replace_: true`` replaces the inherited mapping instead of merging into it
    (for example to swap the set of targets).
  * CLI overrides are ``key.sub=value``; ``~key.sub`` deletes an entry of a free-form mapping
    (``~targets.hog`` removes the inherited HOG target).
  * Changing an entry's ``kind`` (``targets.pixel.head.kind=linear`` over an inherited decoder head) starts that
    entry afresh from the new kind's defaults plus the keys given with it: keys of the old kind do not carry over.

Validation covers every value used at run time (issue 19): a value that passes here must not fail later. Decisions:
  * Every float key must be finite (:func:`check_finite`, over the whole config tree): an ``inf`` learning rate or a
    ``nan`` mean passes every range check written as ``x > 0`` and poisons the run much later.
  * Sizes are checked first (``data.img_size``, ``data.num_frames`` >= 1), before any check divides by them.
  * What the model code needs but would only check after torch is imported is mirrored here as plain tables:
    :data:`BACKBONE_DEPTHS` (a head's or momentum target's ``block``), checked against the models by
    ``tests/test_config.py``.
  * Seeds are in ``0..2**31-1``: numpy refuses a negative seed (``np.random.seed``, ``default_rng``), and the trainer
    adds ``1000 x rank`` to ``train.seed``.
  * Disk checks (lists, folders, ``output_dir``) are :mod:`vmim.preflight`'s, not this module's.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import InputError

PIXEL_NORMS = ("per_channel", "joint", "none")
TOKEN_SETS: dict[str, tuple[str, ...]] = {"masked": ("encoder",), "visible": ("encoder",),
                                          "decoder_kept": ("encoder", "decoder")}
"""Token set -> the masks it reads (``vmim.meta_arch.token_sets`` holds the functions)."""
MASK_SECTIONS = {"encoder": "masking", "decoder": "decoder_masking"}
"""Mask name in a batch -> the config section that draws it."""
POS_EMBEDS = ("sincos_3d", "sincos_1d", "learned")
REL_POS_BIASES = ("none", "shared", "per_block")
INDEX_FORMATS = ("space", "csv", "kinetics_csv", "ssv2", "ucf101", "hmdb51", "image_folder")
IMAGE_INDEX_FORMATS = ("space", "csv", "image_folder")
DECODERS = ("auto", "decord", "pyav")
CROPS = ("multi_scale", "random_resized")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PARALLELS = ("ddp", "fsdp")
OPTIM_IMPLS = ("fused", "foreach", "for_loop")
DEVICES = ("auto", "cpu", "cuda")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ConfigError(InputError):
    """A config problem, reported with the dotted key it concerns."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


def _choice(key: str, value: str, options: tuple[str, ...] | list[str]) -> None:
    if value not in options:
        close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(key, f"'{value}' is not one of {', '.join(options)}{hint}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


SEED_LIMIT = 2**31
"""Seeds are in ``0..SEED_LIMIT-1``: numpy refuses negative seeds, and the trainer adds ``1000 x rank``."""


def _check_seed(key: str, seed: int) -> None:
    _check(0 <= seed < SEED_LIMIT, key, f"{seed} must be in 0..{SEED_LIMIT - 1} (numpy refuses negative seeds)")


def check_finite(node: Any, prefix: str = "") -> None:
    """Every float of a config tree (dataclasses, lists, dicts) is finite; raises ConfigError naming the first that is
    not. ``inf`` and ``nan`` pass checks written as ``x > 0`` or ``x >= 0`` and fail only at run time."""
    if isinstance(node, float):
        _check(math.isfinite(node), prefix, f"{node} is not a finite number")
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            check_finite(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(node, dict):
        for name, value in node.items():
            check_finite(value, f"{prefix}.{name}" if prefix else str(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite(value, f"{prefix}[{i}]")


def check_data_sizes(cfg: Any) -> None:
    """data.img_size and data.num_frames are >= 1: checked before any check divides by them."""
    d = cfg.data
    _check(d.img_size >= 1, "data.img_size", f"{d.img_size} must be >= 1 (pixels)")
    _check(d.num_frames >= 1, "data.num_frames", f"{d.num_frames} must be >= 1")


class Entry:
    """Base of every kinded entry: :meth:`check` validates what types alone cannot (nothing, by default)."""

    def check(self, key: str, cfg: "Config") -> None:
        """Raise :class:`ConfigError` naming ``key`` + the sub-key for a bad value; ``cfg`` is the whole config."""


# ----------------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------------


@dataclass
class ViTConfig(Entry):
    """A plain ViT (``vit_test`` ... ``vit_huge``) over space-time tubelets."""

    backbone: str = "vit_base"
    """Registered backbone name (``vmim list`` prints them with parameter counts)."""
    patch_size: int = 16
    """Spatial patch size in pixels; must divide data.img_size."""
    tubelet_size: int = 2
    """Frames per token; must divide data.num_frames. Images are repeated to this many frames."""
    in_chans: int = 3
    drop_path: float = 0.0
    """Stochastic depth rate at the last block (linearly increasing from 0)."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (saves memory, costs ~30% time)."""
    pos_embed: str = "sincos_3d"
    """sincos_3d (separable space-time, MAE-ST / MVD), sincos_1d (VideoMAE: over the flattened token index) or
    learned (a table for data.num_frames x data.img_size; images take its first time slice), or none (no absolute
    positions: SimMIM / BEiT, with rel_pos_bias; decoder heads then use sincos_3d)."""
    rel_pos_bias: str = "none"
    """A learned relative position bias in every block's attention (BEiT / SimMIM), for the data.num_frames x
    data.img_size token grid (smaller grids read it as is): none, shared (one table for all blocks: SimMIM
    pretraining) or per_block (one per block: fine-tuning; a shared pretrained table is copied into each)."""
    layer_scale: float = 0.0
    """Initial value of the per-channel LayerScale on both residual branches of every block (SimMIM: 0.1); 0 = off."""
    dense: bool = False
    """False: the encoder sees only the visible tokens (MAE, VideoMAE). True: every token, masked ones replaced by a
    learned mask token after the patch embedding (SimMIM, MaskFeat with a ViT); heads can then be linear."""
    mask_in: str = "tokens"
    """Where a dense encoder's mask token goes: tokens (a learned token replaces a masked token after the patch
    embedding: SimMIM, MaskFeat) or pixels (a learned colour replaces the masked pixels before it: FastMIM)."""
    cls_token: bool = False
    """Prepend a learned class token (MAE, timm ViTs; its position is folded into it). Pretraining heads never see
    it; ``global_pool: token`` reads it."""
    global_pool: str = "avg"
    """Pooled features (``forward_features``, classifiers, probes): avg = mean of the grid tokens (VideoMAE, MAE
    fine-tuning), token = the class token (timm's default)."""
    fc_norm: bool = False
    """False: the final LayerNorm acts on every token (pretraining). True: on the pooled features instead, and the
    tokens leave unnormed (VideoMAE / MAE fine-tuning: a pretrained ``norm`` is then dropped, a fresh ``fc_norm``
    learned)."""

    def check(self, key: str, cfg: "Config") -> None:
        d = cfg.data
        _check(self.patch_size > 0 and d.img_size % self.patch_size == 0, f"{key}.patch_size",
               f"{self.patch_size} does not divide data.img_size={d.img_size}")
        _check(self.tubelet_size > 0 and d.num_frames % self.tubelet_size == 0, f"{key}.tubelet_size",
               f"{self.tubelet_size} does not divide data.num_frames={d.num_frames}")
        _check(self.in_chans > 0, f"{key}.in_chans", f"{self.in_chans} must be positive")
        _check(0.0 <= self.drop_path < 1.0, f"{key}.drop_path", f"{self.drop_path} is outside [0, 1)")
        _choice(f"{key}.pos_embed", self.pos_embed, (*POS_EMBEDS, "none"))  # none: no table (not a POS_EMBEDS kind)
        _choice(f"{key}.rel_pos_bias", self.rel_pos_bias, REL_POS_BIASES)
        _check(self.layer_scale >= 0.0, f"{key}.layer_scale", f"{self.layer_scale} must be >= 0 (0 = off)")
        _choice(f"{key}.mask_in", self.mask_in, ("tokens", "pixels"))
        _choice(f"{key}.global_pool", self.global_pool, ("avg", "token"))
        _check(self.global_pool != "token" or self.cls_token, f"{key}.global_pool",
               "token pooling reads the class token: set model.cls_token=true, or use avg")


VIT_NAMES = ("vit_test", "vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant")

BACKBONE_DEPTHS: dict[str, int] = {
    "vit_test": 2, "vit_tiny": 12, "vit_small": 12, "vit_base": 12, "vit_large": 24, "vit_huge": 32, "vit_giant": 40,
    "mvitv2_test": 3, "mvitv2_demo": 6, "mvitv2_s_16x4": 16, "mvitv2_b_32x3": 24, "mvitv2_l_40x3": 48,
    "maskfeat_mvitv2_s_16x4": 16, "mvitv2_t": 10, "mvitv2_s": 16, "mvitv2_b": 24}
"""Blocks of each registered backbone (what a head's or a momentum target's ``block`` may name, negative from the
end): a copy of the models' size tables that ``tests/test_config.py`` checks, so a wrong block stops at validation
instead of after the model is built."""


def _check_block(key: str, block: int, cfg: Any) -> None:
    """``block`` is a block of cfg.model's backbone (``-depth <= block < depth``)."""
    backbone = getattr(cfg.model, "backbone", "")
    depth = BACKBONE_DEPTHS.get(backbone)
    if depth is not None:
        _check(-depth <= block < depth, key, f"{block} is not a block of the {depth}-block {backbone} "
               f"(-{depth}..{depth - 1})")

MVIT_STAGE_BLOCKS: dict[str, tuple[int, ...]] = {
    "mvitv2_test": (1, 2), "mvitv2_demo": (1, 3), "mvitv2_s_16x4": (1, 3, 14), "mvitv2_b_32x3": (2, 5, 21),
    "mvitv2_l_40x3": (2, 8, 44), "maskfeat_mvitv2_s_16x4": (1, 3, 14), "mvitv2_t": (1, 3, 8), "mvitv2_s": (1, 3, 14),
    "mvitv2_b": (2, 5, 21)}
"""Where each MViTv2 size's stages begin (q pooled 2x in space there unless ``model.q_pool_blocks`` drops some): a
copy of ``vmim.models.mvit.MVIT_SIZES`` that the contract tests check against the models."""
MVIT_STEM_STRIDE = (2, 4, 4)


@dataclass
class MViTConfig(Entry):
    """MViTv2 (``mvitv2_*``; SlowFast layout): multiscale, dense only (masked tokens become a mask token after the
    stem; pooling attention needs every token). Masks, targets and heads live on its output grid: one token per
    ``patch_size`` unit (2 x 32 x 32 pixels for MViT-S), MaskFeat's mask unit."""

    backbone: str = "mvitv2_s_16x4"
    in_chans: int = 3
    drop_path: float = 0.0
    """Stochastic depth rate at the last block (linearly increasing from 0; MViT-S 0.1, B 0.3 in SlowFast)."""
    grad_checkpointing: bool = False
    cls_token: Optional[bool] = None
    """Prepend a class token; None = the size's own (the video sizes have one, the image sizes none)."""
    global_pool: Optional[str] = None
    """avg (mean of the last stage, then its norm: MaskFeat fine-tuning), norm_avg (norm, then mean: timm / SlowFast
    images) or token; None = the size's own."""
    dim_mul_in_att: Optional[bool] = None
    """Double the width inside the q-pool block's attention (supervised MViTv2) or in the MLP before it (MaskFeat's
    MViT); None = the size's own."""
    q_pool_blocks: Optional[list[int]] = None
    """Blocks whose q is pooled 2x in space; None = every stage start. MaskFeat pre-training drops the last stage's
    (MViT-S: [1, 3]), keeping its width: 16 px output tokens (14x14 at 224) instead of 32 px; fine-tuning from it
    restores the pooling (the relative-position tables are resampled)."""

    @property
    def q_pools(self) -> tuple[int, ...]:
        return tuple(MVIT_STAGE_BLOCKS[self.backbone] if self.q_pool_blocks is None else self.q_pool_blocks)

    @property
    def patch_size(self) -> int:
        """Spatial pixels per output token (what masks, targets and data checks use)."""
        return MVIT_STEM_STRIDE[1] * 2 ** len(self.q_pools)

    @property
    def tubelet_size(self) -> int:
        return MVIT_STEM_STRIDE[0]

    @property
    def dense(self) -> bool:
        return True

    @property
    def pos_embed(self) -> str:
        """The kind of a decoder head's position table over the output grid."""
        return "sincos_3d"

    def check(self, key: str, cfg: "Config") -> None:
        d = cfg.data
        stages = MVIT_STAGE_BLOCKS[self.backbone]
        if self.q_pool_blocks is not None:
            _check(set(self.q_pool_blocks) <= set(stages) and len(set(self.q_pool_blocks)) == len(self.q_pool_blocks),
                   f"{key}.q_pool_blocks", f"{self.q_pool_blocks} must be distinct stage starts of {self.backbone}: "
                   f"{list(stages)}")
        _check(d.img_size % self.patch_size == 0, "data.img_size",
               f"{d.img_size} is not a multiple of {self.backbone}'s {self.patch_size}-pixel output tokens")
        _check(d.num_frames == 1 or d.num_frames % self.tubelet_size == 0, "data.num_frames",
               f"{d.num_frames} is not a multiple of {self.backbone}'s {self.tubelet_size}-frame output tokens")
        _check(self.in_chans > 0, f"{key}.in_chans", f"{self.in_chans} must be positive")
        _check(0.0 <= self.drop_path < 1.0, f"{key}.drop_path", f"{self.drop_path} is outside [0, 1)")
        if self.global_pool is not None:
            _choice(f"{key}.global_pool", self.global_pool, ("avg", "norm_avg", "token"))


BACKBONES: dict[str, type] = {**{name: ViTConfig for name in VIT_NAMES},
                              **{name: MViTConfig for name in MVIT_STAGE_BLOCKS}}


# ----------------------------------------------------------------------------------------------------
# Maskings
# ----------------------------------------------------------------------------------------------------


@dataclass
class MaskingConfig(Entry):
    kind: str = "tube"
    """A registered masking (random, tube, cube, running_cell, window)."""
    ratio_video: float = 0.9
    """Fraction of tokens masked in clips with more than one token in time."""
    ratio_image: float = 0.75
    """Fraction of tokens masked in images (and clips with one token in time)."""

    def check(self, key: str, cfg: "Config") -> None:
        for name in ("ratio_video", "ratio_image"):
            ratio = getattr(self, name)
            _check(0.0 < ratio < 1.0, f"{key}.{name}", f"{ratio} is outside (0, 1)")


def _check_unit_size(key: str, unit_size: List[int], cfg: "Config") -> None:
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

    def check(self, key: str, cfg: "Config") -> None:
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

    def check(self, key: str, cfg: "Config") -> None:
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

    def check(self, key: str, cfg: "Config") -> None:
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

    def check(self, key: str, cfg: "Config") -> None:
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


MASKINGS: dict[str, type] = {"random": RandomMaskingConfig, "tube": TubeMaskingConfig, "cube": CubeMaskingConfig,
                             "running_cell": RunningCellMaskingConfig, "window": WindowMaskingConfig}
DECODER_MASKINGS: dict[str, type] = {"none": NoMaskingConfig,
                                     **{k: c for k, c in MASKINGS.items() if getattr(c, "decoder_mask", True)}}


# ----------------------------------------------------------------------------------------------------
# Heads and losses
# ----------------------------------------------------------------------------------------------------


@dataclass
class DecoderHeadConfig(Entry):
    """A transformer decoder: encoder tokens + a mask token at each predicted position (MAE, VideoMAE)."""

    kind: str = "decoder"
    block: Optional[int] = None
    """Encoder block whose output (before the final norm) the head reads, negative from the end; None = the encoder
    output (after the final norm)."""
    depth: int = 4
    """Transformer blocks; 0 leaves embedding, norm and the output projection."""
    dim: int = 384
    heads: int = 6
    mlp_ratio: float = 4.0

    def check(self, key: str, cfg: "Config") -> None:
        if self.block is not None:
            _check_block(f"{key}.block", self.block, cfg)
        _check(self.depth >= 0, f"{key}.depth", f"{self.depth} must be >= 0")
        _check(self.dim > 0 and self.heads > 0 and self.dim % self.heads == 0, f"{key}.heads",
               f"{self.heads} must divide dim={self.dim}")
        _check(self.mlp_ratio > 0, f"{key}.mlp_ratio", f"{self.mlp_ratio} must be positive")
        if getattr(cfg.model, "pos_embed", "sincos_3d") == "sincos_1d":
            _check(self.dim % 2 == 0, f"{key}.dim", f"{self.dim} must be even for the 1-D sin-cos table")
        else:
            _check((self.dim // 4) % 2 == 0 and (self.dim - self.dim // 4) % 4 == 0, f"{key}.dim",
                   f"{self.dim} cannot carry the space-time sin-cos table (a multiple of 16 always can)")


@dataclass
class LinearHeadConfig(Entry):
    """A linear layer on the encoder's own tokens at the predicted positions: no mask tokens, no scatter (MaskFeat on
    a dense backbone, MR-MAE's mimic head on visible tokens)."""

    kind: str = "linear"
    block: Optional[int] = None
    """Encoder block whose output (before the final norm) the head reads, negative from the end; None = the encoder
    output (after the final norm). MR-MAE-style mimicking from an inner block."""

    def check(self, key: str, cfg: "Config") -> None:
        if self.block is not None:
            _check_block(f"{key}.block", self.block, cfg)


HEADS: dict[str, type] = {"decoder": DecoderHeadConfig, "linear": LinearHeadConfig}


@dataclass
class MSELossConfig(Entry):
    """Mean squared error per token, averaged over features (MAE, VideoMAE, MaskFeat)."""

    kind: str = "mse"


@dataclass
class SmoothL1LossConfig(Entry):
    """Huber-style smooth L1 (MVD's feature loss)."""

    kind: str = "smooth_l1"
    beta: float = 1.0
    """Below |error| = beta the loss is quadratic, above it linear."""

    def check(self, key: str, cfg: "Config") -> None:
        _check(self.beta > 0, f"{key}.beta", f"{self.beta} must be positive")


@dataclass
class L1LossConfig(Entry):
    """Mean absolute error per token (SimMIM)."""

    kind: str = "l1"


@dataclass
class CosineLossConfig(Entry):
    """1 - cosine similarity per token (feature mimicking)."""

    kind: str = "cosine"


LOSSES: dict[str, type] = {"mse": MSELossConfig, "smooth_l1": SmoothL1LossConfig, "l1": L1LossConfig,
                           "cosine": CosineLossConfig}


# ----------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------


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

    def check(self, key: str, cfg: "Config") -> None:
        _check(self.weight > 0 and math.isfinite(self.weight), f"{key}.weight", f"{self.weight} must be positive")
        _choice(f"{key}.token_set", self.token_set, list(TOKEN_SETS))
        for mask in TOKEN_SETS[self.token_set]:
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

    def check(self, key: str, cfg: "Config") -> None:
        super().check(key, cfg)
        _choice(f"{key}.norm", self.norm, PIXEL_NORMS)


@dataclass
class HOGTargetConfig(TargetConfig):
    """Histograms of oriented gradients (MaskFeat)."""

    nbins: int = 9
    """Orientation bins over 0..pi."""
    cell_size: int = 8
    """Cell size in pixels; must divide model.patch_size."""

    def check(self, key: str, cfg: "Config") -> None:
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

    def check(self, key: str, cfg: "Config") -> None:
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

    def check(self, key: str, cfg: "Config") -> None:
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


TARGETS: dict[str, type] = {"pixel": PixelTargetConfig, "hog": HOGTargetConfig, "momentum": MomentumTargetConfig,
                            "teacher": TeacherTargetConfig}


# ----------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------


@dataclass
class DatasetConfig(Entry):
    """What every dataset entry has; its kind adds its own keys."""

    kind: str = ""
    """A registered dataset kind; empty means the entry's key."""
    weight: float = 1.0
    """Passes over this dataset per epoch (a repeat factor; 0.5 = half of it each epoch)."""
    fraction: float = 1.0
    """Use this fraction of the list, stratified by label and fixed by ``subset_seed`` (low-label fine-tuning:
    0.1 = 10 % of the labels); 1 = all of it."""
    subset_seed: int = 0

    def check(self, key: str, cfg: "Config") -> None:
        _check(self.weight > 0, f"{key}.weight", f"{self.weight} must be positive")
        _check(0 < self.fraction <= 1, f"{key}.fraction", f"{self.fraction} is outside (0, 1]")
        _check_seed(f"{key}.subset_seed", self.subset_seed)


@dataclass
class DigitsDatasetConfig(DatasetConfig):
    """Built-in scikit-learn digits: images (label = digit), bouncing clips (label = digit) or motion clips (label =
    the direction the digit moves, on a torus from a random start: one frame alone is at chance)."""

    split: str = "train"
    """train or test (a fixed stratified 80/20 split)."""

    def check(self, key: str, cfg: "Config") -> None:
        super().check(key, cfg)
        _choice(f"{key}.split", self.split, ("train", "test"))


@dataclass
class DigitMotionDatasetConfig(DigitsDatasetConfig):
    """Built-in digits motion clips (label = the direction the digit steps, on a torus from a random start: one frame
    alone is at chance), with the step's size and rhythm."""

    speed: int = 3
    """Pixels per step (3: the video and MVD demos); not a multiple of half of data.img_size (left would be right)."""
    hold: int = 2
    """Frames per position: the digit steps every ``hold`` frames."""

    def check(self, key: str, cfg: "Config") -> None:
        super().check(key, cfg)
        size = cfg.data.img_size
        _check(self.speed > 0 and (2 * self.speed) % size != 0, f"{key}.speed",
               f"{self.speed} must be positive and not a multiple of half the {size} px canvas (data.img_size)")
        _check(self.hold > 0, f"{key}.hold", f"{self.hold} must be positive")


@dataclass
class FileDatasetConfig(DatasetConfig):
    """Files listed in an index (videos or images)."""

    format: str = "space"
    """Index format ('path label' lines, CSV, Kinetics CSV, SSv2 JSON, UCF101 / HMDB51 split files, an
    ImageFolder tree)."""
    path: str = ""
    """The list or annotation file (the image folder for image_folder)."""
    root: str = ""
    """Folder that relative paths in the list point into; empty = the list file's folder."""
    missing: str = "error"
    """Listed files that do not exist at start-up: error (stop, listing the first 10) or drop (report, go on)."""
    crop: str = ""
    """multi_scale (VideoMAE) or random_resized (MaskFeat, images); empty = multi_scale for video, random_resized
    for images."""
    crop_scale: List[float] = field(default_factory=lambda: [0.2, 1.0])
    """random_resized only: range of the crop's area as a fraction of the frame (MAE / FastMIM: [0.2, 1])."""
    flip: Optional[bool] = None
    """Random horizontal flip; None = on for images, off for video (never flip SSv2: labels have a direction)."""

    formats = INDEX_FORMATS

    def check(self, key: str, cfg: "Config") -> None:
        super().check(key, cfg)
        _choice(f"{key}.format", self.format, self.formats)
        _check(bool(self.path), f"{key}.path", "a list / annotation file (or image folder) is required")
        _choice(f"{key}.missing", self.missing, ("error", "drop"))
        if self.crop:
            _choice(f"{key}.crop", self.crop, CROPS)
        _check(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, f"{key}.crop_scale",
               f"{self.crop_scale} must be [low, high] with 0 < low <= high <= 1")
        _check(cfg.model.in_chans == 3, "model.in_chans",
               f"{cfg.model.in_chans} channels, but {key} reads video / image files, which are decoded as RGB "
               "(3 channels); other channel counts work with the built-in digits datasets only")


@dataclass
class VideoDatasetConfig(FileDatasetConfig):
    """Videos decoded with decord or PyAV."""

    labels: str = ""
    """ssv2: the labels JSON; ucf101: classInd.txt."""
    decoder: str = "decord"
    """decord, pyav, or auto (decord, falling back to PyAV for what decord cannot read, e.g. AV1)."""
    stride: int = 4
    """Source frames between sampled frames (K400: 4, SSv2: 2)."""
    target_fps: float = 0.0
    """Resample to this frame rate before striding; 0 keeps each video's own rate."""
    sampling: str = "window"
    """window: num_frames frames ``stride`` apart at a random start (VideoMAE, MaskFeat); segments: one random
    frame in each of num_frames equal segments of the whole video (TSN / SSv2 fine-tuning style)."""
    overflow: str = "loop"
    """A window longer than the video: loop it, or pad with the last frame."""
    split_number: int = 1
    """hmdb51: which official split (1-3) of the folder of split files (UCF101 picks it by its list file)."""
    partition: str = "train"
    """hmdb51: the split's train or test videos."""

    def check(self, key: str, cfg: "Config") -> None:
        super().check(key, cfg)
        _choice(f"{key}.decoder", self.decoder, DECODERS)
        _check(self.stride >= 1, f"{key}.stride", f"{self.stride} must be >= 1")
        _check(self.target_fps >= 0, f"{key}.target_fps", f"{self.target_fps} must be >= 0")
        _choice(f"{key}.sampling", self.sampling, ("window", "segments"))
        _choice(f"{key}.overflow", self.overflow, ("loop", "pad"))
        _check(self.split_number in (1, 2, 3), f"{key}.split_number", f"{self.split_number} must be 1, 2 or 3")
        _choice(f"{key}.partition", self.partition, ("train", "test"))
        if self.format in ("ssv2", "ucf101"):
            _check(bool(self.labels), f"{key}.labels", f"format {self.format} needs its labels file")


@dataclass
class ImageDatasetConfig(FileDatasetConfig):
    """Images decoded with PIL (one-frame clips)."""

    formats = IMAGE_INDEX_FORMATS


DATASETS: dict[str, type] = {"digits_images": DigitsDatasetConfig, "digits_clips": DigitsDatasetConfig,
                             "digits_motion": DigitMotionDatasetConfig, "video": VideoDatasetConfig,
                             "image": ImageDatasetConfig}


# ----------------------------------------------------------------------------------------------------
# Families: how an entry's kind picks its dataclass
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A ``{kind: dataclass}`` mapping and how an entry names its kind."""

    noun: str
    kinds: dict
    kind_field: str = "kind"
    default_kind: Optional[str] = None
    """Kind of an entry that names none; None = the entry's own key (targets, datasets)."""
    nested: tuple = ()
    """(field name, Family) of kinded sub-entries (a target's head and loss)."""
    plural: str = ""
    """The noun's plural when it is not noun + s."""


HEAD_FAMILY = Family("head", HEADS, default_kind="decoder")
LOSS_FAMILY = Family("loss", LOSSES, default_kind="mse", plural="losses")
FAMILIES: dict[str, Family] = {
    "backbones": Family("backbone", BACKBONES, kind_field="backbone", default_kind="vit_base"),
    "maskings": Family("masking", MASKINGS, default_kind="tube"),
    "decoder_maskings": Family("decoder masking", DECODER_MASKINGS, default_kind="none"),
    "targets": Family("target", TARGETS, nested=(("head", HEAD_FAMILY), ("loss", LOSS_FAMILY))),
    "heads": HEAD_FAMILY,
    "losses": LOSS_FAMILY,
    "datasets": Family("dataset", DATASETS),
}


# ----------------------------------------------------------------------------------------------------
# Plain sections
# ----------------------------------------------------------------------------------------------------


@dataclass
class ResolutionStage:
    """From ``epoch`` on, clips are resized to ``img_size`` (progressive resolution: FastMIM-P)."""

    epoch: int = 0
    img_size: int = 224


@dataclass
class DataConfig:
    datasets: Dict[str, Any] = field(default_factory=dict)
    """name -> a dataset entry (its kind: digits_images, digits_clips, video, image)."""
    img_size: int = 224
    """Side of the square crop fed to the model (with img_size_schedule: the largest stage's, which sources crop at
    and the model's tables are built for)."""
    img_size_schedule: List[ResolutionStage] = field(default_factory=list)
    """Progressive resolution (FastMIM-P): ``[{epoch: 0, img_size: 128}, {epoch: 200, img_size: 160}, ...]``, from
    epoch 0, epochs increasing; each stage's clips are cropped at img_size and resized to its own (antialiased
    bilinear) in the loader, so every batch of an epoch has that epoch's size. Empty: img_size throughout."""
    num_frames: int = 16
    """Frames per video clip; images are one frame."""
    batch_size: int = 32
    """Sampled videos/images per device per micro-batch. Global batch = batch_size x repeat x world size x
    accum_steps clips; the learning rate scales with it."""
    repeat: int = 1
    """Repeated sampling: decode each sample once and return this many independently cropped and masked clips
    (VideoMAE V2 num_sample, OmniMAE Replicate); cuts decode cost per clip."""
    num_workers: int = 4
    pin_memory: bool = True
    max_bad_fraction: float = 0.01
    """Stop when a dataset's missing + undecodable files exceed this fraction of its list."""
    decode_timeout_s: float = 60.0
    """Give up on one sample after this long (counted as a bad file); 0 disables the limit."""
    decode_isolation: bool = True
    """Decode files in a child process of each loader worker, killed and replaced when it passes the timeout or
    crashes: catches decoders stuck inside C and segfaults. False: a SIGALRM limit in the worker itself, which
    interrupts Python code and blocking reads only."""
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class OptimConfig:
    lr: float = 1.5e-4
    """Peak learning rate per 256 samples; the run uses lr x global_batch / 256."""
    min_lr: float = 1e-5
    """Final learning rate per 256 samples, scaled like lr."""
    warmup_epochs: float = 40.0
    weight_decay: float = 0.05
    """Decoupled weight decay; never applied to norms, biases, or what a module lists in no_weight_decay()."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: float = 0.0
    """Max global gradient norm; 0 disables clipping (the norm is still logged)."""
    accum_steps: int = 1
    """Micro-batches per optimizer step."""
    layer_decay: float = 1.0
    """Layer-wise lr decay (MAE / VideoMAE fine-tuning: 0.65-0.75): block i of L gets lr x decay^(L - i), the stem
    decay^(L + 1), what follows the blocks (norms, head) the full lr. 1 = off."""
    impl: str = "fused"
    """AdamW's kernels: fused (one kernel for every parameter, CPU and CUDA: ~10x faster than for_loop on a ViT-B's
    ~100M parameters on CPU), foreach (one kernel per op over all parameters) or for_loop (torch's per-parameter
    loop, the reference repos' default on CPU). Where fused is unsupported (e.g. a device without the kernel) the run
    falls back to foreach and says so."""


@dataclass
class TrainConfig:
    epochs: int = 800
    steps_per_epoch: int = 0
    """Optimizer steps per epoch; 0 = one pass over the weighted data mix."""
    seed: int = 0
    precision: str = "auto"
    """auto, fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only). auto is bf16 on CUDA GPUs with bf16
    and on CPUs with AVX512-BF16 or AMX, fp32 elsewhere (AVX2-only CPUs emulate bf16, far slower); the log says
    which and why (vmim/engine/precision.py)."""
    device: str = "auto"
    compile: bool = False
    """``torch.compile`` every transformer block in place (vmim/engine/compile.py): the first steps pay the compile
    time; measure with tools/bench_pretrain.py --compile before a long run."""
    parallel: str = "ddp"
    """How several processes split the work: ddp (every rank holds the whole model, gradients all-reduced) or fsdp
    (FSDP2 ``fully_shard`` per transformer block, then the root: parameters, gradients and optimizer state sharded
    over the ranks, for ViT-L/H/g; checkpoints become folders, ``vmim.engine.fsdp``). One process runs unsharded
    either way. Pretraining only; fp32 or bf16 (fp16's loss scaling is not shard-aware here)."""
    nan_patience: int = 20
    """Stop after this many optimizer steps in a row with a non-finite loss or gradient."""


@dataclass
class LogConfig:
    every_steps: int = 20
    """Scalars to TensorBoard, metrics.jsonl and log.txt every N optimizer steps."""
    image_every_steps: int = 500
    """Input / masked / reconstruction grid every N steps (pixel targets); 0 = never."""
    progress_bar: bool = True


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Overwrite checkpoints/last.pt every N optimizer steps (and at every epoch end)."""
    keep_every_steps: int = 0
    """Also keep checkpoints/step_XXXXXXXX.pt every N steps; 0 = keep only last.pt."""


KINDED_SECTIONS = {"model": "backbones", "masking": "maskings", "decoder_masking": "decoder_maskings"}
"""Top-level keys of a pretraining config holding one kinded entry, and their family."""


@dataclass
class Config:
    """A pretraining run (``task: pretrain``)."""

    KINDED = KINDED_SECTIONS
    """Top-level keys holding one kinded entry -> family."""
    MAPPINGS = {"targets": "targets", "data.datasets": "datasets"}
    """Dotted keys holding named kinded entries -> family."""

    task: str = "pretrain"
    """Which schema the file follows: pretrain, or finetune (``vmim.finetune_config``; fine-tuning, eval, probe)."""
    output_dir: str = "runs/default"
    resume: str = "auto"
    """auto: continue from output_dir's newest complete checkpoint if any; never; or a checkpoint path."""
    model: Any = None
    """The backbone: ``backbone`` names it and picks its keys (ViTConfig for vit_*)."""
    masking: Any = None
    """The encoder's mask: ``kind`` random, tube, cube, running_cell or window (LoMaR), with that kind's keys."""
    decoder_masking: Any = None
    """A second mask for the decoder (VideoMAE V2: running_cell 0.5); kind none (default) = no decoder mask."""
    targets: Dict[str, Any] = field(default_factory=dict)
    """name -> a target entry (its kind: pixel, hog), with its head and loss."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:  # programmatic Config(): each kinded section at its family's default
        fill_kinded_defaults(self)

    def validate(self) -> None:
        validate(self)


def fill_kinded_defaults(cfg: Any) -> None:
    """Each kinded section of ``cfg`` still None becomes its family's default entry."""
    for section, family in type(cfg).KINDED.items():
        if getattr(cfg, section) is None:
            setattr(cfg, section, build_entry(section, {}, FAMILIES[family]))


def task_schemas() -> dict[str, type]:
    """``task`` value -> its top-level config dataclass."""
    from .finetune_config import FinetuneConfig  # imports this module: a late import

    return {"pretrain": Config, "finetune": FinetuneConfig}


def video_grid(cfg: Config) -> tuple[int, int, int]:
    """Token grid of a training clip (data.num_frames x data.img_size², the backbone's patch)."""
    m, d = cfg.model, cfg.data
    return d.num_frames // m.tubelet_size, d.img_size // m.patch_size, d.img_size // m.patch_size


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: List[str] | None = None, task: str | None = None) -> Any:
    """Load, merge and validate a config; raises ConfigError on any problem.

    The file's ``task`` key (default pretrain) picks the schema; ``task`` given here must match it (a fine-tuning
    command refuses a pretraining file, naming the key)."""
    raw = apply_overrides(_load_yaml_tree(Path(path)) if path is not None else {}, overrides or [])
    if task is not None:
        found = raw.get("task", "pretrain")
        _check(found == task, "task", f"this command takes a '{task}' config, and this one is '{found}'"
               + (f" ({path})" if path is not None else "") + f"; set task: {task}")
    return build_config(raw)


def apply_overrides(raw: dict, overrides: List[str]) -> dict:
    """``raw`` with ``key.sub=value`` overrides merged in and ``~key.sub`` entries deleted."""
    sets, deletes = _split_overrides(overrides)
    for key in deletes:
        _delete_key(raw, key)
    if sets:
        try:
            dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(sets))
        except OmegaConfBaseException as err:
            raise ConfigError(getattr(err, "full_key", None) or "?", str(err).splitlines()[0]) from None
        raw = _deep_merge(raw, dotlist)
    return raw


def build_config(raw: dict) -> Any:
    """A validated config from a merged plain mapping (YAML + overrides); its ``task`` key picks the schema."""
    raw = dict(raw)
    schemas = task_schemas()
    task = raw.get("task", "pretrain")
    _choice("task", str(task), list(schemas))
    cls = schemas[task]
    kinded = {section: raw.pop(section, None) for section in cls.KINDED}
    mappings = {path: _pop_dotted(raw, path) for path in cls.MAPPINGS}
    schema = OmegaConf.structured(cls)
    OmegaConf.set_struct(schema, True)
    merged = _merge_checked(schema, raw, schema, "")
    cfg = OmegaConf.to_object(merged)
    for section, family in cls.KINDED.items():
        setattr(cfg, section, build_entry(section, kinded[section], FAMILIES[family]))
    for path, family in cls.MAPPINGS.items():
        *parents, last = path.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        setattr(node, last, _build_mapping(path, mappings[path], FAMILIES[family]))
    cfg.validate()
    return cfg


def _pop_dotted(raw: dict, path: str) -> Any:
    """Remove and return ``raw[a][b]`` for ``path`` 'a.b' ({} when absent), copying the parents it walks through."""
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    return node.pop(last, None) or {}


def load_dataclass(schema_cls: type, path: str | Path | None, overrides: List[str]) -> Any:
    """Any strict dataclass config (e.g. a cluster profile) from YAML (``_base_`` allowed) plus key=value overrides."""
    raw = _load_yaml_tree(Path(path)) if path is not None else {}
    schema = OmegaConf.structured(schema_cls)
    OmegaConf.set_struct(schema, True)
    merged = _merge_checked(schema, raw, schema, "")
    if overrides:
        merged = _merge_checked(merged, OmegaConf.from_dotlist(overrides), schema, "")
    return OmegaConf.to_object(merged)


def config_to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))


def _build_mapping(key: str, raw: Any, family: Family) -> dict:
    _check(isinstance(raw, dict), key, f"must be a mapping of named entries, got {raw!r}")
    return {str(name): build_entry(f"{key}.{name}", entry, family, default_kind=str(name))
            for name, entry in raw.items()}


def build_entry(key: str, raw: Any, family: Family, default_kind: str | None = None) -> Any:
    """One kinded entry: its kind picks the dataclass, which must hold every key given.

    Raises:
        ConfigError: unknown kind, a key of another kind of the family, an unknown key, or a bad value.
    """
    raw = dict(raw or {}) if isinstance(raw, (dict, DictConfig)) or raw is None else raw
    _check(isinstance(raw, dict), key, f"must be a mapping, got {raw!r}")
    kind = raw.get(family.kind_field) or family.default_kind or default_kind
    _choice(f"{key}.{family.kind_field}", str(kind), list(family.kinds))
    cls = family.kinds[kind]
    own = {f.name for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in own:
            owners = sorted(k for k, c in family.kinds.items() if name in {f.name for f in dataclasses.fields(c)})
            if owners:
                article = "an" if str(kind)[0] in "aeiou" else "a"
                raise ConfigError(f"{key}.{name}", f"is not a key of {article} {kind} {family.noun}; it belongs to "
                                  f"{', '.join(owners)} {family.plural or family.noun + 's'}")
            close = difflib.get_close_matches(str(name), sorted(own), n=1, cutoff=0.5)
            hint = f" (did you mean '{key}.{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}.{name}", f"unknown key{hint}")
    nested = {name: raw.pop(name, None) for name, _ in family.nested}
    raw[family.kind_field] = kind
    schema = OmegaConf.structured(cls)
    OmegaConf.set_struct(schema, True)
    entry = OmegaConf.to_object(_merge_checked(schema, raw, schema, key))
    for name, sub_family in family.nested:
        setattr(entry, name, build_entry(f"{key}.{name}", nested[name], sub_family))
    return entry


def _load_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError("_base_" if seen else "--config", f"file not found: {path}")
    if path in seen:
        raise ConfigError("_base_", f"inheritance cycle through {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping at the top level")
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, _load_yaml_tree(path.parent / base, seen + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and "_replace_" in value:
            replace = value["_replace_"]
            value = {k: v for k, v in value.items() if k != "_replace_"}
            out[key] = value if replace else _deep_merge(out.get(key) or {}, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = dict(value) if _kind_changed(out[key], value) else _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _kind_changed(old: dict, new: dict) -> bool:
    """Whether ``new`` gives an entry another kind (``kind``), or a backbone of another family (``backbone``: a ViT
    size for an MViT one): its keys then start afresh instead of merging into the old kind's."""
    old_kind, new_kind = old.get("kind"), new.get("kind")
    if isinstance(old_kind, str) and isinstance(new_kind, str) and old_kind != new_kind:
        return True
    old_bb, new_bb = old.get("backbone"), new.get("backbone")
    return isinstance(old_bb, str) and isinstance(new_bb, str) and BACKBONES.get(old_bb) is not BACKBONES.get(new_bb)


def _split_overrides(overrides: List[str]) -> tuple[List[str], List[str]]:
    sets, deletes = [], []
    for item in overrides:
        if item.startswith("~"):
            deletes.append(item[1:])
        elif "=" in item:
            sets.append(item)
        else:
            raise ConfigError(item, "overrides are written key.sub=value (or ~key.sub to delete)")
    return sets, deletes


def _delete_key(raw: dict, dotted: str) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            break
    if not isinstance(node, dict) or last not in node:
        raise ConfigError(dotted, "cannot delete: no such entry in the config files")
    del node[last]


def _merge_checked(base: DictConfig, new: Any, schema: DictConfig, prefix: str) -> DictConfig:
    """OmegaConf merge whose errors become ConfigError with the full dotted key (``prefix`` + the node's key)."""
    def full(key: Any) -> str:
        key = str(key or "?")
        return f"{prefix}.{key}" if prefix else key

    try:
        return OmegaConf.merge(base, new)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        raise ConfigError(full(key), f"unknown key{_suggest_key(schema, key, prefix)}") from None
    except ValidationError as err:
        raise ConfigError(full(err.full_key), f"invalid value: {err.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(full(getattr(err, "full_key", None)), str(err).splitlines()[0]) from None


def _suggest_key(schema: DictConfig, key: str, prefix: str) -> str:
    """' (did you mean 'model.patch_size'?)' for a misspelled key, else ''."""
    parts = key.split(".")
    node: Any = schema
    for part in parts[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            return ""
    if not isinstance(node, DictConfig):
        return ""
    names = [str(k) for k in node.keys()]
    if not prefix and len(parts) == 1:
        names += list(KINDED_SECTIONS) + ["targets"]
    close = difflib.get_close_matches(parts[-1], names, n=1, cutoff=0.5)
    full = ".".join(([prefix] if prefix else []) + parts[:-1] + close)
    return f" (did you mean '{full}'?)" if close else ""


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


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
        readers = [name for name, sets in TOKEN_SETS.items() if mask in sets]
        _check(getattr(cfg, section).kind == "none" or any(t.token_set in readers for t in cfg.targets.values()),
               f"{section}.kind", f"a {mask} mask is drawn but no target uses it: set targets.<name>.token_set to "
               f"one of {', '.join(readers)}")

    validate_common(cfg)


def _check_img_size_schedule(cfg: Any) -> None:
    d, patch = cfg.data, getattr(cfg.model, "patch_size", None)
    for i, stage in enumerate(d.img_size_schedule):
        key = f"data.img_size_schedule[{i}]"
        _check(stage.epoch == 0 if i == 0 else stage.epoch > d.img_size_schedule[i - 1].epoch, f"{key}.epoch",
               f"{stage.epoch}: the first stage starts at epoch 0 and each later one after the one before")
        _check(0 < stage.img_size <= d.img_size, f"{key}.img_size",
               f"{stage.img_size} must be in 1..data.img_size={d.img_size} (sources crop at data.img_size, then "
               f"resize to the stage's)")
        _check(patch is None or stage.img_size % patch == 0, f"{key}.img_size",
               f"{stage.img_size} is not a multiple of model.patch_size={patch}")


def stage_grids(cfg: Any) -> list[tuple[int, int, int]]:
    """The training clip's token grid at data.img_size and at every img_size_schedule stage's size."""
    t, h, _ = video_grid(cfg)
    sizes = [cfg.data.img_size] + [s.img_size for s in cfg.data.img_size_schedule]
    return [(t, h * size // cfg.data.img_size, h * size // cfg.data.img_size) for size in sizes]


def validate_common(cfg: Any) -> None:
    """Checks of what every task's config has: model, data, optim, train, log, checkpoint, resume."""
    d = cfg.data
    _check(len(d.datasets) > 0, "data.datasets", "at least one dataset is required")
    _check_img_size_schedule(cfg)
    for name, ds in d.datasets.items():
        ds.check(f"data.datasets.{name}", cfg)
    _check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", f"{d.max_bad_fraction} is outside [0, 1]")
    _check(d.decode_timeout_s >= 0, "data.decode_timeout_s", f"{d.decode_timeout_s} must be >= 0")
    _check(d.batch_size > 0, "data.batch_size", f"{d.batch_size} must be positive")
    _check(d.repeat >= 1, "data.repeat", f"{d.repeat} must be >= 1")
    _check(d.num_workers >= 0, "data.num_workers", f"{d.num_workers} must be >= 0")
    in_chans = cfg.model.in_chans
    _check(len(d.mean) == in_chans, "data.mean", f"needs {in_chans} values (model.in_chans)")
    _check(len(d.std) == in_chans and all(s > 0 for s in d.std), "data.std",
           f"needs {in_chans} positive values (model.in_chans)")

    o = cfg.optim
    _check(o.lr > 0, "optim.lr", f"{o.lr} must be positive")
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", f"{o.min_lr} must be in [0, optim.lr]")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"{o.weight_decay} must be >= 0")
    _check(o.eps > 0, "optim.eps", f"{o.eps} must be positive")
    _check(o.warmup_epochs >= 0, "optim.warmup_epochs", f"{o.warmup_epochs} must be >= 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           f"{o.betas} must be 2 values in [0, 1)")
    _check(0 < o.layer_decay <= 1, "optim.layer_decay", f"{o.layer_decay} is outside (0, 1]")
    _check(o.clip_grad >= 0, "optim.clip_grad", f"{o.clip_grad} must be >= 0")
    _check(o.accum_steps >= 1, "optim.accum_steps", f"{o.accum_steps} must be >= 1")
    _choice("optim.impl", o.impl, OPTIM_IMPLS)

    t = cfg.train
    _check(t.epochs >= 1, "train.epochs", f"{t.epochs} must be >= 1")
    _check(t.steps_per_epoch >= 0, "train.steps_per_epoch", f"{t.steps_per_epoch} must be >= 0")
    _choice("train.precision", t.precision, PRECISIONS)
    _choice("train.parallel", t.parallel, PARALLELS)
    _check(t.parallel == "ddp" or (t.precision != "fp16" and cfg.task == "pretrain"), "train.parallel",
           f"fsdp runs pretraining in fp32 or bf16 (this is {cfg.task} with train.precision={t.precision}); use "
           "train.parallel=ddp, or train.precision=bf16")
    _choice("train.device", t.device, DEVICES)
    _check(t.precision != "fp16" or t.device != "cpu", "train.precision",
           "fp16 (with its loss scaler) runs on CUDA only; use bf16 or fp32 with train.device=cpu")
    _check_seed("train.seed", t.seed)
    _check(t.nan_patience >= 1, "train.nan_patience", f"{t.nan_patience} must be >= 1")
    _check(cfg.log.every_steps >= 1, "log.every_steps", f"{cfg.log.every_steps} must be >= 1")
    _check(cfg.log.image_every_steps >= 0, "log.image_every_steps", f"{cfg.log.image_every_steps} must be >= 0 "
           "(0 = never)")
    _check(cfg.checkpoint.every_steps >= 1, "checkpoint.every_steps", f"{cfg.checkpoint.every_steps} must be >= 1")
    _check(cfg.checkpoint.keep_every_steps >= 0, "checkpoint.keep_every_steps",
           f"{cfg.checkpoint.keep_every_steps} must be >= 0 (0 = keep only last.pt)")
    _check(bool(cfg.output_dir and cfg.output_dir.strip()), "output_dir", "must name a folder")
    _check(cfg.resume in ("auto", "never") or cfg.resume.endswith((".pt", ".pth")) or Path(cfg.resume).is_dir(),
           "resume", f"'{cfg.resume}' must be auto, never, a path to a .pt checkpoint, or a sharded checkpoint folder "
           f"(train.parallel=fsdp)")


__all__ = [
    "Config", "ConfigError", "ViTConfig", "MaskingConfig", "TargetConfig", "DatasetConfig", "DataConfig",
    "OptimConfig", "TrainConfig", "LogConfig", "CheckpointConfig", "FAMILIES", "Family", "build_entry",
    "load_config", "build_config", "validate", "config_to_yaml", "video_grid", "MISSING", "BACKBONE_DEPTHS",
    "check_finite", "check_data_sizes",
]
