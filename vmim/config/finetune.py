"""Typed configuration of supervised runs (``task: finetune``): fine-tuning, multi-view evaluation and probing.

One schema serves the three commands, so a fine-tuning recipe is also its evaluation and probe recipe:
``vmim finetune`` trains on ``data.datasets`` and validates on the validation sets every ``eval.every_epochs``;
``vmim eval`` scores ``eval.datasets`` (the test sets) with ``eval.num_views`` x ``eval.num_crops`` views;
``vmim probe`` fits linear / k-NN classifiers on frozen features of ``data.datasets`` and scores them on
``eval.datasets``.

Test-set hygiene (issue 21): the validation sets, which pick ``checkpoints/best.pt`` and stop a run early
(``eval.patience``), are never the test sets. They are either a separate list (``eval.val_datasets``) or a
stratified, seeded fraction carved from each training dataset before its own ``fraction`` subset is taken
(``eval.val_fraction``, ``eval.val_seed``: :mod:`vmim.data.splits`), never both. Without a validation set no
checkpoint is selected and nothing stops early; the test sets may still be scored per epoch for curves. A
validation entry equal to a test entry (same kind, list, split, ...) is refused: it would select on the test set
under another name.

Defaults are VideoMAE's fine-tuning recipe (``run_class_finetuning.py``): AdamW (0.9, 0.999), weight decay 0.05,
layer decay 0.75, warm-up 5 epochs, min lr 1e-6, RandAugment ``rand-m7-n4-mstd0.5-inc1``, random erasing 0.25,
mixup 0.8 / cutmix 1.0 with label smoothing 0.1, mean pooling + fc-norm, head init scale 0.001. Shared sections
(model, data, optim, train, log, checkpoint) are the pretraining config's dataclasses, with these defaults.
Torch-free, as the whole config package.

The RandAugment string is parsed here (:func:`parse_rand_augment`), not only by timm when the data is built: timm
silently drops a section without digits (``rand-m-n4``: no magnitude), reads an unknown transform set (``tfoo``) as
the default one, and fails on an unknown section (``rand-x9``) with a bare ``AssertionError`` seconds after torch is
imported. The grammar below is timm 1.0's (``rand_augment_transform``), strict: every section must be known, parse
whole and be in range, so a typo stops at validation naming ``augment.rand_augment``.
:class:`vmim.data.rand_augment.ClipRandAugment` calls the same parser before timm's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .checks import ConfigError, _check, _check_seed, _choice, check_data_sizes, check_finite
from .probe import ProbeConfig, validate_probe
from .registry import kinds, names
from .run import CheckpointConfig, DataConfig, LogConfig, OptimConfig, RunConfig, TrainConfig, validate_common


def builtin_classes() -> dict[str, int]:
    """Dataset kind -> its fixed class count (the built-in datasets register ``info={"classes": N}``):
    ``head.num_classes`` must agree, and ``vmim.data.labels`` reads it."""
    return {name: kind.info["classes"] for name, kind in kinds("datasets").items() if "classes" in kind.info}


def image_kinds() -> tuple[str, ...]:
    """Dataset kinds whose samples are single images (``info={"image": True}``): one temporal view at test time."""
    return tuple(name for name, kind in kinds("datasets").items() if kind.info.get("image"))


RAND_AUGMENT_SECTIONS = {"m": "magnitude (int)", "n": "ops per clip (int)", "p": "probability of each op (float)",
                         "mstd": "magnitude std (float)", "mmax": "magnitude upper bound (int)",
                         "inc": "increasing ops (0 or 1)", "t": "transform set (weights, 3aw or 3a)"}
"""Sections of a RandAugment string after ``rand`` (timm 1.0), with what each holds."""
RAND_AUGMENT_SETS = {"weights": 15, "3aw": 14, "3a": 0}
"""timm's named transform sets (``t<name>``) -> ops drawn without replacement (weighted sets: ``n`` may not exceed
it), 0 for a set drawn with replacement; ``tests/test_augment.py`` checks these against timm."""
LEVEL_DENOM = 10
"""timm's magnitude upper bound when ``mmax`` is not given."""


