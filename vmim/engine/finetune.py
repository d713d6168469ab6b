"""The fine-tuning task: a classifier trained on labeled clips or images, on the shared trainer.

Everything generic (loop, precision, DDP, accumulation, NaN guard, checkpoints with exact mid-epoch resume, stop
signals, bad files, logs) is the trainer's, exactly as for pretraining; this module says what the model and the data
are, and what one micro-batch's loss is:

* data: the pretraining loader without masks; RandAugment runs per clip in the loader workers, drawn from the
  sample's own seed (one set of ops for every frame), after the dataset's crop and flip (VideoMAE runs it on the
  full decoded frames before cropping; on the 224² crop it costs a fraction, and its geometric ops' fill corners are
  no longer partly cropped away: a small, deliberate difference);
* on the device: uint8 -> [0, 1] pixels, random erasing (one box on every frame), mixup / cutmix with label
  smoothing, then the classifier (which normalizes) and soft-target cross-entropy;
* hooks: model EMA (optional) and per-epoch validation on ``eval.datasets`` (top-1 / top-5 / loss to TensorBoard,
  ``checkpoints/best.pt`` kept for the best top-1 of the first eval dataset).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..config import config_to_yaml
from ..data import build_sources, build_train_data
from ..data.labels import check_labels, resolve_num_classes
from ..models.classifier import build_classifier
from .checkpoint import save_atomic
from .distributed import DistInfo
from .hooks import Hook
from .task import Task, TrainData
from .trainer import Trainer, TrainState

log = logging.getLogger("vmim")


class FinetuneTask(Task):
    name = "finetune"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.built = build_sources(cfg.data.datasets, cfg.data, cfg.model.in_chans)  # names, sources, counts
        self.num_classes = resolve_num_classes(cfg, self.built)
        for name, source, *_ in self.built:
            check_labels(f"data.datasets.{name}", source, self.num_classes)
        self.eval_sources = {name: source for name, source, *_ in
                             build_sources(cfg.eval.datasets, cfg.data, cfg.model.in_chans)}
        for name, source in self.eval_sources.items():
            check_labels(f"eval.datasets.{name}", source, self.num_classes)
        self.erasing = self.mixup = None

    def build_model(self) -> nn.Module:
        model = build_classifier(self.cfg, self.num_classes)
        if self.cfg.init:
            from ..models.loading import load_init

            for line in load_init(model.backbone, self.cfg.init, self.cfg.model):
                log.info(line)
        return model

    def build_data(self, model: nn.Module, dist: DistInfo) -> TrainData:
        from ..data.rand_augment import ClipRandAugment
        from .batch_augment import ClipMixup, ClipRandomErasing

        a, d = self.cfg.augment, self.cfg.data
        transform = ClipRandAugment(a.rand_augment, d.img_size) if a.rand_augment else None
        self.erasing = ClipRandomErasing(a.random_erasing, d.mean, d.std) if a.random_erasing > 0 else None
        self.mixup = ClipMixup(a.mixup, a.cutmix, a.mixup_prob, a.switch_prob, a.label_smoothing, self.num_classes)
        return build_train_data(self.cfg, self.built, model.backbone.patch_size, dist.world_size, dist.rank, {},
                                transform)

    def forward(self, model: nn.Module, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        from .batch_augment import soft_target_cross_entropy

        pixels = batch["clip"].to(device, non_blocking=True).float().div_(255)
        labels = batch["label"].to(device, non_blocking=True)
        if self.erasing is not None:
            pixels = self.erasing(pixels)
        pixels, targets = self.mixup(pixels, labels)
        logits = model(pixels)
        return {"loss": soft_target_cross_entropy(logits.float(), targets)}

    def hooks(self) -> list[Hook]:
        ema = ModelEMA(self.cfg.ema.decay) if self.cfg.ema.decay > 0 else None
        return [h for h in (ema, Validation(self, ema)) if h is not None]


class ModelEMA(Hook):
    """An exponential moving average of the weights after every optimizer step (timm's ``ModelEmaV3``); kept in
    checkpoints, validated next to the weights themselves."""

    def __init__(self, decay: float):
        self.decay = decay
        self.ema = None
        self._pending: dict | None = None

    def before_train(self, trainer: Trainer) -> None:
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(trainer.raw_model, decay=self.decay)
        if self._pending is not None:
            self.ema.module.load_state_dict(self._pending)
            self._pending = None

    def after_step(self, trainer: Trainer, batch: dict) -> None:
        self.ema.update(trainer.raw_model)

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def state_dict(self) -> dict | None:
        return {"model": self.ema.module.state_dict()} if self.ema is not None else None

    def load_state_dict(self, state: dict) -> None:
        self._pending = state["model"]  # restore() runs before before_train builds the EMA copy


class Validation(Hook):
    """Every ``eval.every_epochs`` epochs and after the last: ``eval.val_views`` x ``eval.val_crops`` views of every
    ``eval.datasets`` entry -> ``val/<name>/{top1,top5,loss}`` (and ``val_ema/...``); the best top-1 of the first
    entry keeps its weights in ``checkpoints/best.pt``."""

    def __init__(self, task: FinetuneTask, ema: ModelEMA | None = None):
        self.task, self.ema = task, ema
        self.best, self.best_step = -1.0, -1
        self.last: dict[str, object] = {}

    def _due(self, trainer: Trainer) -> bool:
        every, epoch = trainer.cfg.eval.every_epochs, trainer.state.epoch
        return epoch >= trainer.cfg.train.epochs or (every > 0 and epoch % every == 0)

    def after_epoch(self, trainer: Trainer) -> None:
        if not self.task.eval_sources or not self._due(trainer):
            return
        candidates = {"val": trainer.raw_model}
        if self.ema is not None:
            candidates["val_ema"] = self.ema.module
        scores = {}
        for prefix, model in candidates.items():
            results = validate(trainer, model, self.task.eval_sources)
            for name, result in results.items():
                trainer.metrics.scalars(trainer.state.step, {f"{prefix}/{name}/top1": result.top1,
                                                             f"{prefix}/{name}/top5": result.top5,
                                                             f"{prefix}/{name}/loss": result.loss})
                if result.failed_line():
                    trainer.log.warning(f"{prefix} {name}: {result.failed_line()}")
                trainer.log.info(f"{prefix} {name} epoch {trainer.state.epoch}: {result.summary_line()}")
                self.last[f"{prefix}/{name}"] = result
            scores[prefix] = next(iter(results.values())).top1
        winner = max(scores, key=scores.get)
        if scores[winner] > self.best:
            self.best, self.best_step = scores[winner], trainer.state.step
            if trainer.dist.is_main:
                path = Path(trainer.run_dir) / "checkpoints" / "best.pt"
                save_atomic({"model": candidates[winner].state_dict(), "config": config_to_yaml(trainer.cfg),
                             "task": "finetune", "step": trainer.state.step, "epoch": trainer.state.epoch,
                             "weights": "ema" if winner == "val_ema" else "model", "top1": scores[winner]}, path)
                trainer.log.info(f"best top-1 {scores[winner]:.2%} ({winner}) at step {trainer.state.step}: {path}")

    def state_dict(self) -> dict | None:
        return {"best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]


def validate(trainer: Trainer, model: nn.Module, sources: dict) -> dict:
    """{name: EvalResult} of ``model`` on each source (this rank's shard, merged over ranks)."""
    from ..data.eval_views import build_test_loader
    from .evaluate import evaluate

    cfg, e = trainer.cfg, trainer.cfg.eval
    results = {}
    for name, source in sources.items():  # evaluate() runs the model in eval mode and gives its mode back
        loader = build_test_loader(source, e.val_views, e.val_crops, e.short_side, e.batch_size,
                                   cfg.data.num_workers, trainer.dist.world_size, trainer.dist.rank,
                                   cfg.data.decode_timeout_s, cfg.data.decode_isolation)
        results[name] = evaluate(model, loader, model.num_classes, trainer.device, trainer.precision, trainer.dist)
    return results


def finetune(cfg) -> TrainState:
    """Run (or continue) a fine-tuning run; returns the final state."""
    return Trainer(cfg, FinetuneTask(cfg)).fit()


__all__ = ["FinetuneTask", "ModelEMA", "Validation", "finetune", "validate"]
