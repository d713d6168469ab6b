"""Torch-free schemas of the token poolings (``head.pooling``) and their registration lines; the code is
:mod:`vmim.models.pooling` (and :mod:`vmim.models.attentive_pool`).

A pooling maps a backbone's grid tokens ``(B, N, D)`` (and, for ``cls``, its prefix tokens ``(B, P, D)``) to
``(B, D)``. The classification method (:mod:`vmim.meta_arch.classification`) builds one when ``head.pooling`` names a
kind; the empty default keeps the backbone's own pooling (``model.global_pool`` + ``model.fc_norm``), which is what
every run before this registry trained with.

Decisions:

* **``head.pooling`` is a name, not a kinded entry**: the poolings take no keys a fine-tuning run tunes (the
  attentive pool uses 64-channel heads and one query, V-JEPA's probe; ``vmim probe`` sets its heads through
  ``probe.attentive.heads``). The schemas carry only the kind, so ``vmim list`` and the configuration reference
  describe each pooling from its docstring; a kind that grows keys later becomes a kinded section then.
* ``info={"prefix": True}`` marks a pooling that reads the prefix (class) token: the method then asks the backbone
  for it, and the token-only view (:data:`vmim.models.pooling.POOLINGS`, what the attentive probe uses on extracted
  grid tokens) leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.checks import Entry
from ..config.registry import define_family, register


@dataclass
class MeanPoolingConfig(Entry):
    """The mean of the grid tokens (after the backbone's final norm), then ``model.fc_norm``: a ViT's
    ``global_pool: avg``, an MViT's ``norm_avg``."""

    kind: str = "mean"


@dataclass
class ClsPoolingConfig(Entry):
    """The class token (after the final norm), then ``model.fc_norm``: ``global_pool: token``; needs
    ``model.cls_token: true``."""

    kind: str = "cls"


@dataclass
class AttentivePoolingConfig(Entry):
    """V-JEPA's attentive pooler: one learned query cross-attends over the grid tokens (one block, 64-channel heads),
    then ``model.fc_norm``."""

    kind: str = "attentive"


define_family("poolings", "pooling")

_P = "vmim.models.pooling"
register("poolings", "mean", MeanPoolingConfig, f"{_P}:mean_pooling")
register("poolings", "cls", ClsPoolingConfig, f"{_P}:cls_pooling", info={"prefix": True})
register("poolings", "attentive", AttentivePoolingConfig, f"{_P}:attentive_pooling")
