"""AdamW with MAE's parameter groups, batch-scaled learning rates, and the per-step cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

NO_DECAY_NAMES = ("mask_token", "pos_embed", "cls_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and everything 1-D (norms, biases) or named in NO_DECAY_NAMES."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or any(n in name for n in NO_DECAY_NAMES):
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
