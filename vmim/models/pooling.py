"""Token poolings: ``(B, N, D)`` encoder tokens -> ``(B, D)``, by name (:data:`POOLINGS`).

What is here and what is not (checked against the backbones): a backbone's ``forward_features`` already pools, as
``model.global_pool`` says (ViT: ``avg`` or ``token``, then ``fc_norm``; MViT: ``avg``, ``norm_avg`` or ``token``),
and that pooling is the one its fine-tuning and a converted reference checkpoint expect. The per-token path is
``backbone(x).tokens`` (an :class:`~vmim.models.base.EncoderOutput`, ``(B, N, D)`` after the final norm), which
**drops the class token**. So this registry holds the poolings over those tokens only:

* ``mean``: the mean of the grid tokens, without parameters: the control an attentive probe is compared with (the
  same tokens, optimizer and steps; only the pooling differs);
* ``attentive``: :class:`~vmim.models.attentive_pool.AttentivePool` (V-JEPA's probe).

A ``cls`` entry would duplicate ``global_pool: token`` and cannot be written over ``EncoderOutput.tokens`` (no class
token there): a classification method that wants it keeps calling ``forward_features``. A classification method that
offers ``pooling: backbone | attentive`` reads ``forward_features`` for the first and this registry for the second.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attentive_pool import AttentivePool


class MeanPool(nn.Module):
    """``(B, N, D)`` -> ``(B, D)``: the mean over tokens."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


def _mean(dim: int, heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0) -> nn.Module:
    return MeanPool()


def _attentive(dim: int, heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0) -> nn.Module:
    return AttentivePool(dim, heads, num_queries, mlp_ratio)


POOLINGS: dict[str, Callable[..., nn.Module]] = {"mean": _mean, "attentive": _attentive}
"""Name -> ``(dim, heads=0, num_queries=1, mlp_ratio=4.0) -> nn.Module`` mapping (B, N, D) to (B, D)."""


def build_pooling(kind: str, dim: int, heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0) -> nn.Module:
    """A token pooling by name; ``heads`` 0 = 64-channel heads where they fit (attentive only)."""
    if kind not in POOLINGS:
        raise KeyError(f"unknown pooling '{kind}'; registered: {', '.join(POOLINGS)}")
    return POOLINGS[kind](dim, heads, num_queries, mlp_ratio)
