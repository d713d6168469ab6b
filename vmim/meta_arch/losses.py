"""Per-token losses: ``(pred, target)`` of shape ``(B, M, D)`` -> ``(B, M)``, averaged over the D features.

The method then takes the weighted mean over tokens (weights from the token set). Averaging per token first and
then over tokens equals the reference repos' mean over all masked values when every sample counts the same tokens.

Registry: :data:`LOSSES` maps a config ``kind`` (``vmim.config.LOSSES``) to a builder ``cfg -> loss function``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from ..config.registry import LazyRegistry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).mean(dim=-1)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean(dim=-1)


def smooth_l1(beta: float) -> LossFn:
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.smooth_l1_loss(pred, target, reduction="none", beta=beta).mean(dim=-1)
    return loss


def cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-6)


def mse_loss(cfg: Any) -> LossFn:
    return mse


def smooth_l1_loss(cfg: Any) -> LossFn:
    return smooth_l1(cfg.beta)


def l1_loss(cfg: Any) -> LossFn:
    return l1


def cosine_loss(cfg: Any) -> LossFn:
    return cosine


LOSSES: Mapping[str, Callable[[Any], LossFn]] = LazyRegistry("losses")
"""Kind -> ``cfg -> per-token loss``, from the registration table (``vmim/meta_arch/schemas.py``)."""


def build_loss(cfg: Any) -> LossFn:
    """A per-token loss from its config (a dataclass of ``vmim.config.LOSSES``)."""
    if cfg.kind not in LOSSES:
        raise KeyError(f"unknown loss '{cfg.kind}'; registered: {', '.join(LOSSES)}")
    return LOSSES[cfg.kind](cfg)


def weighted_mean(per_token: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, M)`` per-token losses under ``(B, M)`` weights (0 where nothing counts)."""
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)
