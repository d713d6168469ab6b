"""The ViT half of reference import, shared by the ViT formats (VideoMAE, MAE, MVD, timm): their encoder's weights
renamed to :class:`~vmim.models.vit.VisionTransformer`'s, the architecture inferred, the result loaded strictly.

Each format module states only how its family names and shapes the encoder (a :class:`ViTLayout`). Key layouts are
in ``research/finetune-mvit-teachers.md`` §3.1-3.5.

Decisions, and why:

* **Class-token position folded into the token.** timm / MAE add ``pos_embed[:, :1]`` to the class token after
  prepending it; the class token never moves, so ``cls_token + pos_embed[:, :1]`` is one constant and our ViT
  keeps just that (its position table covers only the grid). Exact. timm's ``no_embed_class`` variant (a table
  without a class row) needs no fold.
* **2-D patch weights inflated by repeating over t and dividing by t** (omnivision / I3D convention, research
  §3.6). Our ViT repeats an image to ``tubelet_size`` frames before the Conv3d, and sum_t W/t x = W x, so an
  image (or a clip of identical frames) reproduces the 2-D embedding exactly; repeat-without-divide would scale
  it by t. ``tubelet_size`` defaults to 2 for 2-D sources (VideoMAE's tubelet), so that image weights start
  video fine-tuning directly; pass ``--tubelet-size 1`` to keep one frame per token.
* **VideoMAE's separate ``q_bias`` / ``v_bias`` become ``qkv.bias = cat(q_bias, 0, v_bias)``**, which is what
  VideoMAE's attention builds. A key bias b_k adds q . b_k to every logit of a query's row; softmax is invariant
  to a per-row constant, so a zero k bias (ours, trainable from there) is exact, not an approximation.
* **Position embeddings.** VideoMAE saves no table (its 1-D sinusoid table over the flattened token index is a
  plain attribute): ``pos_embed: sincos_1d``, which :func:`~vmim.models.pos_embed.sincos_flat` reproduces. A
  saved table (MVD's fixed 3-D sin-cos, a learnable VideoMAE table) is compared with our fixed tables on its
  grid and takes the matching kind; otherwise it is imported as a ``learned`` table. MAE's and timm's 2-D tables
  (MAE's is a fixed sin-cos in its own channel order, saved as a parameter) are imported as ``learned``: a 2-D
  table becomes the video table by repeating it over time (every t-slice equal, the t=0 slice is the image
  table, so images are unchanged). Another spatial grid (``--img-size``) is bicubic interpolation of each
  t-slice (antialiased, as timm's ``resample_abs_pos_embed``); another temporal grid is linear interpolation
  over t, or a plain repeat when every slice is equal (exact). Nothing else is resized: a different patch size,
  embedding width or channel count is refused, naming the key and both shapes.
* **Architecture inferred from the weights**: width and channels from the patch weight, depth from the block
  indices, patch and tubelet from its kernel; the MLP ratio must be 4 and (width, depth) must be a registered
  size (``VIT_SIZES``), whose head count is taken as given (heads leave no trace in the weight shapes).
* **Pooling.** A ``fc_norm`` in the source (VideoMAE / MAE / MVD fine-tuning files) gives ``fc_norm=True``,
  ``global_pool=avg``: mean of the grid tokens then ``fc_norm``, as those models compute it; the head is dropped.
  Otherwise a class token gives ``global_pool=token`` (timm's default, MAE's linear probe), else ``avg``.
* ``data.mean`` / ``data.std`` are recorded as ImageNet's (what VideoMAE, MAE and MVD train with); timm models
  trained with other statistics (0.5 / 0.5 for augreg) need them set in the fine-tuning config.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..models.schemas import ViTConfig
from ..models.pos_embed import FIXED_TABLES, resample_table
from ..models.registry import create_backbone
from ..models.schemas import VIT_SIZES
from .common import backbone_file, check_and_load, inflate_patch_weight, strip_prefixes

DEFAULT_2D_TUBELET = 2
DEFAULT_IMG_SIZE = 224
MLP_RATIO = 4

Grid = tuple[int, int, int]


@dataclass(frozen=True)
class ViTLayout:
    """How one reference family names and shapes its ViT encoder.

    Attributes:
        name: the source format (``--from``), in messages and ``source.format``.
        encoder_prefixes: one of these is removed from every key (after ``module.`` / ``_orig_mod.``).
        dropped: keys of parts the encoder does not use (decoders, their mask tokens, classifiers), after the
            prefixes are removed; listed in ``source.dropped``.
        two_d: a 2-D patch embedding and position table (MAE, timm): the table must be there and is imported as
            ``learned``, its time extent one step.
    """

    name: str
    encoder_prefixes: tuple[str, ...]
    dropped: re.Pattern[str]
    two_d: bool


def match_fixed_table(table: torch.Tensor, grid: Grid, atol: float = 1e-4) -> str | None:
    """The fixed kind (``sincos_3d``, ``sincos_1d``) whose table for ``grid`` equals ``table`` (N, D), or None."""
    for kind, fn in FIXED_TABLES.items():
        try:
            ours = fn(grid, table.shape[1])
        except ValueError:  # a width the kind cannot split
            continue
        if ours.shape == table.shape and torch.allclose(ours, table.float(), atol=atol, rtol=0):
            return kind
    return None


def infer_backbone(sd: dict[str, torch.Tensor], backbone: str | None = None) -> str:
    """Registered ViT name for the weights' (embed_dim, depth); MLP ratio must be 4.

    Raises:
        ValueError: no patch weight, another MLP ratio (naming the key), no registered size, or ``backbone`` not
            matching.
    """
    if "patch_embed.proj.weight" not in sd:
        raise ValueError("no 'patch_embed.proj.weight' in the weights: not a ViT encoder (wrong --from format?)")
    dim = int(sd["patch_embed.proj.weight"].shape[0])
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    for key in sorted(k for k in sd if k.endswith("mlp.fc1.weight")):
        hidden = int(sd[key].shape[0])
        if hidden != MLP_RATIO * dim:
            raise ValueError(f"{key} has shape {tuple(sd[key].shape)}: MLP ratio {hidden / dim:g}, and vmim's ViTs "
                             f"use {MLP_RATIO}")
    matches = [name for name, s in VIT_SIZES.items() if (s.embed_dim, s.depth) == (dim, depth)]
    sizes = ", ".join(f"{n} ({s.embed_dim} wide, {s.depth} blocks)" for n, s in VIT_SIZES.items())
    if not matches:
        raise ValueError(f"no registered ViT is {dim} wide with {depth} blocks; registered: {sizes}")
    if backbone is not None and backbone != matches[0]:
        raise ValueError(f"--backbone {backbone} does not match the weights ({dim} wide, {depth} blocks = "
                         f"{matches[0]}); registered: {sizes}")
    return matches[0]


def _grid_of(num_frames: int, img_size: int, patch: int, tubelet: int) -> Grid:
    if num_frames % tubelet:
        raise ValueError(f"--num-frames {num_frames} is not a multiple of the tubelet size {tubelet}")
    if img_size % patch:
        raise ValueError(f"--img-size {img_size} is not a multiple of the patch size {patch}")
    return num_frames // tubelet, img_size // patch, img_size // patch


def _merge_attention_biases(sd: dict[str, torch.Tensor], notes: list[str]) -> None:
    """VideoMAE / MVD keep q and v biases apart (the k bias is an implicit zero); a qkv without bias gets zeros."""
    qkv_blocks = sorted({k.rsplit(".", 1)[0] for k in sd if k.endswith((".attn.q_bias", ".attn.v_bias"))})
    for prefix in qkv_blocks:
        q, v = sd.pop(f"{prefix}.q_bias", None), sd.pop(f"{prefix}.v_bias", None)
        if q is None or v is None or f"{prefix}.qkv.bias" in sd:
            raise ValueError(f"{prefix}: needs both q_bias and v_bias and no qkv.bias")
        sd[f"{prefix}.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    if qkv_blocks:
        notes.append(f"attn.q_bias/v_bias -> attn.qkv.bias = cat(q, 0, v) in {len(qkv_blocks)} blocks (exact)")
    no_bias = sorted(k[: -len(".weight")] for k in sd if k.endswith(".attn.qkv.weight")
                     and k.replace(".weight", ".bias") not in sd)
    for prefix in no_bias:
        weight = sd[f"{prefix}.weight"]
        sd[f"{prefix}.bias"] = weight.new_zeros(weight.shape[0])
    if no_bias:
        notes.append(f"no qkv bias in {len(no_bias)} blocks: zeros (exact)")


def _patch_embedding(sd: dict[str, torch.Tensor], tubelet_size: int | None, notes: list[str]) -> tuple[int, int, int]:
    """3-D (VideoMAE, MVD) or 2-D patch weight, the 2-D one inflated to the tubelet, in place; (in_chans, patch,
    tubelet)."""
    key = "patch_embed.proj.weight"
    weight = sd[key]
    if weight.ndim not in (4, 5) or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"{key} has shape {tuple(weight.shape)}: expected (D, C, p, p) or (D, C, t, p, p)")
    in_chans, patch = int(weight.shape[1]), int(weight.shape[-1])
    source_t = int(weight.shape[2]) if weight.ndim == 5 else 1
    tubelet = tubelet_size if tubelet_size is not None else (source_t if weight.ndim == 5 else DEFAULT_2D_TUBELET)
    if tubelet < 1:
        raise ValueError(f"--tubelet-size must be >= 1, got {tubelet}")
    if source_t == 1 and (weight.ndim == 4 or tubelet > 1):
        sd[key] = inflate_patch_weight(weight, tubelet)
        if tubelet > 1:
            notes.append(f"{key} {tuple(weight.shape)} inflated to tubelet {tubelet}: repeated over t, divided by "
                         f"{tubelet}")
    elif source_t != tubelet:
        raise ValueError(f"{key} has shape {tuple(weight.shape)} (tubelet {source_t}); tubelet {tubelet} would need "
                         f"shape {(weight.shape[0], in_chans, tubelet, patch, patch)}: only 2-D weights are inflated")
    return in_chans, patch, tubelet


def _position_table(layout: ViTLayout, sd: dict[str, torch.Tensor], dim: int, patch: int, tubelet: int,
                    num_frames: int, img_size: int | None, notes: list[str]) -> tuple[str, int, Grid]:
    """Class-token fold and the position table (saved, matched or resampled), in place; (pos_embed kind, img_size,
    video grid)."""
    cls_token = "cls_token" in sd
    table = sd.pop("pos_embed", None)
    two_d = layout.two_d
    if two_d and table is None:
        raise ValueError(f"a {layout.name} ViT without 'pos_embed' cannot be expressed (vmim's learned table "
                         "needs one)")
    if table is not None:
        table = table.reshape(-1, table.shape[-1])
        if table.shape[1] != dim:
            raise ValueError(f"pos_embed has shape {tuple(table.shape)}, the embedding is {dim} wide")
        if num_frames % tubelet:
            raise ValueError(f"--num-frames {num_frames} is not a multiple of the tubelet size {tubelet}")
        steps = 1 if two_d else num_frames // tubelet  # time extent of the saved table
        fits = [rows % steps == 0 and math.isqrt(rows // steps) ** 2 == rows // steps
                for rows in (table.shape[0], table.shape[0] - 1)]
        if cls_token and not fits[0] and fits[1]:  # a class row (timm, MAE); timm's no_embed_class has none
            sd["cls_token"] = sd["cls_token"] + table[:1].reshape(sd["cls_token"].shape)
            table = table[1:]
            notes.append("class-token position folded into cls_token")
        elif not fits[0]:
            raise ValueError(f"pos_embed has {table.shape[0]} rows, which is not {steps} x H x W"
                             + (" (+ a class row)" if cls_token else "")
                             + ("" if two_d else f" for num_frames {num_frames} / tubelet {tubelet}: pass the "
                                "--num-frames it was made for"))
        side = math.isqrt(table.shape[0] // steps)
        src_grid = (steps, side, side)
        img_size = img_size or side * patch
        kind = "learned" if two_d else (match_fixed_table(table, src_grid) or "learned")
        if not two_d:
            notes.append(f"saved pos_embed for the grid {src_grid}: "
                         + (f"equals our {kind} table" if kind != "learned" else "imported as a learned table"))
    else:
        kind, src_grid = "sincos_1d", None
        img_size = img_size or DEFAULT_IMG_SIZE
        notes.append("no saved position table: VideoMAE's 1-D sin-cos over the token index (pos_embed=sincos_1d)")
    grid = _grid_of(num_frames, img_size, patch, tubelet)
    if kind == "learned":
        sd["pos_embed.table"] = resample_table(table, src_grid, grid)
        if src_grid[1:] != grid[1:]:
            notes.append(f"position table interpolated from {src_grid[1]}x{src_grid[2]} to {grid[1]}x{grid[2]} "
                         "(bicubic)")
        if src_grid[0] != grid[0]:
            notes.append(f"position table repeated / interpolated over time: {src_grid[0]} -> {grid[0]} steps")
    return kind, img_size, grid


def convert_vit(layout: ViTLayout, sd: dict[str, torch.Tensor], *, num_frames: int | None = None,
                img_size: int | None = None, tubelet_size: int | None = None, backbone: str | None = None,
                q_pool_blocks: list[int] | None = None) -> dict:
    """Convert a reference ViT encoder's weights (already read out of their container) to our ViT.

    Args:
        layout: the source family's key layout.
        sd: the reference state dict.
        num_frames: frames of the video clip the result is for (the grid of a learned table; for a saved 3-D
            table, the frames it was made for); default 16.
        img_size: crop side; default: from the position table, else 224. A learned table is interpolated to it.
        tubelet_size: frames per token; default: the patch weight's for 3-D sources, 2 (inflation) for 2-D ones.
        backbone: expected registered name (checked against the weights).
        q_pool_blocks: must be None (an MViT option).
    Returns:
        the ``vmim-backbone`` dict (:func:`vmim.convert.common.backbone_file`), ``model`` a ViTConfig.
    Raises:
        ValueError: an architecture vmim cannot express, or keys that do not fit (all listed).
    """
    if q_pool_blocks is not None:
        raise ValueError("--q-pool-blocks is for MViTs (--from slowfast)")
    num_frames = 16 if num_frames is None else num_frames
    if num_frames < 1:
        raise ValueError(f"--num-frames must be >= 1, got {num_frames}")
    sd = strip_prefixes(sd, layout.encoder_prefixes)
    dropped = sorted(k for k in sd if layout.dropped.match(k))
    sd = {k: v for k, v in sd.items() if not layout.dropped.match(k)}
    notes: list[str] = []
    name = infer_backbone(sd, backbone)
    _merge_attention_biases(sd, notes)
    in_chans, patch, tubelet = _patch_embedding(sd, tubelet_size, notes)
    cls_token = "cls_token" in sd
    kind, img_size, grid = _position_table(layout, sd, VIT_SIZES[name].embed_dim, patch, tubelet, num_frames,
                                           img_size, notes)
    fc_norm = any(k.startswith("fc_norm.") for k in sd)
    global_pool = "avg" if fc_norm or not cls_token else "token"
    cfg = ViTConfig(backbone=name, patch_size=patch, tubelet_size=tubelet, in_chans=in_chans, pos_embed=kind,
                    cls_token=cls_token, global_pool=global_pool, fc_norm=fc_norm)
    model = create_backbone(cfg, grid)
    check_and_load(model, sd, f"the converted {layout.name} weights")
    data = {"img_size": img_size, "num_frames": num_frames, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return backbone_file(layout.name, cfg, model, data, grid, dropped, notes)


def summary_line(converted: dict, dst: object) -> str:
    """One line: what the ViT checkpoint was read as."""
    m = converted["model"]
    pool = f"{m['global_pool']}{' + fc_norm' if m['fc_norm'] else ''}"
    return (f"converted {converted['source']['format']} -> {m['backbone']} (patch {m['patch_size']}, tubelet "
            f"{m['tubelet_size']}, pos_embed {m['pos_embed']}, pool {pool}, grid {tuple(converted['video_grid'])}), "
            f"dropped {len(converted['source']['dropped'])} keys -> {dst}")


__all__ = ["ViTLayout", "convert_vit", "infer_backbone", "match_fixed_table", "summary_line"]
