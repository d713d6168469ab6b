"""Fine-tuning starts for a ViT: :func:`load_vit_init`, which :func:`vmim.models.loading.load_init` calls for every
backbone registered with ``init="vmim.models.vit_init:load_vit_init"`` (``vmim/models/schemas.py``). It is
strict about what changes a weight's shape or meaning and lenient, out loud, about what the fine-tuning recipes change
on purpose.

A ViT:

* refused, naming the config key and both values: ``model.backbone``, ``patch_size``, ``in_chans``, ``cls_token``,
  ``pos_embed`` (kind), a tubelet change other than 1 -> t, ``layer_scale`` switched on or off, and a
  ``rel_pos_bias`` the weights have that the model drops (none) or turns from per-block tables into one shared;
* adapted, as ``vmim convert`` does: a 2-D (tubelet 1) patch weight inflated to the model's tubelet (repeat over t,
  divide by t: identical frames give the 2-D embedding), a learned position table resampled to the model's grid
  (repeated over time when its slices are equal, else linearly interpolated; bicubic in space); relative position
  tables: a ``shared`` one copied into every block of a ``per_block`` model (SimMIM / BEiT fine-tuning), and each
  resized to the model's grid (:func:`vmim.models.rel_pos.resize_table`: bicubic over space offsets, linear over
  time offsets), one report line per kind of change, as the MViT tables above;
* dropped, reported: ``norm.*`` when the model normalizes pooled features (``fc_norm``) and the weights have no
  ``fc_norm`` (MAE and VideoMAE fine-tuning drop the pretrained norm and learn a fresh ``fc_norm``); a dense
  ``mask_token`` the model does not have;
* left fresh, reported: a missing ``fc_norm.*``; a ``mask_token`` the weights lack; relative position tables the
  weights lack (zero: no bias, so the loaded model computes what the weights did);
* anything else missing, unexpected or mis-shaped: one ``ValueError`` listing every key.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..convert.common import check_and_load, inflate_patch_weight
from .pos_embed import resample_table
from .rel_pos import resize_table

ARCH_KEYS = ("backbone", "patch_size", "in_chans", "cls_token", "pos_embed")
"""ViT config keys whose difference changes what the weights mean: never adapted (MViT: ``MVIT_ARCH_KEYS``)."""


def load_vit_init(backbone: nn.Module, weights: Any, model_cfg: Any) -> list[str]:
    """:func:`vmim.models.loading.load_init` for a ViT: fit ``weights`` (a
    :class:`~vmim.models.loading.BackboneWeights`) to the built ``backbone`` of ``model_cfg`` and load them strictly
    (rules in the module docstring); returns the report lines.

    Raises:
        ValueError: an architecture mismatch (naming ``model.<key>`` and both values) or keys that do not fit.
    """
    src = weights.config
    for key in ARCH_KEYS:
        ours, theirs = getattr(model_cfg, key), getattr(src, key)
        if ours != theirs:
            raise ValueError(f"model.{key}: the model has {ours!r}, the init weights ({weights.origin}) have "
                             f"{theirs!r}")
    sd = dict(weights.state_dict)
    report = [f"init: {len(sd)} backbone tensors from {weights.origin}"]
    report += _rel_pos_init(sd, backbone, weights, model_cfg)
    if src.tubelet_size != model_cfg.tubelet_size:
        if src.tubelet_size != 1:
            raise ValueError(f"model.tubelet_size: the model has {model_cfg.tubelet_size}, the init weights "
                             f"({weights.origin}) have {src.tubelet_size}; only 2-D weights (tubelet 1) are inflated")
        sd["patch_embed.proj.weight"] = inflate_patch_weight(sd["patch_embed.proj.weight"], model_cfg.tubelet_size)
        report.append(f"init: patch_embed.proj.weight inflated from tubelet 1 to {model_cfg.tubelet_size} "
                      f"(repeated over t, divided by {model_cfg.tubelet_size})")
    if model_cfg.pos_embed == "learned" and "pos_embed.table" in sd:
        grid = tuple(backbone.pos_embed.video_grid)
        if tuple(weights.video_grid) != grid:
            sd["pos_embed.table"] = resample_table(sd["pos_embed.table"], tuple(weights.video_grid), grid)
            report.append(f"init: learned position table resampled from the grid {tuple(weights.video_grid)} to "
                          f"{grid}")
    if model_cfg.fc_norm and not any(k.startswith("fc_norm.") for k in sd):
        norm = sorted(k for k in sd if k.startswith("norm."))
        for k in norm:
            del sd[k]
        if norm:
            report.append(f"init: dropped {', '.join(norm)} (model.fc_norm: the pooled features get a fresh fc_norm, "
                          "as in MAE / VideoMAE fine-tuning)")
    own = backbone.state_dict()
    if "mask_token" in sd and "mask_token" not in own:
        del sd["mask_token"]
        report.append("init: dropped mask_token (the weights are from a dense encoder, the model is not)")
    fresh = sorted(k for k in own if k not in sd and (k.startswith("fc_norm.") or k == "mask_token"
                                                      or k.endswith("rel_pos.table")))
    if fresh:
        report.append(f"init: left fresh {', '.join(fresh)}")
    try:
        check_and_load(backbone, {**{k: own[k] for k in fresh}, **sd}, f"the init weights ({weights.origin})")
    except ValueError as err:
        if bool(src.fc_norm) != bool(model_cfg.fc_norm):
            raise ValueError(f"{err} (model.fc_norm: the model has {model_cfg.fc_norm}, the init weights have "
                             f"{src.fc_norm})") from None
        raise
    if src.global_pool != model_cfg.global_pool or src.fc_norm != model_cfg.fc_norm:
        report.append(f"init: pooling {model_cfg.global_pool}{' + fc_norm' if model_cfg.fc_norm else ''} "
                      f"(the weights' own: {src.global_pool}{' + fc_norm' if src.fc_norm else ''})")
    return report


def _rel_pos_init(sd: dict[str, torch.Tensor], backbone: nn.Module, weights: Any, model_cfg: Any
                  ) -> list[str]:
    """Fit the weights' relative position tables to the model in place (module docstring); report lines."""
    ours = getattr(model_cfg, "rel_pos_bias", "none")
    theirs = getattr(weights.config, "rel_pos_bias", "none")
    ls_ours, ls_theirs = getattr(model_cfg, "layer_scale", 0.0), getattr(weights.config, "layer_scale", 0.0)
    if (ls_ours > 0) != (ls_theirs > 0):
        raise ValueError(f"model.layer_scale: the model has {ls_ours!r}, the init weights ({weights.origin}) have "
                         f"{ls_theirs!r}; both on or both off")
    if theirs == "none" or ours == theirs == "none":
        return []
    if ours == "none" or (ours, theirs) == ("shared", "per_block"):
        raise ValueError(f"model.rel_pos_bias: the model has {ours!r}, the init weights ({weights.origin}) have "
                         f"{theirs!r}; use per_block (or {theirs!r}) to keep the learned relative positions")
    src_grid, lines = tuple(weights.video_grid), []
    if (theirs, ours) == ("shared", "per_block"):
        table = sd.pop("rel_pos.table")
        sd.update({f"blocks.{i}.rel_pos.table": table.clone() for i in range(backbone.depth)})
        lines.append(f"init: the shared relative position table copied into each of the {backbone.depth} blocks "
                     "(model.rel_pos_bias: per_block, as SimMIM / BEiT fine-tuning)")
    grid = tuple(backbone.rel_pos.grid if ours == "shared" else backbone.blocks[0].rel_pos.grid)
    if grid != src_grid:
        for name in [k for k in sd if k.endswith("rel_pos.table")]:
            sd[name] = resize_table(sd[name], src_grid, grid)
        lines.append(f"init: relative position tables resized from the grid {src_grid} to {grid} (bicubic over "
                     "space offsets, linear over time offsets)")
    return lines
