"""Typed configuration of supervised runs (``task: finetune``): fine-tuning, multi-view evaluation and probing.

One schema serves the three commands, so a fine-tuning recipe is also its evaluation and probe recipe:
``vmim finetune`` trains on ``data.datasets`` and validates on ``eval.datasets`` every ``eval.every_epochs``;
``vmim eval`` scores ``eval.datasets`` with ``eval.num_views`` x ``eval.num_crops`` views; ``vmim probe`` fits
linear / k-NN classifiers on frozen features of ``data.datasets`` and scores them on ``eval.datasets``.

Defaults are VideoMAE's fine-tuning recipe (``run_class_finetuning.py``): AdamW (0.9, 0.999), weight decay 0.05,
layer decay 0.75, warm-up 5 epochs, min lr 1e-6, RandAugment ``rand-m7-n4-mstd0.5-inc1``, random erasing 0.25,
mixup 0.8 / cutmix 1.0 with label smoothing 0.1, mean pooling + fc-norm, head init scale 0.001. Shared sections
(model, data, optim, train, log, checkpoint) are the pretraining config's dataclasses, with these defaults.
Like :mod:`vmim.config`, this module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .config import (
    CheckpointConfig, ConfigError, DataConfig, LogConfig, OptimConfig, TrainConfig, _check, _choice,
    fill_kinded_defaults, validate_common,
)

PROBE_METHODS = ("linear", "knn")


@dataclass
class ClassifierConfig:
    """The classification head on the backbone's pooled features (``model.global_pool``, ``model.fc_norm``)."""

    num_classes: int = 0
    """Classes; 0 = from the training list (its format's class list, else the largest label + 1)."""
    dropout: float = 0.0
    """Dropout before the linear layer (VideoMAE fc_drop_rate: 0.5 for ViT-L/H and UCF101)."""
    init_scale: float = 0.001
    """The linear layer starts at trunc_normal(std 0.02) x this (VideoMAE: 0.001; MAE's std 2e-5 = 0.001)."""


@dataclass
class AugmentConfig:
    """Training augmentation beyond the dataset's crop and flip. Clips get every op with the same parameters on every
    frame (VideoMAE / SlowFast), drawn from the sample's own seed."""

    rand_augment: str = "rand-m7-n4-mstd0.5-inc1"
    """A timm RandAugment string (``rand-m9-mstd0.5-inc1`` for MAE on images); empty = off."""
    random_erasing: float = 0.25
    """Probability of erasing one random box (the same box on every frame) with per-pixel noise; 0 = off."""
    mixup: float = 0.8
    """Mixup alpha; 0 = off."""
    cutmix: float = 1.0
    """CutMix alpha (one box over every frame); 0 = off."""
    mixup_prob: float = 1.0
    """Probability of mixing a batch at all."""
    switch_prob: float = 0.5
    """With both on: probability of CutMix instead of Mixup."""
    label_smoothing: float = 0.1


@dataclass
class EvalConfig:
    """Validation during fine-tuning, ``vmim eval`` and the probe's test side."""

    datasets: Dict[str, Any] = field(default_factory=dict)
    """name -> a labeled dataset entry (kinds as data.datasets); its crop and flip keys are not used."""
    num_views: int = 5
    """Temporal clips per video for ``vmim eval`` (K400: 5, SSv2: 2); images have 1."""
    num_crops: int = 3
    """Spatial crops per clip for ``vmim eval``: 3 (left / centre / right) or 1 (centre)."""
    short_side: int = 0
    """Resize the short side to this before cropping; 0 = data.img_size for videos, img_size / 0.875 for images."""
    val_views: int = 1
    """Temporal clips per video in the per-epoch validation (cheap: 1 x 1 centre crop)."""
    val_crops: int = 1
    every_epochs: int = 1
    """Validate every N epochs and after the last one; 0 = only after the last."""
    batch_size: int = 8
    """Videos per batch (each brings views x crops clips)."""


@dataclass
class EMAConfig:
    decay: float = 0.0
    """Model EMA: after each optimizer step ema = decay x ema + (1 - decay) x weights (e.g. 0.9999); 0 = off. With
    it on, validation and the best checkpoint also score the EMA weights."""


@dataclass
class ProbeConfig:
    """``vmim probe``: classifiers fit on frozen pooled features (evaluation transform, no augmentation)."""

    methods: List[str] = field(default_factory=lambda: list(PROBE_METHODS))
    """linear (standardized features, logistic regression) and / or knn (cosine, majority of k)."""
    knn_k: int = 20
    C: float = 1.0
    """Inverse L2 strength of the logistic regression."""
    labels_per_class: int = 0
    """Fit on this many labeled samples per class, averaged over ``seeds`` draws (low-label curves); 0 = all."""
    seeds: int = 3
    compare_random_init: bool = True
    """Also probe the same architecture at random init (what the weights add)."""


def _finetune_optim() -> OptimConfig:
    return OptimConfig(lr=5e-4, min_lr=1e-6, warmup_epochs=5.0, betas=[0.9, 0.999], layer_decay=0.75)


