"""Reference checkpoint import: VideoMAE, MAE, MVD and timm ViTs and SlowFast MViTv2s become a ``vmim-backbone`` file.

``vmim convert --from {videomae,mae,mvd,timm} SRC DST`` reads a reference checkpoint, renames its encoder's weights
to :class:`~vmim.models.vit.VisionTransformer`'s, infers the architecture, loads the result into our model
strictly and writes one file that :func:`vmim.models.loading.load_backbone` and ``init:`` of a fine-tuning run
read. Key layouts are in ``research/finetune-mvit-teachers.md`` §3.1-3.5. ``--from slowfast`` (MViTv2, MaskFeat's
MViT) lives in :mod:`vmim.models.convert_slowfast`, with its own decisions; this module dispatches to it.

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
* **Strict.** The converted weights load into the inferred model with ``strict=True``; missing, unexpected and
  mis-shaped keys raise one ``ValueError`` listing all of them. Keys known to be unused by the encoder
  (decoders, mask tokens of decoders, classification heads) are dropped and listed in the file's
  ``source.dropped``, not treated as errors.
* ``data.mean`` / ``data.std`` are recorded as ImageNet's (what VideoMAE, MAE and MVD train with); timm models
  trained with other statistics (0.5 / 0.5 for augreg) need them set in the fine-tuning config.

Reference checkpoints are pickles (they hold ``args`` namespaces). They are read with ``weights_only=True``
(:func:`vmim.safe_load.load`, ``argparse.Namespace`` the only class allowed besides tensors, containers and numpy
arrays): a file that would run code is refused with :class:`~vmim.errors.UnsafeFileError` naming it and what it
holds; random bytes, an empty file or a dict without a state dict with :class:`~vmim.errors.InputError` naming the
file (both exit 2, one ``vmim convert:`` line). The result is written atomically (:func:`vmim.safe_load.save`): a
failed write (disk full) removes its ``.tmp`` and exits 1 with one line naming the file and the OS error.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD, ViTConfig
from ..errors import InputError
from ..safe_load import load, save
from .pos_embed import FIXED_TABLES, resample_table
from .registry import create_backbone
from .vit import VIT_SIZES

FORMATS = ("videomae", "mae", "mvd", "timm", "slowfast")
FILE_FORMAT, FILE_VERSION = "vmim-backbone", 1
DEFAULT_2D_TUBELET = 2
DEFAULT_IMG_SIZE = 224
MLP_RATIO = 4

_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_ENCODER_PREFIXES = {"videomae": ("encoder.", "backbone."), "mvd": ("encoder.", "backbone."), "mae": (),
                     "timm": ()}
_DROPPED = {
    "videomae": re.compile(r"^(decoder\.|encoder_to_decoder\.|mask_token$|head\.)"),
    "mvd": re.compile(r"^(decoder\.|encoder_to_decoder\.|mask_token$|head\.|[A-Za-z0-9_]+_(img|vid)(\.|$))"),
    "mae": re.compile(r"^(decoder_|mask_token$|head\.)"),
    "timm": re.compile(r"^head\."),
}
"""Per format: keys of parts the encoder does not use (decoders, their mask tokens, classifiers)."""

Grid = tuple[int, int, int]


# ----------------------------------------------------------------------------------------------------
# Reading a reference file
# ----------------------------------------------------------------------------------------------------


def read_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The weights inside a loaded checkpoint: the dict of tensors, looked for at the top level and under
    ``model`` / ``module`` / ``state_dict`` / ``model_state`` (nested containers are followed)."""
    for _ in range(4):
        if not isinstance(obj, dict):
            raise ValueError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            others = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
            raise ValueError(f"no state dict found: the checkpoint has none of {', '.join(_CONTAINER_KEYS)} and "
                             f"holds non-tensor entries {others[:10]}")
        obj = inner
    raise ValueError("no state dict found: containers nested too deep")


