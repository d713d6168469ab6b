"""SlowFast MViTv2 checkpoints (``vmim convert --from slowfast``): supervised MViTv2 and MaskFeat's MViT.

A SlowFast checkpoint is ``{epoch, model_state, optimizer_state, cfg (a YAML string)}``; its ``model_state`` uses
the names :class:`~vmim.models.mvit.MViT` uses (flat ``blocks.{i}``, ``attn.pool_q``, ``attn.rel_pos_t``, ``proj``
for the shortcut projection; ``research/finetune-mvit-teachers.md`` §3.5), so the conversion is mostly validation
and architecture inference. Loading these weights into an MViT of another q-pooling layout is
:mod:`vmim.models.mvit_init`.

Decisions, and why:

* **Architecture from the weights**, checked against the checkpoint's ``cfg`` when it has one:

  - width and channels from ``patch_embed.proj.weight``, depth from the block indices;
  - ``dim_mul_in_att`` and the stage starts from where widths double: inside the attention
    (``attn.qkv`` out = 2 x ``norm1``; supervised MViTv2) or in the previous block's MLP (``mlp.fc2`` out =
    2 x ``attn.qkv`` out / 3; MaskFeat's MViT);
  - heads from the head width of the pooling convs (``attn.pool_q.weight`` is (head_dim, 1, k, k, k));
  - ``cls_token`` and ``rel_pos_t`` from their presence;
  - the registered size (``MVIT_SIZES``) that has them all, preferring the one whose own ``cls_token`` and
    ``dim_mul_in_att`` agree, else the config records the override;
  - ``q_pool_blocks`` from the relative-position tables, whose lengths follow the q grid (MaskFeat pre-training
    drops the last stage's q pooling: MViT-S block 15 has 27 rows instead of 13). In order: ``--q-pool-blocks``,
    the ``cfg``'s ``MVIT.POOL_Q_STRIDE``, the one layout the tables fit. When the tables fit several (the last
    stage has one block), the fine-tuning layout (every stage start) is taken and the notes say so.

* **What the weights cannot tell** (taken from the registered size, or the ``cfg`` where said): the KV pooling
  strides (``POOL_KV_STRIDE_ADAPTIVE``) and all pooling strides and paddings (kernels have no stride), the stem's
  stride and padding, the input size the tables were made for beyond their lengths, the MLP activation and norm
  eps, residual pooling, and the classifier's pooling. Pooling: the ``cfg``'s ``MVIT.USE_MEAN_POOLING`` /
  ``CLS_EMBED_ON``, else ``avg`` (mean, then the norm: MaskFeat fine-tuning) for ``dim_mul_in_att=False``,
  ``token`` for a class token, ``norm_avg`` (norm, then mean: SlowFast's image models) otherwise. Input
  statistics: the ``cfg``'s ``DATA.MEAN`` / ``STD``, else SlowFast's defaults 0.45 / 0.225 (every MViTv2-S/B and
  MaskFeat config) or ImageNet's for MViTv2-L 40x3 (research §1.1).

* **Kept**: MaskFeat's ``mask_token`` (1, 1, embed_dim) is the token vmim's dense MViT puts in place of masked
  stem tokens, at the same place (after the patch embedding, before the class token), so a pre-training
  checkpoint continues as one. **Dropped and listed** in ``source.dropped``: the classifier ``head.*``
  (``head.projection``), MaskFeat's prediction head ``pred_head.*`` and its HOG layers' buffers ``hogs.*``.
  **Left at init, noted**: a ``mask_token`` that a supervised checkpoint lacks (seeded trunc_normal(0.02); only
  masked pre-training reads it) and the final ``norm`` that MaskFeat pre-training deletes (weight 1, bias 0.02:
  SlowFast's init, where its fine-tuning also starts). **Refused**: absolute position tables (``pos_embed*``,
  ``MVIT.USE_ABS_POS``), which ``model:`` cannot express; widths that do not double; a stem other than
  (3, 7, 7).

* **2-D kernels** (SlowFast's image checkpoints ``MViTv2_*_in1k.pyth``: a Conv2d stem, (1, 3, 3) pooling kernels)
  become the centre temporal slice of the 3-D kernels, zeros elsewhere (as :func:`~vmim.models.mvit.from_timm_mvitv2`
  does for timm): exact on one-frame inputs, where the outer slices meet only zero padding.

* **Strict**: the result loads into the inferred model with ``strict=True``; any missing, unexpected or mis-shaped
  key is one ``ValueError`` naming all of them (SlowFast's own ``load_checkpoint`` skips them with a log line).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import torch
import yaml

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..models.schemas import MViTConfig
from ..models.schemas import MVIT_SIZES
from ..models.registry import create_backbone
from .common import backbone_file, block_order, check_and_load, read_state_dict, strip_prefixes

SLOWFAST_MEAN, SLOWFAST_STD = [0.45] * 3, [0.225] * 3
"""SlowFast's ``DATA.MEAN`` / ``DATA.STD`` defaults (``defaults.py``)."""
STEM_KERNEL, POOL_KERNEL = (3, 7, 7), (3, 3, 3)
"""vmim's MViT kernels (SlowFast's video configs)."""

