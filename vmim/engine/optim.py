"""AdamW with MAE's parameter groups, batch-scaled learning rates, and the per-step cosine schedule."""

from __future__ import annotations

import math

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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and everything 1-D (norms, biases) or listed by a module's ``no_weight_decay()``."""
    skip = no_weight_decay_names(model)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """Linear scaling rule: the config's lr is per 256 samples."""
    return lr_per_256 * global_batch / 256


def build_optimizer(model: nn.Module, cfg, global_batch: int) -> torch.optim.AdamW:
    """AdamW from a :class:`vmim.config.OptimConfig`; ``lr`` is set per step by :func:`cosine_lr`."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=scaled_lr(cfg.lr, global_batch),
                             betas=tuple(cfg.betas), eps=cfg.eps)


def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then cosine decay to ``final``.

    A pure function of the optimizer step, so resuming needs only the step count.
    """
    if step < warmup_steps:
        return peak * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
