"""The ``probe`` section of a fine-tuning config: what ``vmim probe`` fits on frozen features, and its checks.
Torch-free.

Decisions:

* **Several label budgets in one run** (``labels_per_class``: a list, 0 = all labels), all scored on the features of
  one extraction. One integer, the key's type before the list (old configs and run folders hold ``0`` or ``10``),
  still loads: the config loader refuses a scalar for a ``List[int]`` field, so the field is typed ``Any`` and
  :func:`validate_probe` turns an integer into a one-budget list (and refuses anything else, naming the key).
* **Baselines beside the weights** (``baselines``): the same architecture at random init and the raw pixels. The
  earlier boolean ``compare_random_init`` still loads (old fine-tuning runs record it): ``false`` drops
  ``random_init`` from ``baselines``, ``true`` adds it; :func:`validate_probe` folds it in and resets it to None, so a
  config written back holds the list only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from .checks import _check, _choice

PROBE_METHODS = ("linear", "knn", "attentive")
PROBE_BASELINES = ("random_init", "raw_pixels")


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
    """``vmim probe``: classifiers fit on frozen features (evaluation transform, no augmentation); docs/probes.md."""

    methods: List[str] = field(default_factory=lambda: ["linear", "knn"])
    """linear (mean-pooled features standardized, logistic regression), knn (cosine, majority of k) and / or attentive
    (V-JEPA's attentive probe over the tokens, trained per draw: slow, the ``attentive`` section)."""
    knn_k: int = 20
    """Neighbours that vote (at most the fit samples of a draw)."""
    C: float = 1.0
    """Inverse L2 strength of the logistic regression."""
    labels_per_class: Any = field(default_factory=lambda: [1, 10, 100, 0])
    """Label budgets, all from one feature extraction: fit on this many labeled samples per class (all of a class
    with fewer), ``seeds`` draws each; 0 = all labels (one fit for linear and knn). A list, or one integer."""
    seeds: int = 3
    """Label draws per budget (draw s: seed s); the attentive probe also trains with seed train.seed + s."""
    baselines: List[str] = field(default_factory=lambda: ["random_init", "raw_pixels"])
    """Feature sets probed beside the weights, same protocol: random_init (the architecture at seed train.seed) and
    raw_pixels (the evaluation clip's pixels, average-pooled to at most ``raw_pixels_dim`` values)."""
    raw_pixels_dim: int = 4096
    """Most values of a raw-pixel feature vector: a larger C x T x S x S clip is average-pooled (docs/probes.md)."""
    compare_random_init: Optional[bool] = None
    """Deprecated (use ``baselines``): false drops random_init from the baselines, true adds it."""
    attentive: AttentiveProbeConfig = field(default_factory=AttentiveProbeConfig)


def _budgets(value: Any) -> list[int]:
    """``labels_per_class`` as a list of budgets; raises ConfigError naming the key."""
    items = value if isinstance(value, (list, tuple)) else [value]
    _check(len(items) > 0, "probe.labels_per_class", "names no label budget (e.g. [1, 10, 100, 0]; 0 = all)")
    for item in items:
        _check(isinstance(item, int) and not isinstance(item, bool) and item >= 0, "probe.labels_per_class",
               f"{value!r}: each budget must be an integer >= 0 (labels per class; 0 = all)")
    _check(len(set(items)) == len(items), "probe.labels_per_class", f"{list(items)} names a budget twice")
    return [int(i) for i in items]


def validate_probe(p: ProbeConfig) -> None:
    """Checks of the ``probe`` section (normalizing ``labels_per_class`` to a list and folding
    ``compare_random_init`` into ``baselines``). Raises ConfigError naming the key."""
    _check(len(p.methods) > 0, "probe.methods", "at least one of linear, knn")
    for method in p.methods:
        _choice("probe.methods", method, PROBE_METHODS)
    _check(len(set(p.methods)) == len(p.methods), "probe.methods", f"{list(p.methods)} names a method twice")
    _check(p.knn_k >= 1, "probe.knn_k", f"{p.knn_k} must be >= 1")
    _check(p.C > 0, "probe.C", f"{p.C} must be positive")
    p.labels_per_class = _budgets(p.labels_per_class)
    _check(p.seeds >= 1, "probe.seeds", f"{p.seeds} must be >= 1")
    for name in p.baselines:
        _choice("probe.baselines", name, PROBE_BASELINES)
    _check(len(set(p.baselines)) == len(p.baselines), "probe.baselines", f"{list(p.baselines)} names one twice")
    if p.compare_random_init is not None:
        keep = [b for b in p.baselines if b != "random_init"]
        p.baselines = (["random_init"] + keep) if p.compare_random_init else keep
        p.compare_random_init = None
    _check(p.raw_pixels_dim >= 64, "probe.raw_pixels_dim", f"{p.raw_pixels_dim} must be >= 64")
    a = p.attentive
    _check(a.steps >= 1, "probe.attentive.steps", f"{a.steps} must be >= 1")
    _check(a.lr > 0, "probe.attentive.lr", f"{a.lr} must be positive")
    _check(a.weight_decay >= 0, "probe.attentive.weight_decay", f"{a.weight_decay} must be >= 0")
    _check(a.heads >= 0, "probe.attentive.heads", f"{a.heads} must be >= 0 (0 = 64-channel heads)")
    _check(a.batch_size >= 1, "probe.attentive.batch_size", f"{a.batch_size} must be >= 1")
