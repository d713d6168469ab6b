"""Token poolings: a backbone's grid tokens ``(B, N, D)`` (and its prefix tokens ``(B, P, D)``) -> ``(B, D)``.

The kinds are registered once, in :mod:`vmim.meta_arch.pooling_schema` (family ``poolings``): ``mean``, ``cls`` and
``attentive`` (:class:`~vmim.models.attentive_pool.AttentivePool`, V-JEPA's probe). Every pooling module is called
``pool(tokens, prefix=None)`` and says in ``reads_prefix`` whether it needs the prefix tokens, so the classification
method asks the backbone for them only then.

Two views of the one table:

* :func:`create_pooling` builds any registered kind (the classification method's ``head.pooling``);
* :data:`POOLINGS` / :func:`build_pooling` hold the poolings over the grid tokens alone (``mean``, ``attentive``):
  what the attentive probe can train on the tokens it extracted, which carry no class token
  (``backbone(x).tokens``). ``cls`` is not among them: over extracted tokens it has nothing to read.

The backbone's own pooling (``model.global_pool``: ViT ``avg`` / ``token``, MViT ``avg`` / ``norm_avg`` / ``token``,
inside ``forward_features``) stays the default of fine-tuning: it is what converted reference checkpoints and every
earlier run expect. ``mean`` and ``cls`` followed by ``model.fc_norm`` reproduce a ViT's ``avg`` and ``token``
exactly (``tests/test_classification.py``).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from ..config.registry import LazyRegistry, kinds
from .attentive_pool import AttentivePool


class MeanPool(nn.Module):
    """``(B, N, D)`` -> ``(B, D)``: the mean over the grid tokens."""

    reads_prefix = False

    def forward(self, tokens: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        return tokens.mean(dim=1)

    def macs(self, batch: int, n_tokens: int) -> int:
        """A mean is no multiply-add (:mod:`vmim.models.flops` counts products only)."""
        return 0


class ClsPool(nn.Module):
    """``(B, N, D)`` grid tokens, ``(B, P, D)`` prefix tokens -> ``(B, D)``: the first prefix token (the class
    token)."""

    reads_prefix = True

    def forward(self, tokens: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        if prefix is None or prefix.shape[1] == 0:
            raise ValueError("cls pooling reads the class token, and the backbone gave none (model.cls_token=true)")
        return prefix[:, 0]

    def macs(self, batch: int, n_tokens: int) -> int:
        return 0


def mean_pooling(dim: int, heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0) -> nn.Module:
    return MeanPool()


def cls_pooling(dim: int, heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0) -> nn.Module:
    return ClsPool()


def attentive_pooling(dim: int, heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0) -> nn.Module:
    return AttentivePool(dim, heads, num_queries, mlp_ratio)


class _TokenPoolings(LazyRegistry):
    """The ``poolings`` registry without the kinds that read the prefix tokens."""

    def _names(self) -> list[str]:
        return [name for name, kind in kinds(self.family).items() if not kind.info.get("prefix")]

    def __getitem__(self, name: str) -> Callable[..., nn.Module]:
        if name not in self._names():
            raise KeyError(f"unknown pooling '{name}' over grid tokens alone; registered: {', '.join(self._names())}"
                           + (" (cls reads the class token, which extracted tokens do not hold)" if name == "cls"
                              else ""))
        return super().__getitem__(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()


ALL_POOLINGS = LazyRegistry("poolings")
"""Every registered pooling: name -> ``(dim, heads=0, num_queries=1, mlp_ratio=4.0) -> nn.Module``."""
POOLINGS = _TokenPoolings("poolings")
"""The poolings over grid tokens alone (no class token): ``mean``, ``attentive``."""


def create_pooling(kind: str, dim: int, heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0) -> nn.Module:
    """Any registered pooling by name; ``heads`` 0 = 64-channel heads where they fit (attentive only).

    Raises:
        KeyError: no pooling of that name.
    """
    return ALL_POOLINGS[kind](dim, heads, num_queries, mlp_ratio)


def build_pooling(kind: str, dim: int, heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0) -> nn.Module:
    """A pooling over grid tokens alone (:data:`POOLINGS`) by name; ``heads`` 0 = 64-channel heads where they fit.

    Raises:
        KeyError: not such a pooling (``cls``, which needs the class token, included).
    """
    return POOLINGS[kind](dim, heads, num_queries, mlp_ratio)