def _strip_prefixes(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove ``_orig_mod.`` / ``module.`` wrappers everywhere, then one encoder prefix (``encoder.``, ...)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name in out:
            raise ValueError(f"two source keys map to '{name}' after removing prefixes (one is '{key}')")
        out[name] = value
    return out


# ----------------------------------------------------------------------------------------------------
# Tensor adaptations (shared with vmim.models.loading)
# ----------------------------------------------------------------------------------------------------


def inflate_patch_weight(weight: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """(D, C, p, p) or (D, C, 1, p, p) -> (D, C, t, p, p): repeated over t and divided by t, so that t identical
    frames give the 2-D embedding exactly."""
    if weight.ndim == 5:
        weight = weight[:, :, 0]
    return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size


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


def check_and_load(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(sd, strict=True)``, after checking keys and shapes so that the error lists every
    missing, unexpected and mis-shaped key at once.

    Raises:
        ValueError: naming all of them, with both shapes for a mismatch.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: weights {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(sd) & set(expected)) if sd[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
    if problems:
        raise ValueError(f"{what} does not fit the model: " + " | ".join(problems))
    model.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------------------------------
# Architecture inference
# ----------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------


def convert_state_dict(source_format: str, sd: dict[str, torch.Tensor], *, num_frames: int | None = None,
                       img_size: int | None = None, tubelet_size: int | None = None,
                       backbone: str | None = None, q_pool_blocks: list[int] | None = None) -> dict:
    """Convert a reference encoder's weights (already read out of their container) to our ViT (or, for slowfast,
    our MViT: :func:`vmim.models.convert_slowfast.convert_slowfast`, which also takes the whole checkpoint).

    Args:
        source_format: videomae, mae, mvd, timm or slowfast.
        sd: the reference state dict.
        num_frames: frames of the video clip the result is for (the grid of a learned table; for a saved 3-D
            table, the frames it was made for); default 16.
        img_size: crop side; default: from the position table, else 224. A learned table is interpolated to it.
        tubelet_size: frames per token; default: the patch weight's for 3-D sources, 2 (inflation) for 2-D ones.
        backbone: expected registered name (checked against the weights).
        q_pool_blocks: slowfast only: the blocks whose q was pooled (default: inferred).
    Returns:
        the ``vmim-backbone`` dict (see :func:`convert_checkpoint`), ``source.path`` unset.
    Raises:
        ValueError: unknown format, an architecture vmim cannot express, or keys that do not fit (all listed).
    """
    if source_format not in FORMATS:
        raise ValueError(f"unknown source format '{source_format}'; one of {', '.join(FORMATS)}")
    if source_format == "slowfast":
        from .convert_slowfast import convert_slowfast  # imports this module

        return convert_slowfast(sd, num_frames=num_frames, img_size=img_size, tubelet_size=tubelet_size,
                                backbone=backbone, q_pool_blocks=q_pool_blocks)
    if q_pool_blocks is not None:
        raise ValueError("--q-pool-blocks is for MViTs (--from slowfast)")
    num_frames = 16 if num_frames is None else num_frames
    if num_frames < 1:
        raise ValueError(f"--num-frames must be >= 1, got {num_frames}")
    sd = _strip_prefixes(sd, _ENCODER_PREFIXES[source_format])
    dropped = sorted(k for k in sd if _DROPPED[source_format].match(k))
    sd = {k: v for k, v in sd.items() if not _DROPPED[source_format].match(k)}
    notes: list[str] = []
    name = infer_backbone(sd, backbone)
    dim = VIT_SIZES[name].embed_dim

    # Attention biases: VideoMAE / MVD keep q and v biases apart (the k bias is an implicit zero).
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

    # Patch embedding: 3-D (VideoMAE, MVD) or 2-D, inflated to the tubelet.
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

    # Class token and position table.
    cls_token = "cls_token" in sd
    table = sd.pop("pos_embed", None)
    two_d = source_format in ("mae", "timm")
    if two_d and table is None:
        raise ValueError(f"a {source_format} ViT without 'pos_embed' cannot be expressed (vmim's learned table "
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

    fc_norm = any(k.startswith("fc_norm.") for k in sd)
    global_pool = "avg" if fc_norm or not cls_token else "token"
    cfg = ViTConfig(backbone=name, patch_size=patch, tubelet_size=tubelet, in_chans=in_chans, pos_embed=kind,
                    cls_token=cls_token, global_pool=global_pool, fc_norm=fc_norm)
    model = create_backbone(cfg, grid)
    check_and_load(model, sd, f"the converted {source_format} weights")
    return {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "model": dataclasses.asdict(cfg),
        "data": {"img_size": img_size, "num_frames": num_frames, "mean": list(IMAGENET_MEAN),
                 "std": list(IMAGENET_STD)},
        "video_grid": list(grid),
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        "source": {"format": source_format, "path": None, "dropped": dropped, "notes": notes},
    }


SAFE_GLOBALS = (argparse.Namespace,)
"""Non-tensor objects reference checkpoints pickle (VideoMAE / MAE save their ``args``), allowed when loading."""


def load_reference(path: str | Path) -> Any:
    """A downloaded checkpoint, read with ``weights_only=True`` (:func:`vmim.safe_load.load`): tensors, containers,
    numpy arrays and :data:`SAFE_GLOBALS` only, so a tampered file cannot run code on unpickling.

    Raises:
        UnsafeFileError: the file pickles other objects (named); re-save its state dict with ``torch.save``.
        InputError: not a torch file (random bytes, empty).
        FileNotFoundError: nothing at ``path``.
    """
    return load(path, extra_globals=SAFE_GLOBALS)


def convert_checkpoint(source_format: str, src_path: str | Path, *, num_frames: int | None = None,
                       img_size: int | None = None, tubelet_size: int | None = None,
                       backbone: str | None = None, q_pool_blocks: list[int] | None = None) -> dict:
    """Read a reference checkpoint file and convert it (see :func:`convert_state_dict` for the options).

    Returns:
        ``{"format": "vmim-backbone", "version": 1, "model": ViTConfig (MViTConfig for slowfast) as a dict, "data":
        {img_size, num_frames, mean, std}, "video_grid": [t, h, w], "state_dict": ours, "source": {format, path,
        dropped, notes}}``.
    """
    obj = load_reference(src_path)
    if source_format == "slowfast":
        weights = obj  # slowfast also reads the checkpoint's cfg
    else:
        try:
            weights = read_state_dict(obj)
        except ValueError as err:
            raise InputError(f"{src_path}: {err}") from None
    out = convert_state_dict(source_format, weights, num_frames=num_frames, img_size=img_size,
                             tubelet_size=tubelet_size, backbone=backbone, q_pool_blocks=q_pool_blocks)
    out["source"]["path"] = str(src_path)
    return out


def save_converted(converted: dict, dst: str | Path) -> Path:
    """Write a converted dict to ``dst`` (through ``dst.tmp``, then renamed).

    Raises:
        vmim.safe_load.SaveError: the write failed (disk full ...), naming ``dst`` and the OS error; no ``.tmp``
            is left and a previous ``dst`` is unchanged.
    """
    return save(converted, dst)


def convert_file(source_format: str, src: str | Path, dst: str | Path, **opts: Any) -> dict:
    """:func:`convert_checkpoint` then :func:`save_converted`; returns the converted dict."""
    converted = convert_checkpoint(source_format, src, **opts)
    save_converted(converted, dst)
    return converted


def summary_line(converted: dict, dst: str | Path) -> str:
    if converted["source"]["format"] == "slowfast":
        from .convert_slowfast import summary_line as mvit_summary

        return mvit_summary(converted, dst)
    m = converted["model"]
    pool = f"{m['global_pool']}{' + fc_norm' if m['fc_norm'] else ''}"
    return (f"converted {converted['source']['format']} -> {m['backbone']} (patch {m['patch_size']}, tubelet "
            f"{m['tubelet_size']}, pos_embed {m['pos_embed']}, pool {pool}, grid {tuple(converted['video_grid'])}), "
            f"dropped {len(converted['source']['dropped'])} keys -> {dst}")


def convert_command(args: argparse.Namespace) -> int:
    """``vmim convert`` (the arguments are defined in :mod:`vmim.cli`): convert, print one summary line; 2 on a bad
    checkpoint, with the reason."""
    try:
        converted = convert_file(args.source_format, args.src, args.dst, num_frames=args.num_frames,
                                 img_size=args.img_size, tubelet_size=args.tubelet_size, backbone=args.backbone,
                                 q_pool_blocks=getattr(args, "q_pool_blocks", None))
    except FileNotFoundError as err:
        print(f"vmim convert: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # InputError, UnsafeFileError, and the conversion's own (keys that do not fit)
        print(f"vmim convert: {err}", file=sys.stderr)
        return 2
    print(summary_line(converted, args.dst))
    return 0


__all__ = ["FORMATS", "convert_command", "check_and_load", "convert_checkpoint", "convert_file",
           "convert_state_dict", "inflate_patch_weight", "infer_backbone", "match_fixed_table", "read_state_dict",
           "resample_table", "save_converted"]
