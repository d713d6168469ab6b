"""Fine-tuning starts for an MViT: :func:`load_mvit_init` (registered as each MViT size's ``init``, which
:func:`vmim.models.loading.load_init` calls) and :func:`mvit_init_state`, which fits weights across q-pooling
layouts.

Decisions, and why:

* **Refused**, naming the config key and both values: another ``backbone``, ``in_chans``, ``cls_token`` or
  ``dim_mul_in_att`` (None resolved to the size's own: the MaskFeat and supervised layouts are not interchangeable).
* **Relative-position tables across layouts**: a different ``q_pool_blocks`` between the init weights and the model
  changes only the lengths of some ``attn.rel_pos_{h,w,t}`` tables; they are linearly interpolated along their
  length (``align_corners=False``), as SlowFast's ``load_checkpoint`` does and as the model itself does at run time
  for other input sizes, and each one is reported.
* **Left fresh, reported**: a ``mask_token`` the weights lack; anything else missing, unexpected or mis-shaped: one
  ``ValueError`` listing every key.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F

from torch import nn

from ..convert.common import block_order, check_and_load
from .registry import create_backbone
from .schemas import MVIT_SIZES, MViTConfig

MVIT_ARCH_KEYS = ("backbone", "in_chans", "cls_token", "dim_mul_in_att")
"""MViT config keys whose difference changes what the weights mean (resolved: None = the size's own)."""

_REL_POS = re.compile(r"^blocks\.(\d+)\.attn\.rel_pos_[hwt]$")


def resample_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) relative-position table -> (length, C), linearly interpolated along L (``align_corners=False``, as
    SlowFast's ``load_checkpoint`` and ``get_rel_pos``)."""
    if table.shape[0] == length:
        return table
    out = F.interpolate(table.float().t().unsqueeze(0), size=length, mode="linear", align_corners=False)
    return out.squeeze(0).t().to(table.dtype).contiguous()


def resolved_arch(cfg: MViTConfig) -> dict[str, Any]:
    """The values of :data:`MVIT_ARCH_KEYS` with None replaced by the registered size's own."""

    size = MVIT_SIZES[cfg.backbone]
    return {"backbone": cfg.backbone, "in_chans": cfg.in_chans,
            "cls_token": size.cls_token if cfg.cls_token is None else bool(cfg.cls_token),
            "dim_mul_in_att": size.dim_mul_in_att if cfg.dim_mul_in_att is None else bool(cfg.dim_mul_in_att)}


def mvit_init_state(sd: dict[str, torch.Tensor], src_cfg: Any, model_cfg: MViTConfig,
                    own: dict[str, torch.Tensor], origin: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Init weights of an MViT for a model of ``model_cfg`` (whose state dict is ``own``).

    Refuses a different backbone, ``in_chans``, ``cls_token`` or ``dim_mul_in_att`` (resolved), naming the config
    key and both values. A different ``q_pool_blocks`` is allowed: relative-position tables that have their shape
    in the weights' own layout and another length in the model's are resampled (:func:`resample_rel_pos`), one
    report line each. A ``mask_token`` the weights lack is left fresh. Every other mismatch is left to the strict
    load.

    Returns:
        (state dict to load, report lines).
    Raises:
        ValueError: an architecture mismatch, naming ``model.<key>``.
    """

    def refuse(key: str, ours: Any, theirs: Any) -> None:
        raise ValueError(f"model.{key}: the model has {ours!r}, the init weights ({origin}) have {theirs!r}")

    if src_cfg.backbone != model_cfg.backbone:
        refuse("backbone", model_cfg.backbone, src_cfg.backbone)
    ours, theirs = resolved_arch(model_cfg), resolved_arch(src_cfg)
    for key in MVIT_ARCH_KEYS[1:]:
        if ours[key] != theirs[key]:
            refuse(key, ours[key], theirs[key])
    sd, report = dict(sd), []
    q_ours, q_theirs = list(model_cfg.q_pools), list(src_cfg.q_pools)
    if q_ours != q_theirs:
        report.append(f"init: q pooling at blocks {q_ours} (model.q_pool_blocks); the weights were trained with "
                      f"{q_theirs}")
        with torch.device("meta"):  # the tables' shapes in the weights' own layout: only those are resampled
            layout = create_backbone(src_cfg).state_dict()
        for key in sorted((k for k in sd if _REL_POS.match(k) and k in own), key=block_order):
            src, dst = sd[key], own[key]
            if key in layout and src.shape == layout[key].shape and src.shape[1:] == dst.shape[1:] \
                    and src.shape[0] != dst.shape[0]:
                sd[key] = resample_rel_pos(src, dst.shape[0])
                report.append(f"init: {key} resampled from {src.shape[0]} to {dst.shape[0]} rows (linear, as "
                              "SlowFast's load_checkpoint)")
    if "mask_token" not in sd and "mask_token" in own:
        sd["mask_token"] = own["mask_token"]
        report.append("init: left fresh mask_token")
    return sd, report


def load_mvit_init(backbone: nn.Module, weights: Any, model_cfg: MViTConfig) -> list[str]:
    """:func:`vmim.models.loading.load_init` for an MViT (rules in the module docstring)."""
    sd, lines = mvit_init_state(weights.state_dict, weights.config, model_cfg, backbone.state_dict(),
                                weights.origin)
    check_and_load(backbone, sd, f"the init weights ({weights.origin})")
    report = [f"init: {len(weights.state_dict)} backbone tensors from {weights.origin}", *lines]
    theirs = weights.config.global_pool
    if theirs is None:  # the size's own
        with torch.device("meta"):
            theirs = create_backbone(weights.config).global_pool
    if theirs != backbone.global_pool:
        report.append(f"init: pooling {backbone.global_pool} (the weights' own: {theirs})")
    return report


__all__ = ["MVIT_ARCH_KEYS", "load_mvit_init", "mvit_init_state", "resample_rel_pos", "resolved_arch"]
