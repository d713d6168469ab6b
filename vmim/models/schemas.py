"""Torch-free schemas of the model kinds: backbone sizes (the one table the models build from), the backbone and
head config dataclasses, and their registration lines.

Decision: **geometry lives here, once.** A ViT's width / depth / heads and an MViT's stages are plain tables that
validation needs before torch is imported (a head's ``block`` must be a block of the backbone; an MViT's output
token size follows from its stages). ``vmim.models.vit`` and ``vmim.models.mvit`` build from these same tables,
so no copy can drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..config.checks import Entry, _check, _choice
from ..config.registry import define_family, register

Triple = tuple[int, int, int]
POS_EMBEDS = ("sincos_3d", "sincos_1d", "learned")
REL_POS_BIASES = ("none", "shared", "per_block")


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


VIT_SIZES = {
    "vit_test": ViTSize(64, 2, 2),
    "vit_tiny": ViTSize(192, 12, 3),
    "vit_small": ViTSize(384, 12, 6),
    "vit_base": ViTSize(768, 12, 12),
    "vit_large": ViTSize(1024, 24, 16),
    "vit_huge": ViTSize(1280, 32, 16),
    "vit_giant": ViTSize(1408, 40, 16, 48 / 11),  # VideoMAE V2's ViT-g (timm vit_giant_patch14): MLP 6144 wide
}


@dataclass(frozen=True)
class MViTSize:
    """Architecture of a registered size: widths and heads double at each ``stage_blocks`` entry, where q is also
    pooled unless the model is built with fewer ``q_pool_blocks`` (MaskFeat pre-training)."""

    depth: int
    embed_dim: int
    num_heads: int
    stage_blocks: tuple[int, ...]
    input_size: Triple  # (T, H, W) pixels the relative-position tables are sized for
    kv_stride_adaptive: Triple
    cls_token: bool
    rel_pos_temporal: bool = True
    dim_mul_in_att: bool = True


MVIT_SIZES = {
    "mvitv2_test": MViTSize(3, 32, 1, (1, 2), (4, 64, 64), (1, 4, 4), False),
    "mvitv2_demo": MViTSize(6, 48, 1, (1, 3), (4, 32, 32), (1, 2, 2), False),
    "mvitv2_s_16x4": MViTSize(16, 96, 1, (1, 3, 14), (16, 224, 224), (1, 8, 8), True),
    "mvitv2_b_32x3": MViTSize(24, 96, 1, (2, 5, 21), (32, 224, 224), (1, 8, 8), True),
    "mvitv2_l_40x3": MViTSize(48, 144, 2, (2, 8, 44), (40, 312, 312), (1, 8, 8), True),
    "maskfeat_mvitv2_s_16x4": MViTSize(16, 96, 1, (1, 3, 14), (16, 224, 224), (1, 8, 8), True,
                                       dim_mul_in_att=False),
    "mvitv2_t": MViTSize(10, 96, 1, (1, 3, 8), (1, 224, 224), (1, 4, 4), False, rel_pos_temporal=False),
    "mvitv2_s": MViTSize(16, 96, 1, (1, 3, 14), (1, 224, 224), (1, 4, 4), False, rel_pos_temporal=False),
    "mvitv2_b": MViTSize(24, 96, 1, (2, 5, 21), (1, 224, 224), (1, 4, 4), False, rel_pos_temporal=False),
}
MVIT_STEM_STRIDE = (2, 4, 4)
"""The MViT stem's (t, h, w) stride: pixels per token before any q pooling."""

BACKBONE_DEPTHS: dict[str, int] = {**{n: s.depth for n, s in VIT_SIZES.items()},
                                   **{n: s.depth for n, s in MVIT_SIZES.items()}}
"""Blocks of each registered backbone (what a head's or a momentum target's ``block`` may name, negative from the
end)."""
MVIT_STAGE_BLOCKS: dict[str, tuple[int, ...]] = {n: s.stage_blocks for n, s in MVIT_SIZES.items()}
"""Where each MViTv2 size's stages begin (q pooled 2x in space there unless ``model.q_pool_blocks`` drops some)."""


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

    def check(self, key: str, cfg: Any) -> None:
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


def _check_block(key: str, block: int, cfg: Any) -> None:
    """``block`` is a block of cfg.model's backbone (``-depth <= block < depth``)."""
    backbone = getattr(cfg.model, "backbone", "")
    depth = BACKBONE_DEPTHS.get(backbone)
    if depth is not None:
        _check(-depth <= block < depth, key, f"{block} is not a block of the {depth}-block {backbone} "
               f"(-{depth}..{depth - 1})")

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

    def check(self, key: str, cfg: Any) -> None:
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

    def check(self, key: str, cfg: Any) -> None:
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

    def check(self, key: str, cfg: Any) -> None:
        if self.block is not None:
            _check_block(f"{key}.block", self.block, cfg)


define_family("backbones", "backbone", kind_field="backbone", default_kind="vit_base")
define_family("heads", "head", default_kind="decoder")

for _name in VIT_SIZES:
    register("backbones", _name, ViTConfig, f"vmim.models.vit:{_name}", init="vmim.models.vit_init:load_vit_init")
for _name in MVIT_SIZES:
    register("backbones", _name, MViTConfig, f"vmim.models.mvit:{_name}",
             init="vmim.models.mvit_init:load_mvit_init")
register("heads", "decoder", DecoderHeadConfig, "vmim.models.heads:_decoder")
register("heads", "linear", LinearHeadConfig, "vmim.models.heads:_linear")
