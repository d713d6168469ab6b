"""The ``probe`` section of a fine-tuning config: what ``vmim probe`` fits on frozen features, and its checks.
Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from .checks import _check, _choice

PROBE_METHODS = ("linear", "knn", "attentive")


@dataclass
class AttentiveProbeConfig:
    """V-JEPA's frozen-backbone probe: a learnable query cross-attending over the backbone's tokens (one block), then a
    linear layer, trained with AdamW on the fit side's frozen tokens (``vmim.engine.attentive_probe``)."""

    steps: int = 1000
    """AdamW steps over the fit side's standardized tokens (each channel shifted and scaled by the fit statistics, as
    the linear probe's StandardScaler). 300 steps of 64 (13 passes over the demo's 1438 clips) left the probe below
    the linear one on random-init tokens; 1000 reach it (docs/recipes.md, "V-JEPA (demo)")."""
    lr: float = 1e-3
    weight_decay: float = 0.01
    heads: int = 0
    """Attention heads of the pool; 0 = 64-channel heads where the width allows."""
    batch_size: int = 64


@dataclass
class ProbeConfig:
    """``vmim probe``: classifiers fit on frozen features (evaluation transform, no augmentation)."""

    methods: List[str] = field(default_factory=lambda: ["linear", "knn"])
    """linear (mean-pooled features standardized, logistic regression), knn (cosine, majority of k) and / or attentive
    (V-JEPA's attentive probe over the tokens, trained: the ``attentive`` section)."""
    knn_k: int = 20
    C: float = 1.0
    """Inverse L2 strength of the logistic regression."""
    labels_per_class: int = 0
    """Fit on this many labeled samples per class, averaged over ``seeds`` draws (low-label curves); 0 = all."""
    seeds: int = 3
    compare_random_init: bool = True
    """Also probe the same architecture at random init (what the weights add)."""
    attentive: AttentiveProbeConfig = field(default_factory=AttentiveProbeConfig)


def validate_probe(p: ProbeConfig) -> None:
    """Checks of the ``probe`` section. Raises ConfigError naming the key."""
    _check(len(p.methods) > 0, "probe.methods", "at least one of linear, knn")
    for method in p.methods:
        _choice("probe.methods", method, PROBE_METHODS)
    _check(p.knn_k >= 1, "probe.knn_k", f"{p.knn_k} must be >= 1")
    _check(p.C > 0, "probe.C", f"{p.C} must be positive")
    _check(p.labels_per_class >= 0, "probe.labels_per_class", f"{p.labels_per_class} must be >= 0")
    _check(p.seeds >= 1, "probe.seeds", f"{p.seeds} must be >= 1")
    a = p.attentive
    _check(a.steps >= 1, "probe.attentive.steps", f"{a.steps} must be >= 1")
    _check(a.lr > 0, "probe.attentive.lr", f"{a.lr} must be positive")
    _check(a.weight_decay >= 0, "probe.attentive.weight_decay", f"{a.weight_decay} must be >= 0")
    _check(a.heads >= 0, "probe.attentive.heads", f"{a.heads} must be >= 0 (0 = 64-channel heads)")
    _check(a.batch_size >= 1, "probe.attentive.batch_size", f"{a.batch_size} must be >= 1")