_DROPPED = re.compile(r"^(head\.|pred_head\.|hogs\.)")
_FILLABLE = ("mask_token", "norm.weight", "norm.bias")
"""Keys a SlowFast checkpoint may lack that are left at init (module docstring)."""


# ----------------------------------------------------------------------------------------------------
# Architecture inference
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Structure:
    """What the weights say about an MViT: widths, stage starts, where the width doubles, heads, options."""

    embed_dim: int
    in_chans: int
    depth: int
    stage_blocks: tuple[int, ...]
    dim_mul_in_att: bool
    num_heads: int | None
    cls_token: bool
    rel_pos_temporal: bool

    def describe(self) -> str:
        heads = "?" if self.num_heads is None else self.num_heads
        return (f"{self.embed_dim} wide, {self.depth} blocks, stages at {list(self.stage_blocks)}, {heads} heads, "
                f"dim_mul_in_att {self.dim_mul_in_att}, cls_token {self.cls_token}, rel_pos_t "
                f"{self.rel_pos_temporal}")


def _centre_slice(weight: torch.Tensor, kt: int) -> torch.Tensor:
    """(D, C, kh, kw) or (D, C, 1, kh, kw) -> (D, C, kt, kh, kw): the kernel in the centre slice, zeros elsewhere."""
    if weight.ndim == 4:
        weight = weight.unsqueeze(2)
    out = weight.new_zeros(*weight.shape[:2], kt, *weight.shape[3:])
    out[:, :, kt // 2] = weight[:, :, 0]
    return out


def _inflate_2d(sd: dict[str, torch.Tensor], notes: list[str]) -> None:
    """2-D (image) stem and pooling kernels -> the centre temporal slice of vmim's 3-D kernels, in place."""
    inflated = []
    for key in sorted(sd, key=block_order):
        w = sd[key]
        if key == "patch_embed.proj.weight" and (w.ndim == 4 or (w.ndim == 5 and w.shape[2] == 1)):
            sd[key] = _centre_slice(w, STEM_KERNEL[0])
        elif re.search(r"attn\.pool_[qkv]\.weight$", key) and (w.ndim == 4 or (w.ndim == 5 and w.shape[2] == 1)):
            sd[key] = _centre_slice(w, POOL_KERNEL[0])
        else:
            continue
        inflated.append(key)
    if inflated:
        notes.append(f"2-D kernels of {len(inflated)} tensors (stem and pooling) placed in the centre temporal "
                     "slice, zeros elsewhere: exact on one-frame inputs")


def infer_structure(sd: dict[str, torch.Tensor]) -> Structure:
    """Read the architecture out of SlowFast-named MViT weights (3-D kernels).

    Raises:
        ValueError: no stem, blocks missing, a width that does not double, widths growing in both places, or a
            stem kernel other than (3, 7, 7); each message names the key.
    """
    key = "patch_embed.proj.weight"
    if key not in sd:
        raise ValueError(f"no '{key}' in the weights: not an MViT (wrong --from format?)")
    stem = sd[key]
    if stem.ndim != 5 or tuple(stem.shape[2:]) != STEM_KERNEL:
        raise ValueError(f"{key} has shape {tuple(stem.shape)}: vmim's MViT stem is a {STEM_KERNEL} kernel "
                         "(stride (2, 4, 4), padding (1, 3, 3))")
    embed_dim, in_chans = int(stem.shape[0]), int(stem.shape[1])
    indices = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    depth = max(indices) + 1 if indices else 0
    if indices != set(range(depth)) or depth == 0:
        raise ValueError(f"blocks are not numbered 0..N-1: missing {sorted(set(range(depth)) - indices) or 'all'}")
    need = [f"blocks.{i}.{n}" for i in range(depth) for n in ("norm1.weight", "attn.qkv.weight", "mlp.fc2.weight")]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"cannot read the block widths; missing keys: {', '.join(missing)}")
    ins = [int(sd[f"blocks.{i}.norm1.weight"].shape[0]) for i in range(depth)]
    atts = [int(sd[f"blocks.{i}.attn.qkv.weight"].shape[0]) // 3 for i in range(depth)]
    outs = [int(sd[f"blocks.{i}.mlp.fc2.weight"].shape[0]) for i in range(depth)]
    grow_att = [i for i in range(depth) if atts[i] != ins[i]]
    grow_mlp = [i for i in range(depth) if outs[i] != atts[i]]
    for i in grow_att:
        if atts[i] != 2 * ins[i]:
            raise ValueError(f"blocks.{i}.attn.qkv.weight has shape {tuple(sd[f'blocks.{i}.attn.qkv.weight'].shape)}: "
                             f"width {ins[i]} -> {atts[i]}, and vmim's MViT doubles widths")
    for i in grow_mlp:
        if outs[i] != 2 * atts[i]:
            raise ValueError(f"blocks.{i}.mlp.fc2.weight has shape {tuple(sd[f'blocks.{i}.mlp.fc2.weight'].shape)}: "
                             f"width {atts[i]} -> {outs[i]}, and vmim's MViT doubles widths")
    for i in range(depth - 1):
        if ins[i + 1] != outs[i]:
            raise ValueError(f"blocks.{i + 1}.norm1.weight is {ins[i + 1]} wide, block {i} puts out {outs[i]}")
    if grow_att and grow_mlp:
        raise ValueError(f"widths double both in the attention (blocks {grow_att}) and in the MLP (blocks "
                         f"{grow_mlp}): neither MViTv2 layout")
    if grow_mlp and grow_mlp[-1] == depth - 1:
        raise ValueError(f"blocks.{depth - 1}.mlp.fc2.weight doubles the width after the last block")
    stage_blocks = tuple(grow_att) if grow_att else tuple(i + 1 for i in grow_mlp)
    pool = sd.get("blocks.0.attn.pool_q.weight", sd.get("blocks.0.attn.rel_pos_h"))
    head_dim = None if pool is None else int(pool.shape[0] if pool.ndim == 5 else pool.shape[1])
    num_heads = atts[0] // head_dim if head_dim and atts[0] % head_dim == 0 else None
    return Structure(embed_dim, in_chans, depth, stage_blocks, bool(grow_att), num_heads, "cls_token" in sd,
                     any(k.endswith("attn.rel_pos_t") for k in sd))


def _sizes_for(s: Structure) -> list[str]:
    """Registered sizes with this structure; those needing no cls_token / dim_mul_in_att override first."""
    names = [n for n, z in MVIT_SIZES.items()
             if (z.depth, z.embed_dim, tuple(z.stage_blocks), z.rel_pos_temporal) ==
             (s.depth, s.embed_dim, s.stage_blocks, s.rel_pos_temporal)
             and (s.num_heads is None or z.num_heads == s.num_heads)]
    return sorted(names, key=lambda n: (MVIT_SIZES[n].cls_token != s.cls_token,
                                        MVIT_SIZES[n].dim_mul_in_att != s.dim_mul_in_att))


def _q_layouts(stage_blocks: tuple[int, ...]) -> list[list[int]]:
    """Every subset of the stage starts, the full one (fine-tuning layout) first, then by decreasing size."""
    return [list(c) for r in range(len(stage_blocks), -1, -1) for c in itertools.combinations(stage_blocks, r)]


def _mismatches(cfg: MViTConfig, sd: dict[str, torch.Tensor]) -> list[str]:
    """Keys that keep ``sd`` from loading into the model of ``cfg`` (built on the meta device), fillable keys
    aside."""
    with torch.device("meta"):
        expected = create_backbone(cfg).state_dict()
    bad = [k for k in expected if k not in sd and k not in _FILLABLE] + [k for k in sd if k not in expected]
    return bad + [k for k in sd if k in expected and sd[k].shape != expected[k].shape]


def _slowfast_cfg(obj: Any) -> dict:
    """The checkpoint's ``cfg`` (SlowFast saves ``cfg.dump()``, a YAML string) as a mapping; {} when absent."""
    text = obj.get("cfg") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        return {}
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _cfg_q_pool(sf: dict) -> list[int] | None:
    """q-pool blocks from ``MVIT.POOL_Q_STRIDE`` ([[block, st, sh, sw], ...]), or None."""
    strides = (sf.get("MVIT") or {}).get("POOL_Q_STRIDE")
    if not strides:
        return None
    blocks = []
    for entry in strides:
        block, *stride = entry
        if list(stride) not in ([1, 1, 1], [1, 2, 2]):
            raise ValueError(f"the checkpoint's cfg MVIT.POOL_Q_STRIDE has {entry}: vmim's MViT pools q by "
                             "(1, 2, 2) only")
        if list(stride) == [1, 2, 2]:
            blocks.append(int(block))
    return sorted(blocks)


# ----------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------


def convert_slowfast(obj: Any, *, num_frames: int | None = None, img_size: int | None = None,
                     tubelet_size: int | None = None, backbone: str | None = None,
                     q_pool_blocks: list[int] | None = None) -> dict:
    """Convert a SlowFast MViTv2 checkpoint (or its ``model_state``) to a ``vmim-backbone`` dict.

    Args:
        obj: the loaded checkpoint (its ``cfg`` string is used when present) or a state dict.
        num_frames, img_size: the clip the file is recorded for (``data``); default: the ``cfg``'s
            ``DATA.NUM_FRAMES`` / ``TRAIN_CROP_SIZE``, else the registered size's input.
        tubelet_size: must be None or 2 (the stem's temporal stride).
        backbone: expected registered name (checked against the weights).
        q_pool_blocks: the blocks whose q was pooled; default: inferred (module docstring).
    Returns:
        the dict :func:`vmim.convert.dispatch.convert_checkpoint` returns, ``model`` an MViTConfig.
    Raises:
        ValueError: an architecture vmim cannot express, or keys that do not fit (all listed).
    """
    if tubelet_size not in (None, STEM_KERNEL[0] - 1):
        raise ValueError(f"--tubelet-size {tubelet_size}: an MViT's output tokens are 2 frames (the stem's stride)")
    sf = _slowfast_cfg(obj)
    sd = strip_prefixes(read_state_dict(obj), ())
    dropped = sorted(k for k in sd if _DROPPED.match(k))
    notes: list[str] = []
    if "head.projection.weight" in sd:
        notes.append(f"classifier head.projection ({sd['head.projection.weight'].shape[0]} classes) dropped")
    sd = {k: v for k, v in sd.items() if not _DROPPED.match(k)}
    absolute = sorted(k for k in sd if k.startswith("pos_embed"))
    if absolute:
        raise ValueError(f"absolute position tables {', '.join(absolute)} (MVIT.USE_ABS_POS): vmim's MViT configs "
                         "use relative positions only")
    _inflate_2d(sd, notes)
    s = infer_structure(sd)
    mvit = sf.get("MVIT") or {}
    if "DIM_MUL_IN_ATT" in mvit and bool(mvit["DIM_MUL_IN_ATT"]) != s.dim_mul_in_att:
        raise ValueError(f"the checkpoint's cfg says MVIT.DIM_MUL_IN_ATT {mvit['DIM_MUL_IN_ATT']}, its weights "
                         f"double widths {'in the attention' if s.dim_mul_in_att else 'in the MLP'}")
    names = _sizes_for(s)
    sizes = "; ".join(f"{n} ({z.embed_dim} wide, {z.depth} blocks, stages {list(z.stage_blocks)}, rel_pos_t "
                      f"{z.rel_pos_temporal})" for n, z in MVIT_SIZES.items())
    if not names:
        raise ValueError(f"no registered MViTv2 size is {s.describe()}; registered: {sizes}")
    if backbone is not None:
        if backbone not in names:
            raise ValueError(f"--backbone {backbone} does not match the weights ({s.describe()}: {', '.join(names)})")
        names = [backbone]

    given = q_pool_blocks if q_pool_blocks is not None else _cfg_q_pool(sf)
    name, q, fits = _choose_layout(names, s, sd, given)
    if q_pool_blocks is not None:
        notes.append(f"q_pool_blocks {q} (--q-pool-blocks)")
    elif given is not None:
        notes.append(f"q_pool_blocks {q} (the checkpoint's cfg MVIT.POOL_Q_STRIDE)")
    elif len(fits) > 1:
        notes.append(f"q_pool_blocks {q}: the relative-position tables fit {fits} alike; assumed the first "
                     "(pass --q-pool-blocks)")
    elif fits and q != list(s.stage_blocks):
        notes.append(f"q_pool_blocks {q}: read from the relative-position tables (a pre-training layout)")
    notes.append(f"dim_mul_in_att {s.dim_mul_in_att}: widths double in "
                 + ("the attention of blocks " if s.dim_mul_in_att else "the MLP before blocks ")
                 + str(list(s.stage_blocks)))

    cfg = _config(name, s, q, _global_pool(sf, s, notes))
    model = create_backbone(cfg)
    own = model.state_dict()
    if "mask_token" not in sd:
        gen = torch.Generator().manual_seed(0)
        sd["mask_token"] = torch.nn.init.trunc_normal_(torch.empty_like(own["mask_token"]), std=0.02, generator=gen)
        notes.append("no mask_token (not a masked pre-training checkpoint): left at init, trunc_normal(0.02), seed 0")
    else:
        notes.append("mask_token kept: MaskFeat's stem mask token, where vmim's dense MViT puts its own")
    norm = [k for k in ("norm.weight", "norm.bias") if k not in sd]
    for key in norm:
        sd[key] = own[key]
    if norm:
        notes.append("no final norm (MaskFeat pre-training deletes it): left at init, weight 1, bias 0.02 "
                     "(SlowFast's init, where its fine-tuning starts)")
    try:
        check_and_load(model, sd, "the converted slowfast weights")
    except ValueError as err:
        raise ValueError(f"{err} (read as {name}: {s.describe()}, q_pool_blocks {q})") from None

    data, grid = _data(sf, name, cfg, num_frames, img_size, notes)
    return backbone_file("slowfast", cfg, model, data, grid, dropped, notes)


def _config(name: str, s: Structure, q: list[int], global_pool: str | None = None) -> MViTConfig:
    return MViTConfig(backbone=name, in_chans=s.in_chans, cls_token=s.cls_token, global_pool=global_pool,
                      dim_mul_in_att=s.dim_mul_in_att, q_pool_blocks=list(q))


def _choose_layout(names: list[str], s: Structure, sd: dict[str, torch.Tensor], given: list[int] | None
                   ) -> tuple[str, list[int], list[list[int]]]:
    """(size, q_pool_blocks, every layout the weights fit): the first size that ``sd`` fits with ``given`` (or with
    any subset of the stage starts, the full one first). When none fits: the first size and layout, so that the
    strict load names the keys."""
    layouts = [sorted(given)] if given is not None else _q_layouts(s.stage_blocks)
    for name in names:
        fits = [q for q in layouts if set(q) <= set(s.stage_blocks) and not _mismatches(_config(name, s, q), sd)]
        if fits:
            return name, fits[0], fits
    return names[0], layouts[0], []


def _global_pool(sf: dict, s: Structure, notes: list[str]) -> str:
    """The classifier's pooling: from the cfg, else by the family (module docstring)."""
    mvit = sf.get("MVIT") or {}
    if "USE_MEAN_POOLING" in mvit or "CLS_EMBED_ON" in mvit:
        pool = "avg" if mvit.get("USE_MEAN_POOLING") else ("token" if mvit.get("CLS_EMBED_ON") else "norm_avg")
        if pool == "token" and not s.cls_token:
            pool = "norm_avg"
        notes.append(f"global_pool {pool} (the checkpoint's cfg MVIT.USE_MEAN_POOLING / CLS_EMBED_ON)")
        return pool
    pool = "avg" if not s.dim_mul_in_att else ("token" if s.cls_token else "norm_avg")
    notes.append(f"global_pool {pool}: not in the weights; assumed from the family (MaskFeat: avg, supervised video: "
                 "token, image: norm_avg)")
    return pool


def _data(sf: dict, name: str, cfg: MViTConfig, num_frames: int | None, img_size: int | None,
          notes: list[str]) -> tuple[dict, tuple[int, int, int]]:
    """(``data`` record, video grid) from the arguments, else the cfg, else the registered size."""
    size = MVIT_SIZES[name]
    data_cfg = sf.get("DATA") or {}
    num_frames = num_frames or int(data_cfg.get("NUM_FRAMES") or size.input_size[0])
    img_size = img_size or int(data_cfg.get("TRAIN_CROP_SIZE") or size.input_size[1])
    patch, tubelet = cfg.patch_size, cfg.tubelet_size
    if num_frames < 1 or (num_frames > 1 and num_frames % tubelet):
        raise ValueError(f"--num-frames {num_frames} is not 1 or a multiple of the MViT's {tubelet}-frame tokens")
    if img_size % patch:
        raise ValueError(f"--img-size {img_size} is not a multiple of the {patch}-pixel output tokens")
    if data_cfg.get("MEAN") and data_cfg.get("STD"):
        mean, std = [float(v) for v in data_cfg["MEAN"]], [float(v) for v in data_cfg["STD"]]
        notes.append("data.mean / std from the checkpoint's cfg")
    elif name == "mvitv2_l_40x3":
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        notes.append("data.mean / std: ImageNet's (SlowFast's MViTv2-L 40x3 configs); not in the weights")
    else:
        mean, std = list(SLOWFAST_MEAN), list(SLOWFAST_STD)
        notes.append("data.mean / std: SlowFast's defaults 0.45 / 0.225; not in the weights")
    grid = (max(1, num_frames // tubelet), img_size // patch, img_size // patch)
    return {"img_size": img_size, "num_frames": num_frames, "mean": mean, "std": std}, grid


def summary_line(converted: dict, dst: Any) -> str:
    """One line: what the SlowFast checkpoint was read as."""
    m = converted["model"]
    return (f"converted slowfast -> {m['backbone']} (cls_token {m['cls_token']}, dim_mul_in_att "
            f"{m['dim_mul_in_att']}, q_pool_blocks {m['q_pool_blocks']}, pool {m['global_pool']}, grid "
            f"{tuple(converted['video_grid'])}), dropped {len(converted['source']['dropped'])} keys -> {dst}")


TAKES_CHECKPOINT = True
"""``convert`` reads the whole checkpoint: its ``cfg`` string says what the weights cannot."""
convert = convert_slowfast
"""The registry's name for :func:`convert_slowfast`."""

__all__ = ["Structure", "TAKES_CHECKPOINT", "convert", "convert_slowfast", "infer_structure", "summary_line"]
