"""The fine-tuning task: a classifier trained on labeled clips or images, on the shared trainer.

Everything generic (loop, precision, DDP, accumulation, NaN guard, checkpoints with exact mid-epoch resume, stop
signals, bad files, logs) is the trainer's, exactly as for pretraining; this module says what the model and the data
are, and what one micro-batch's loss is:

* data: the pretraining loader without masks; RandAugment runs per clip in the loader workers, drawn from the
  sample's own seed (one set of ops for every frame), after the dataset's crop and flip (VideoMAE runs it on the
  full decoded frames before cropping; on the 224² crop it costs a fraction, and its geometric ops' fill corners are
  no longer partly cropped away: a small, deliberate difference);
* the model is the classification method (:mod:`vmim.meta_arch.classification`): on the device it turns uint8 into
  [0, 1] pixels, erases (one box on every frame), mixes (Mixup / CutMix with label smoothing), normalizes, pools,
  classifies and returns the soft-target cross-entropy; this task only moves the clip and the label there;
* hooks: model EMA (optional) and per-epoch validation on ``eval.datasets`` (top-1 / top-5 / loss to TensorBoard,
  ``checkpoints/best.pt`` kept for the best top-1 of the first eval dataset).

Validation treats bad files and stop signals as training does (issue 19):

* a video that fails to load is a miss (:mod:`vmim.engine.evaluate`), reported once in its own log line, remembered
  by the hook's :class:`~vmim.data.bad_files.BadFileMonitor` (the next pass, and the EMA's pass, fail it without
  opening it again; the memory is plain data in the hook's checkpoint state, kept across a resume) and counted
  against ``data.max_bad_fraction`` (TooManyBadFiles past it);
* a stop signal during a pass aborts it after the current batch on every rank; the trainer then saves the epoch-end
  checkpoint and stops. The hook's state says ``pending``: the resumed run validates that epoch before it trains
  on, so the epoch still competes for ``best.pt`` (a pass interrupted again stays pending);
* the start-up of ``finetune`` (reading and checking every list) stops at once on a signal, as the trainer's does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..config import config_to_yaml
from ..data import build_sources, build_train_data
from ..data.labels import check_labels, resolve_num_classes
from ..meta_arch.classification import build_classification
from .checkpoint import save_atomic
from .distributed import DistInfo
from .hooks import Hook
from .task import Task, TrainData
from .trainer import Trainer, TrainState, starting

log = logging.getLogger("vmim")


class FinetuneTask(Task):
    name = "finetune"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.built = build_sources(cfg.data.datasets, cfg.data, cfg.model.in_chans)  # names, sources, counts
        self.num_classes = resolve_num_classes(cfg, self.built)
        for name, source, *_ in self.built:
            check_labels(f"data.datasets.{name}", source, self.num_classes)
        self.eval_built = build_sources(cfg.eval.datasets, cfg.data, cfg.model.in_chans)  # with listed, missing
        self.eval_sources = {name: source for name, source, *_ in self.eval_built}
        for name, source in self.eval_sources.items():
            check_labels(f"eval.datasets.{name}", source, self.num_classes)

    def build_model(self) -> nn.Module:
        model = build_classification(self.cfg, self.num_classes)
        if self.cfg.init:
            from ..models.loading import load_init

            for line in load_init(model.backbone, self.cfg.init, self.cfg.model):
                log.info(line)
        return model

    def build_data(self, model: nn.Module, dist: DistInfo) -> TrainData:
        from ..data.rand_augment import ClipRandAugment

        a, d = self.cfg.augment, self.cfg.data
        transform = ClipRandAugment(a.rand_augment, d.img_size) if a.rand_augment else None
        return build_train_data(self.cfg, self.built, model.backbone.patch_size, dist.world_size, dist.rank, {},
                                transform)

    def forward(self, model: nn.Module, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        losses = model({"clip": batch["clip"].to(device, non_blocking=True),
                        "label": batch["label"].to(device, non_blocking=True)})
        return {"loss": losses["loss"]}

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
    entry keeps its weights in ``checkpoints/best.pt``. Bad files and stop signals: see the module docstring."""

    def __init__(self, task: FinetuneTask, ema: ModelEMA | None = None):
        from ..data.bad_files import BadFileMonitor

        self.task, self.ema = task, ema
        self.best, self.best_step = -1.0, -1
        self.pending = False
        """A due validation has not finished (a stop signal aborted it): the resumed run runs it first."""
        self.last: dict[str, object] = {}
        built = getattr(task, "eval_built", [])
        self.monitor = BadFileMonitor([b[0] for b in built], [b[2] for b in built], [b[3] for b in built],
                                      task.cfg.data.max_bad_fraction, action="counted as a miss")

    def _due(self, trainer: Trainer) -> bool:
        every, epoch = trainer.cfg.eval.every_epochs, trainer.state.epoch
        return epoch >= trainer.cfg.train.epochs or (every > 0 and epoch % every == 0)

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:  # one rank logs: every rank holds the same merged failures
            self.monitor.report = lambda line: None
        if self.pending and self.task.eval_sources:
            trainer.log.info(f"validation of epoch {trainer.state.epoch} was interrupted: running it first")
            self.run(trainer)

    def after_epoch(self, trainer: Trainer) -> None:
        if not self.task.eval_sources or not self._due(trainer):
            return
        self.run(trainer)

    def run(self, trainer: Trainer) -> None:
        """Validate the weights (and the EMA's) now; keep ``best.pt``. Raises Interrupted (``pending`` stays set)
        when a stop signal arrives during the pass."""
        self.pending = True
        candidates = {"val": trainer.raw_model}
        if self.ema is not None:
            candidates["val_ema"] = self.ema.module
        scores = {}
        for prefix, model in candidates.items():
            trainer.log.info(f"{prefix}: validating epoch {trainer.state.epoch} on {', '.join(self.task.eval_sources)}")
            results = validate(trainer, model, self.task.eval_sources, self.monitor)
            for name, result in results.items():
                trainer.metrics.scalars(trainer.state.step, {f"{prefix}/{name}/top1": result.top1,
                                                             f"{prefix}/{name}/top5": result.top5,
                                                             f"{prefix}/{name}/loss": result.loss})
                trainer.log.info(f"{prefix} {name} epoch {trainer.state.epoch}: {result.summary_line()}")
                self.last[f"{prefix}/{name}"] = result
            scores[prefix] = next(iter(results.values())).top1
        self.pending = False
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
        """Plain data: the best score, whether a validation is pending, the known bad validation files."""
        return {"best": self.best, "best_step": self.best_step, "pending": self.pending,
                **self.monitor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.pending = bool(state.get("pending", False))  # absent in checkpoints of earlier releases
        sources = list(self.task.eval_sources.values())
        self.monitor.load_state_dict(state, lambda d, index: sources[d].describe(index) if index < len(sources[d])
                                     else None)


def validate(trainer: Trainer, model: nn.Module, sources: dict, monitor=None) -> dict:
    """{name: EvalResult} of ``model`` on each source (this rank's shard, merged over ranks). With ``monitor`` (a
    :class:`~vmim.data.bad_files.BadFileMonitor` over ``sources`` in order), known bad files are not opened and new
    ones are reported to it. Raises Interrupted when a stop signal arrives (``trainer.stop``)."""
    from ..data.eval_views import build_test_loader
    from .evaluate import evaluate, report_failures

    cfg, e = trainer.cfg, trainer.cfg.eval
    results = {}
    for i, (name, source) in enumerate(sources.items()):  # evaluate() runs the model in eval mode, gives it back
        loader = build_test_loader(source, e.val_views, e.val_crops, e.short_side, e.batch_size,
                                   cfg.data.num_workers, trainer.dist.world_size, trainer.dist.rank,
                                   cfg.data.decode_timeout_s, cfg.data.decode_isolation,
                                   monitor.known_reasons(i) if monitor is not None else None)
        results[name] = evaluate(model, loader, model.num_classes, trainer.device, trainer.precision, trainer.dist,
                                 stop=trainer.stop)
        if monitor is not None:
            report_failures(monitor, i, results[name])
    return results


def finetune(cfg) -> TrainState:
    """Run (or continue) a fine-tuning run; returns the final state. A stop signal while the lists are read and
    checked (before the trainer exists) stops at once (StopRequested)."""
    with starting(cfg.output_dir):
        task = FinetuneTask(cfg)
    return Trainer(cfg, task).fit()


__all__ = ["FinetuneTask", "ModelEMA", "Validation", "finetune", "validate"]
