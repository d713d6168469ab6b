"""AdamW with MAE's parameter groups, layer-wise lr decay, batch-scaled learning rates, and the per-step cosine
schedule.

Layer ids follow MAE / VideoMAE (``util/lr_decay.py``): the backbone's stem (patch and position embedding, class and
mask tokens) is layer 0, block i is layer i + 1, and everything else (the final norm, fc_norm, the head) is layer
L + 1, so a parameter's lr is scaled by ``decay ** (L + 1 - id)``. The ids come from the backbone's timm-style
``group_matcher()``; its ``(99999,)`` marker (timm puts the final norm in the last block's group) means "after the
blocks" here, as in MAE.

``optim.head_lr_scale`` multiplies the lr of that last id (what follows the blocks) on top of the layer decay. Why: a
fresh head starts at ~0 (``head.init_scale``), and AdamW moves every weight by about the lr per step whatever its
gradient's size, so until the head is useful the backbone takes full-size steps along the noise of a near-zero
signal. With a few thousand (or a few hundred) labels an epoch is a handful of steps, and the head stays near zero for
a large share of the run: on the built-in digits with 10 % of the labels (docs/small-data.md) a 10x head lr gained
1.8-3.9 development-set points. Scaling the head's group is the static form of LP-FT's head
warm-up: no state, nothing to resume, DDP-safe (every parameter keeps receiving gradients).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names that modules list in their ``no_weight_decay()`` (names relative to the module, timm's
    convention), e.g. a backbone's position table and mask token, a decoder's mask token."""
    names = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def find_backbone(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(prefix, module) of the first submodule (or ``model`` itself) with ``group_matcher`` and ``depth``."""
    for prefix, module in model.named_modules():
        if hasattr(module, "group_matcher") and hasattr(module, "depth"):
            return prefix, module
    return None


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Parameter name -> MAE layer id (0 stem, i + 1 block i, L + 1 the rest); every name L + 1 without a backbone."""
    found = find_backbone(model)
    names = [name for name, _ in model.named_parameters()]
    if found is None:
        return {name: 0 for name in names}
    prefix, backbone = found
    matcher, last = backbone.group_matcher(), backbone.depth + 1
    blocks = matcher["blocks"] if isinstance(matcher["blocks"], (list, tuple)) else [(matcher["blocks"], None)]
    ids = {}
    for name in names:
        ids[name] = last
        if prefix and not name.startswith(prefix + "."):
            continue
        rel = name[len(prefix) + 1:] if prefix else name
        if re.match(matcher["stem"], rel):
            ids[name] = 0
            continue
        for pattern, marker in blocks:
            match = re.match(pattern, rel)
            if match:
                ids[name] = int(match.group(1)) + 1 if marker is None and match.groups() else last
                break
    return ids


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0, head_lr_scale: float = 1.0
                 ) -> list[dict]:
    """Decayed weights and the rest (everything 1-D, i.e. norms and biases, or listed by a module's
    ``no_weight_decay()``), each split by layer with ``lr_scale = layer_decay ** (L + 1 - id)`` when
    ``layer_decay < 1``, times ``head_lr_scale`` for id L + 1 (what follows the blocks; only where the model has a
    backbone with blocks, else the scale would be a plain lr change)."""
    skip = no_weight_decay_names(model)
    head_scaled = head_lr_scale != 1 and find_backbone(model) is not None
    ids = layer_ids(model) if layer_decay < 1 or head_scaled else {}
    top = max(ids.values(), default=0)
    groups: dict[tuple[bool, int], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name in skip
        layer = ids.get(name, top)
        scale = layer_decay ** (top - layer) * (head_lr_scale if head_scaled and layer == top else 1.0)
        group = groups.setdefault((no_decay, layer), {
            "params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr_scale": scale})
        group["params"].append(param)
    if not groups:
        return [{"params": [], "weight_decay": weight_decay, "lr_scale": 1.0}]
    return [groups[key] for key in sorted(groups, key=lambda k: (k[1], k[0]))]


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """Linear scaling rule: the config's lr is per 256 samples."""
    return lr_per_256 * global_batch / 256


FUSED_DEVICES = ("cpu", "cuda")
"""Devices with torch's fused AdamW kernel for floating-point parameters."""


def adamw_kernels(params: list[torch.Tensor], impl: str) -> tuple[dict, str]:
    """(``torch.optim.AdamW`` keyword for ``optim.impl``, what it resolved to): fused falls back to foreach where the
    parameters are not all floating point on a device with the fused kernel."""
    if impl == "fused":
        if all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params):
            return {"fused": True}, "fused"
        return {"foreach": True}, "foreach (fused needs floating-point parameters on CPU or CUDA)"
    return {"foreach": impl == "foreach"}, impl


def build_optimizer(model: nn.Module, cfg, global_batch: int) -> torch.optim.AdamW:
    """AdamW from a :class:`vmim.config.OptimConfig` with ``optim.impl``'s kernels (resolved in the optimizer's
    ``impl`` attribute); ``lr`` is set per step by :func:`set_lr`. Build it after the model is on its device."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay, cfg.head_lr_scale)
    kernels, resolved = adamw_kernels([p for g in groups for p in g["params"]], cfg.impl)
    optimizer = torch.optim.AdamW(groups, lr=scaled_lr(cfg.lr, global_batch), betas=tuple(cfg.betas), eps=cfg.eps,
                                  **kernels)
    optimizer.impl = resolved
    return optimizer


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``final``.

    A pure function of the optimizer step, so resuming needs only the step count.
    """
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every group's lr: ``lr`` x its ``lr_scale`` (layer decay)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