def parse_rand_augment(spec: str) -> dict[str, Any]:
    """A timm RandAugment string (``rand-m7-n4-mstd0.5-inc1``) -> ``{section: value}`` of the sections given.

    Raises:
        ValueError: the string does not start with ``rand``, or a section is unknown, repeated, malformed or out of
            range (the message names the section).
    """
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"'{spec}' is not a RandAugment string: it starts with 'rand-' (e.g. rand-m7-n4-mstd0.5-inc1)")
    known = ", ".join(f"{k}: {v}" for k, v in RAND_AUGMENT_SECTIONS.items())
    out: dict[str, Any] = {}
    for part in parts[1:]:
        match = re.fullmatch(r"(t)(.*)|([a-z]+)(.*)", part)
        key, text = (match.group(1), match.group(2)) if match and match.group(1) else (
            (match.group(3), match.group(4)) if match else (part, ""))
        if key not in RAND_AUGMENT_SECTIONS:
            raise ValueError(f"unknown section '{part}' in '{spec}' (sections: {known})")
        if key in out:
            raise ValueError(f"section '{key}' given twice in '{spec}'")
        try:
            if key == "t":
                if text not in RAND_AUGMENT_SETS:
                    raise ValueError
                value: Any = text
            elif key in ("p", "mstd"):
                value = float(text) if text[:1].isdigit() else float("nan")  # timm: the value starts at a digit
                if not value >= 0 or (key == "p" and value > 1):  # also nan
                    raise ValueError
            else:
                if not text.isdigit():
                    raise ValueError
                value = int(text)
                if (key == "inc" and value > 1) or (key == "n" and value < 1):
                    raise ValueError
        except ValueError:
            raise ValueError(f"bad section '{part}' in '{spec}': '{key}' takes {RAND_AUGMENT_SECTIONS[key]}"
                             + (" in [0, 1]" if key == "p" else " >= 1" if key == "n" else "")) from None
        out[key] = value
    bound = out.get("mmax", LEVEL_DENOM)
    if out.get("m", 0) > bound:
        raise ValueError(f"magnitude m{out['m']} in '{spec}' is above the upper bound {bound} (mmax; timm would "
                         "clip it silently)")
    limit = RAND_AUGMENT_SETS.get(out.get("t", ""), 0)
    if limit and out.get("n", 2) > limit:
        raise ValueError(f"n{out.get('n', 2)} in '{spec}': the weighted set t{out['t']} draws at most {limit} "
                         "distinct ops")
    return out


@dataclass
class ClassifierConfig:
    """The classification head on the backbone's pooled features (``model.global_pool``, ``model.fc_norm``)."""

    num_classes: int = 0
    """Classes; 0 = from the training list (its format's class list, else the largest label + 1)."""
    dropout: float = 0.0
    """Dropout before the linear layer (VideoMAE fc_drop_rate: 0.5 for ViT-L/H and UCF101)."""
    init_scale: float = 0.001
    """The linear layer starts at trunc_normal(std 0.02) x this (VideoMAE: 0.001; MAE's std 2e-5 = 0.001)."""
    pooling: str = ""
    """Empty = the backbone's own pooling (``model.global_pool``, then ``model.fc_norm``); or a registered pooling
    over the backbone's tokens, then ``model.fc_norm``: mean, cls (the class token), attentive (V-JEPA's learned
    query, one cross-attention block)."""


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
    """name -> a labeled dataset entry (kinds as data.datasets): the test sets, which ``vmim eval`` scores; never used
    to select a checkpoint or stop (without a validation set they are scored per epoch for curves only). Their crop
    and flip keys are not used."""
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
    val_datasets: Dict[str, Any] = field(default_factory=dict)
    """name -> a labeled dataset entry (kinds as data.datasets): the validation sets, distinct from the test sets
    (``eval.datasets``). The first one selects ``checkpoints/best.pt`` and drives ``eval.patience``. Not with
    ``eval.val_fraction``."""
    val_fraction: float = 0.0
    """Carve this fraction of each class of every ``data.datasets`` entry (before its ``fraction`` subset) as the
    validation set ``<name>_val``, never trained on; listed in ``<run>/val_split.tsv``. 0 = none. Not with
    ``eval.val_datasets``."""
    val_seed: int = 0
    """Seed of the ``eval.val_fraction`` carve: the same seed and list give the same split (also on resume)."""
    patience: int = 0
    """Early stopping: end training after this many validations in a row without a better validation top-1; 0 =
    off. Needs a validation set."""