@dataclass
class FinetuneConfig:
    """A supervised run (``task: finetune``)."""

    KINDED = {"model": "backbones"}
    MAPPINGS = {"data.datasets": "datasets", "eval.datasets": "datasets"}

    task: str = "finetune"
    output_dir: str = "runs/finetune"
    resume: str = "auto"
    """auto: continue from output_dir's newest checkpoint if any; never; or a checkpoint path."""
    init: Optional[str] = ""
    """Starting weights of the backbone: a vmim pretraining run directory or checkpoint (its encoder), a fine-tuning
    checkpoint, or a ``vmim convert`` file (VideoMAE, MAE, MVD, timm, SlowFast MViTv2); empty (``init=``) = random
    init. Decoders and targets are dropped; a key the model lacks, or a model key it lacks (other than the fresh head
    and fc_norm), stops the run."""
    model: Any = None
    """The backbone, as in pretraining (``global_pool``, ``fc_norm``: the classifier's pooling)."""
    head: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(batch_size=8))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    optim: OptimConfig = field(default_factory=_finetune_optim)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=75))
    log: LogConfig = field(default_factory=lambda: LogConfig(image_every_steps=0))
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        fill_kinded_defaults(self)

    def validate(self) -> None:
        validate_finetune(self)


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Semantic checks of a supervised config. Raises ConfigError naming the key."""
    _check(cfg.task == "finetune", "task", f"'{cfg.task}' is not a fine-tuning run")
    cfg.init = cfg.init or ""
    cfg.model.check("model", cfg)
    validate_common(cfg)
    h, a, e = cfg.head, cfg.augment, cfg.eval
    _check(h.num_classes >= 0, "head.num_classes", f"{h.num_classes} must be >= 0 (0 = from the training list)")
    _check(0 <= h.dropout < 1, "head.dropout", f"{h.dropout} is outside [0, 1)")
    _check(h.init_scale > 0, "head.init_scale", f"{h.init_scale} must be positive")
    if a.rand_augment:
        _check(a.rand_augment.startswith("rand"), "augment.rand_augment",
               f"'{a.rand_augment}' is not a RandAugment string (e.g. rand-m7-n4-mstd0.5-inc1)")
    for name in ("random_erasing", "mixup_prob", "switch_prob"):
        value = getattr(a, name)
        _check(0 <= value <= 1, f"augment.{name}", f"{value} is outside [0, 1]")
    for name in ("mixup", "cutmix"):
        _check(getattr(a, name) >= 0, f"augment.{name}", f"{getattr(a, name)} must be >= 0")
    _check(0 <= a.label_smoothing < 1, "augment.label_smoothing", f"{a.label_smoothing} is outside [0, 1)")
    if a.mixup > 0 or a.cutmix > 0:
        _check(cfg.data.batch_size * cfg.data.repeat % 2 == 0, "data.batch_size",
               f"mixup / cutmix pair each clip with the batch's mirror: data.batch_size x data.repeat = "
               f"{cfg.data.batch_size * cfg.data.repeat} must be even (or set augment.mixup=0 augment.cutmix=0)")
    for name, ds in e.datasets.items():
        ds.check(f"eval.datasets.{name}", cfg)
    _check(e.num_views >= 1, "eval.num_views", f"{e.num_views} must be >= 1")
    _check(e.val_views >= 1, "eval.val_views", f"{e.val_views} must be >= 1")
    _choice("eval.num_crops", str(e.num_crops), ("1", "3"))
    _choice("eval.val_crops", str(e.val_crops), ("1", "3"))
    _check(e.short_side == 0 or e.short_side >= cfg.data.img_size, "eval.short_side",
           f"{e.short_side} must be 0 or >= data.img_size={cfg.data.img_size}")
    _check(e.every_epochs >= 0, "eval.every_epochs", f"{e.every_epochs} must be >= 0")
    _check(e.batch_size >= 1, "eval.batch_size", f"{e.batch_size} must be >= 1")
    _check(0 <= cfg.ema.decay < 1, "ema.decay", f"{cfg.ema.decay} is outside [0, 1)")
    p = cfg.probe
    _check(len(p.methods) > 0, "probe.methods", "at least one of linear, knn")
    for method in p.methods:
        _choice("probe.methods", method, PROBE_METHODS)
    _check(p.knn_k >= 1, "probe.knn_k", f"{p.knn_k} must be >= 1")
    _check(p.C > 0, "probe.C", f"{p.C} must be positive")
    _check(p.labels_per_class >= 0, "probe.labels_per_class", f"{p.labels_per_class} must be >= 0")
    _check(p.seeds >= 1, "probe.seeds", f"{p.seeds} must be >= 1")


__all__ = ["AugmentConfig", "ClassifierConfig", "ConfigError", "EMAConfig", "EvalConfig", "FinetuneConfig",
           "ProbeConfig", "validate_finetune"]