@dataclass
class EMAConfig:
    decay: float = 0.0
    """Model EMA: after each optimizer step ema = decay x ema + (1 - decay) x weights (e.g. 0.9999); 0 = off. With
    it on, validation and the best checkpoint also score the EMA weights."""


def _finetune_optim() -> OptimConfig:
    return OptimConfig(lr=5e-4, min_lr=1e-6, warmup_epochs=5.0, betas=[0.9, 0.999], layer_decay=0.75)


@dataclass
class FinetuneConfig(RunConfig):
    """A supervised run (``task: finetune``)."""

    KINDED = {"model": "backbones"}
    MAPPINGS = {"data.datasets": "datasets", "eval.datasets": "datasets", "eval.val_datasets": "datasets"}

    task: str = "finetune"
    output_dir: str = "runs/finetune"
    init: Optional[str] = ""
    """Starting weights of the backbone: a vmim pretraining run directory or checkpoint (its encoder), a fine-tuning
    checkpoint, or a ``vmim convert`` file (VideoMAE, MAE, MVD, timm, SlowFast MViTv2); empty (``init=``) = random
    init. Decoders and targets are dropped; a key the model lacks, or a model key it lacks (other than the fresh head
    and fc_norm), stops the run."""
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

    def validate(self) -> None:
        validate_finetune(self)


def validate_finetune(cfg: FinetuneConfig) -> None:
    """Semantic checks of a supervised config. Raises ConfigError naming the key."""
    _check(cfg.task == "finetune", "task", f"'{cfg.task}' is not a fine-tuning run")
    cfg.init = cfg.init or ""
    check_finite(cfg)
    check_data_sizes(cfg)
    cfg.model.check("model", cfg)
    validate_common(cfg)
    h, a, e = cfg.head, cfg.augment, cfg.eval
    _check(h.num_classes >= 0, "head.num_classes", f"{h.num_classes} must be >= 0 (0 = from the training list)")
    for section, datasets in (("data.datasets", cfg.data.datasets), ("eval.datasets", e.datasets),
                              ("eval.val_datasets", e.val_datasets)):
        for name, ds in datasets.items():
            known = builtin_classes().get(ds.kind)
            _check(not h.num_classes or known is None or known == h.num_classes, "head.num_classes",
                   f"{h.num_classes}, and {section}.{name} ({ds.kind}) has {known} classes")
    _check(0 <= h.dropout < 1, "head.dropout", f"{h.dropout} is outside [0, 1)")
    _check(h.init_scale > 0, "head.init_scale", f"{h.init_scale} must be positive")
    if h.pooling:
        _choice("head.pooling", h.pooling, names("poolings"))
        reads_prefix = kinds("poolings")[h.pooling].info.get("prefix")
        _check(not reads_prefix or getattr(cfg.model, "cls_token", None) is not False, "head.pooling",
               f"{h.pooling} pooling reads the class token: set model.cls_token=true")
    if a.rand_augment:
        try:
            parse_rand_augment(a.rand_augment)
        except ValueError as err:
            raise ConfigError("augment.rand_augment", str(err)) from None
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
    validated = [("eval.datasets", e.datasets), ("eval.val_datasets", e.val_datasets)]
    if e.val_fraction:  # the carved validation sets hold the training data's kind
        validated.append(("data.datasets", cfg.data.datasets))
    images = [f"{key}.{name}" for key, datasets in validated for name, ds in datasets.items()
              if ds.kind in image_kinds()]
    _check(e.val_views == 1 or not images, "eval.val_views",
           f"{e.val_views} temporal views, and {images[0] if images else ''} holds images (one view)")
    _choice("eval.num_crops", str(e.num_crops), ("1", "3"))
    _choice("eval.val_crops", str(e.val_crops), ("1", "3"))
    _check(e.short_side == 0 or e.short_side >= cfg.data.img_size, "eval.short_side",
           f"{e.short_side} must be 0 or >= data.img_size={cfg.data.img_size}")
    _check(e.every_epochs >= 0, "eval.every_epochs", f"{e.every_epochs} must be >= 0")
    _check(e.batch_size >= 1, "eval.batch_size", f"{e.batch_size} must be >= 1")
    _check(0 <= cfg.ema.decay < 1, "ema.decay", f"{cfg.ema.decay} is outside [0, 1)")
    validate_validation(cfg)
    validate_probe(cfg.probe)


def validate_validation(cfg: FinetuneConfig) -> None:
    """The validation set's keys: ``eval.val_datasets`` or ``eval.val_fraction`` (not both), the seed, and
    ``eval.patience`` (needs a validation set and per-epoch validation). Raises ConfigError naming the key."""
    e = cfg.eval
    for name, ds in e.val_datasets.items():
        ds.check(f"eval.val_datasets.{name}", cfg)
        for test_name, test in e.datasets.items():
            _check(_identity(ds) != _identity(test), f"eval.val_datasets.{name}",
                   f"is the same data as the test set eval.datasets.{test_name}: a checkpoint selected on it would be "
                   "test-selected; validate on other data (or eval.val_fraction)")
    _check(0 <= e.val_fraction < 1, "eval.val_fraction", f"{e.val_fraction} is outside [0, 1) (0 = no carved "
                                                         "validation set)")
    _check(not (e.val_fraction and e.val_datasets), "eval.val_fraction",
           f"{e.val_fraction:g}, and eval.val_datasets names {', '.join(e.val_datasets)}: give one validation set "
           "(a carved fraction or a separate list), not both")
    _check_seed("eval.val_seed", e.val_seed)
    _check(e.patience >= 0, "eval.patience", f"{e.patience} must be >= 0 (0 = no early stopping)")
    if e.patience:
        _check(bool(e.val_fraction or e.val_datasets), "eval.patience",
               f"{e.patience}: early stopping needs a validation set (eval.val_fraction or eval.val_datasets); it "
               "never stops on the test sets (eval.datasets)")
        _check(e.every_epochs > 0, "eval.patience",
               f"{e.patience} validations without a better top-1, and eval.every_epochs=0 validates only after the "
               "last epoch")


IDENTITY_KEYS = ("kind", "path", "root", "format", "labels", "split", "split_number", "partition")
"""The keys of a dataset entry that say which samples it holds (not how they are read)."""


def _identity(ds: Any) -> dict:
    """What of a dataset entry names its samples: two entries alike here hold the same data."""
    return {key: getattr(ds, key) for key in IDENTITY_KEYS if hasattr(ds, key)}


def has_validation_set(cfg: FinetuneConfig) -> bool:
    """Whether the run has a validation set (``eval.val_datasets`` or ``eval.val_fraction``)."""
    return bool(cfg.eval.val_datasets or cfg.eval.val_fraction)

__all__ = ["AugmentConfig", "ClassifierConfig", "ConfigError", "EMAConfig", "EvalConfig", "FinetuneConfig",
           "ProbeConfig", "has_validation_set", "parse_rand_augment", "validate_finetune", "validate_validation"]
