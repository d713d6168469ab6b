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
* hooks: model EMA (optional) and per-epoch validation (top-1 / top-5 / loss to TensorBoard, ``checkpoints/best.pt``,
  early stopping).

Test-set hygiene (issue 21): the per-epoch validation runs on the **validation sets** (``eval.val_datasets``, or the
``<name>_val`` sets carved from the training data by ``eval.val_fraction``: :mod:`vmim.data.splits`), never on the
test sets (``eval.datasets``, which ``vmim eval`` scores):

* ``best.pt`` is selected on the first validation set's top-1 (the weights' or the EMA's, whichever is higher) and
  records plain data: step, epoch, which weights, top-1, ``selected_on`` (``val/<name> top-1``) and how many
  validations it won over; ``vmim eval`` defaults to it only when it names a validation set;
* ``eval.patience`` ends training (:meth:`~vmim.engine.trainer.Trainer.request_finish`) after that many validations
  in a row without a better top-1; the count is in the hook's checkpoint state, and the trainer records the end, so
  a resumed run neither forgets the count nor trains on after the stop;
* with no validation set, no ``best.pt`` is written and nothing stops early; the test sets are still scored every
  ``eval.every_epochs`` for curves, under ``test/<name>/...`` (and ``test_ema/...``), and the log says so at start;
* a carved split is written to ``<run>/val_split.tsv`` (rank 0) and fingerprinted in the hook's state: a resumed
  run whose carve differs (another list, ``eval.val_fraction`` or ``eval.val_seed``) is refused, since its training
  would take in samples that validated the epochs before.

The task also says in words what the run trains on (:meth:`FinetuneTask.summary_lines`, logged by the trainer after
its set-up lines): per training set its samples, per-class counts and subset, the modality; the class count; the
validation and test sets; the starting weights (what ``init`` loaded, or "from scratch").

Validation treats bad files and stop signals as training does (issue 19):

* a video that fails to load is a miss (:mod:`vmim.engine.evaluate`), reported once in its own log line, remembered
  by the hook's :class:`~vmim.data.bad_files.BadFileMonitor` (the next pass, and the EMA's pass, fail it without
  opening it again; the memory is plain data in the hook's checkpoint state, kept across a resume) and counted
  against ``data.max_bad_fraction`` (TooManyBadFiles past it);
* a stop signal during a pass aborts it after the current batch on every rank; the trainer then saves the epoch-end
  checkpoint and stops. The hook's state says ``pending``: the resumed run validates that epoch before it trains
  on, so the epoch still competes for ``best.pt`` and counts towards ``eval.patience`` (a pass interrupted again
  stays pending);
* the start-up of ``finetune`` (reading and checking every list) stops at once on a signal, as the trainer's does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, config_to_yaml
from ..data import build_sources, build_train_data
from ..data.build import build_carved_sources, describe_source
from ..data.labels import check_labels, resolve_num_classes
from ..meta_arch.classification import build_classification
from .checkpoint import save_atomic
from .distributed import DistInfo
from .hooks import Hook
from .task import Task, TrainData
from .trainer import Trainer, TrainState, starting


class FinetuneTask(Task):
    name = "finetune"

    def __init__(self, cfg):
        super().__init__(cfg)
        e, in_chans = cfg.eval, cfg.model.in_chans
        self.splits: list = []  # vmim.data.splits.Split per training set, with eval.val_fraction
        if e.val_fraction:
            self.built, self.val_built, self.splits = build_carved_sources(cfg.data.datasets, cfg.data, in_chans,
                                                                           e.val_fraction, e.val_seed)
        else:
            self.built = build_sources(cfg.data.datasets, cfg.data, in_chans)  # names, sources, counts
            self.val_built = build_checked_sources("eval.val_datasets", e.val_datasets, cfg)
        check_split_unchanged(cfg, self.splits)
        self.num_classes = resolve_num_classes(cfg, self.built)
        for name, source, *_ in self.built:
            check_labels(f"data.datasets.{name}", source, self.num_classes)
        for (name, source, *_), split in zip(self.val_built, self.splits or [None] * len(self.val_built)):
            key = f"data.datasets.{split.name}" if split is not None else f"eval.val_datasets.{name}"
            check_labels(key, source, self.num_classes)
        self.val_sources = {name: source for name, source, *_ in self.val_built}
        self.eval_built = build_sources(cfg.eval.datasets, cfg.data, cfg.model.in_chans)  # with listed, missing
        self.eval_sources = {name: source for name, source, *_ in self.eval_built}
        for name, source in self.eval_sources.items():
            check_labels(f"eval.datasets.{name}", source, self.num_classes)
        self.init_lines: list[str] = []

    def build_model(self) -> nn.Module:
        model = build_classification(self.cfg, self.num_classes)
        if self.cfg.init:
            from ..models.loading import load_init

            self.init_lines = load_init(model.backbone, self.cfg.init, self.cfg.model)  # logged by summary_lines
        return model

    def summary_lines(self) -> list[str]:
        """Training sets (samples, per-class counts, subset, modality), classes, validation and test sets, what
        selects ``best.pt`` and stops early, and the starting weights."""
        cfg, e = self.cfg, self.cfg.eval
        rest = {split.name: split.rest for split in self.splits}
        lines = [f"train {describe_source(name, source, cfg.data.datasets[name], of=rest.get(name))}"
                 for name, source, *_ in self.built]
        lines.append(f"{self.num_classes} classes" + (" (head.num_classes)" if cfg.head.num_classes else
                                                      " (from the training data)"))
        for i, (name, source, *_) in enumerate(self.val_built):
            where = (f"carved from '{self.splits[i].name}' before its subset (eval.val_fraction {e.val_fraction:g} of "
                     f"each class, seed {e.val_seed}; listed in val_split.tsv)" if self.splits else "eval.val_datasets")
            lines.append(f"validation {describe_source(name, source)}: {where}")
        every = "every epoch" if e.every_epochs == 1 else f"every {e.every_epochs} epochs and after the last"
        when = every if e.every_epochs else "after the last epoch"
        for name, source, *_ in self.eval_built:
            use = ("scored by vmim eval, never used to select or stop" if self.val_built else
                   f"scored {when} for curves only (test/{name}/...), never used to select or stop")
            lines.append(f"test {describe_source(name, source)}: {use}")
        if self.val_built:
            first = self.val_built[0][0]
            lines.append(f"validation {when}: checkpoints/best.pt keeps the best top-1 on val/{first}"
                         + (f"; early stopping after {e.patience} validations without a better one" if e.patience
                            else ""))
        else:
            lines.append("no validation set: checkpoints/best.pt is not kept; vmim eval scores last.pt (set "
                         "eval.val_fraction or eval.val_datasets to select a checkpoint)")
        if cfg.init:
            lines += [f"starting weights: {cfg.init}", *(f"  {line}" for line in self.init_lines)]
        else:
            lines.append(f"starting weights: from scratch (random init, seed {cfg.train.seed})")
        return lines

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
    validation set -> ``val/<name>/{top1,top5,loss}`` (and ``val_ema/...``); the best top-1 of the first keeps its
    weights in ``checkpoints/best.pt``, and ``eval.patience`` validations without a better one end training. With no
    validation set: the test sets, under ``test/<name>/...``, for curves only. Bad files and stop signals: see the
    module docstring."""

    def __init__(self, task: FinetuneTask, ema: ModelEMA | None = None):
        from ..data.bad_files import BadFileMonitor

        self.task, self.ema = task, ema
        self.selecting = bool(getattr(task, "val_built", []))
        """Whether the run has a validation set: only then is best.pt kept and early stopping possible."""
        built = task.val_built if self.selecting else getattr(task, "eval_built", [])
        self.sources = {name: source for name, source, *_ in built}
        self.prefix = "val" if self.selecting else "test"
        self.best, self.best_step = -1.0, -1
        self.validations = 0
        """Passes over the validation sets finished (weights and EMA together count once; test-set curves do not)."""
        self.since_best = 0
        """Validations in a row since the last better top-1 (eval.patience counts these)."""
        self.pending = False
        """A due validation has not finished (a stop signal aborted it): the resumed run runs it first."""
        self.last: dict[str, object] = {}
        self.split = {split.name: split.digest() for split in getattr(task, "splits", [])}
        """Fingerprints of the carved validation sets (eval.val_fraction), checked on resume."""
        self.monitor = BadFileMonitor([b[0] for b in built], [b[2] for b in built], [b[3] for b in built],
                                      task.cfg.data.max_bad_fraction, action="counted as a miss")

    def _due(self, trainer: Trainer) -> bool:
        every, epoch = trainer.cfg.eval.every_epochs, trainer.state.epoch
        return epoch >= trainer.cfg.train.epochs or (every > 0 and epoch % every == 0)

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:  # one rank logs: every rank holds the same merged failures
            self.monitor.report = lambda line: None
        splits = getattr(self.task, "splits", [])
        if splits and trainer.dist.is_main:
            from ..data.splits import write_split

            write_split(splits, Path(trainer.run_dir) / "val_split.tsv")
        if self.pending and self.sources:
            trainer.log.info(f"validation of epoch {trainer.state.epoch} was interrupted: running it first")
            self.run(trainer)

    def after_epoch(self, trainer: Trainer) -> None:
        if not self.sources or not self._due(trainer):
            return
        self.run(trainer)

    def run(self, trainer: Trainer) -> None:
        """Validate the weights (and the EMA's) now; keep ``best.pt``; count towards ``eval.patience``. Raises
        Interrupted (``pending`` stays set) when a stop signal arrives during the pass."""
        self.pending = True
        candidates = {self.prefix: trainer.raw_model}
        if self.ema is not None:
            candidates[f"{self.prefix}_ema"] = self.ema.module
        scores = {}
        for prefix, model in candidates.items():
            what = "validating" if self.selecting else "scoring (curves only)"
            trainer.log.info(f"{prefix}: {what} epoch {trainer.state.epoch} on {', '.join(self.sources)}")
            results = validate(trainer, model, self.sources, self.monitor)
            for name, result in results.items():
                trainer.metrics.scalars(trainer.state.step, {f"{prefix}/{name}/top1": result.top1,
                                                             f"{prefix}/{name}/top5": result.top5,
                                                             f"{prefix}/{name}/loss": result.loss})
                trainer.log.info(f"{prefix} {name} epoch {trainer.state.epoch}: {result.summary_line()}")
                self.last[f"{prefix}/{name}"] = result
            scores[prefix] = next(iter(results.values())).top1
        self.pending = False
        if self.selecting:
            self.validations += 1
            self._select(trainer, candidates, scores)

    def _select(self, trainer: Trainer, candidates: dict, scores: dict) -> None:
        """best.pt for a better top-1 on the first validation set; early stopping after ``eval.patience`` without."""
        first = next(iter(self.sources))
        selected_on = f"val/{first} top-1"
        winner = max(scores, key=scores.get)
        if scores[winner] > self.best:
            self.best, self.best_step, self.since_best = scores[winner], trainer.state.step, 0
            if trainer.dist.is_main:
                path = Path(trainer.run_dir) / "checkpoints" / "best.pt"
                save_atomic({"model": candidates[winner].state_dict(), "config": config_to_yaml(trainer.cfg),
                             "task": "finetune", "step": trainer.state.step, "epoch": trainer.state.epoch,
                             "weights": "ema" if winner.endswith("_ema") else "model", "top1": scores[winner],
                             "selected_on": selected_on, "validations": self.validations}, path)
                trainer.log.info(f"best {selected_on} {scores[winner]:.2%} ({winner}) at step {trainer.state.step}: "
                                 f"{path}")
            return
        self.since_best += 1
        patience = trainer.cfg.eval.patience
        trainer.log.info(f"no better {selected_on} for {self.since_best} validation(s) (best {self.best:.2%} at step "
                         f"{self.best_step}" + (f"; eval.patience={patience})" if patience else ")"))
        if patience and self.since_best >= patience:
            trainer.request_finish(f"early stopping: no better {selected_on} in {self.since_best} validations in a "
                                   f"row (eval.patience={patience}; best {self.best:.2%} at step {self.best_step})")

    def state_dict(self) -> dict | None:
        """Plain data: the best score, the validation counts, whether a validation is pending, the carved split's
        fingerprints, the known bad validation files."""
        return {"best": self.best, "best_step": self.best_step, "pending": self.pending,
                "validations": self.validations, "since_best": self.since_best, "val_split": dict(self.split),
                **self.monitor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Raises ConfigError when the carved validation split differs from the one the run trained with."""
        saved = state.get("val_split", {})  # absent in checkpoints of earlier releases (and there was no carve)
        if saved != self.split:
            raise ConfigError("eval.val_fraction", f"the validation split carved now ({_split_words(self.split)}) "
                              f"differs from the one this run trained with ({_split_words(saved)}): a changed "
                              "training list, eval.val_fraction or eval.val_seed would train on samples that "
                              "validated earlier epochs; restore them, or start a new output_dir")
        if "validations" in state:  # else written by an earlier release: its best was a test-set score, not ours
            self.best, self.best_step = state["best"], state["best_step"]
            self.validations, self.since_best = int(state["validations"]), int(state.get("since_best", 0))
        self.pending = bool(state.get("pending", False))  # absent in checkpoints of earlier releases
        sources = list(self.sources.values())
        self.monitor.load_state_dict(state, lambda d, index: sources[d].describe(index) if index < len(sources[d])
                                     else None)


def check_split_unchanged(cfg, splits: list) -> None:
    """A run that continues (resume=auto, a last.pt in ``output_dir``) must carve the validation split its
    ``val_split.tsv`` records: checked here, before the trainer touches the run folder (the hook's fingerprint
    check on restore also covers a run whose file is gone). Raises ConfigError naming eval.val_fraction."""
    from ..data.splits import held_out, recorded_split

    run = Path(cfg.output_dir)
    recorded = recorded_split(run / "val_split.tsv")
    if recorded is None or cfg.resume != "auto" or not (run / "checkpoints" / "last.pt").exists():
        return
    now = held_out(splits)
    if now != recorded:
        raise ConfigError("eval.val_fraction", f"this run continues from {run / 'checkpoints' / 'last.pt'}, and the "
                          f"validation split carved now ({len(now)} samples, eval.val_fraction="
                          f"{cfg.eval.val_fraction:g}, eval.val_seed={cfg.eval.val_seed}) differs from the "
                          f"{len(recorded)} held out in {run / 'val_split.tsv'}: a changed training list, "
                          "eval.val_fraction or eval.val_seed would train on samples that validated earlier epochs; "
                          "restore them, or start a new output_dir")


def _split_words(split: dict) -> str:
    return ", ".join(f"{name} {digest}" for name, digest in split.items()) or "none"


def build_checked_sources(key: str, datasets: dict, cfg) -> list[tuple]:
    """(name, source, listed, missing) of every entry of ``datasets`` (``key``: their config key), each list's paths
    and lines checked first. Raises ConfigError naming ``<key>.<name>`` (and the file and line)."""
    from ..data import build_source
    from ..data.indexes import IndexFormatError
    from ..preflight import check_dataset_paths

    built = []
    for name, ds in datasets.items():
        check_dataset_paths(f"{key}.{name}", ds, cfg.head.num_classes, True)
        try:
            built.append((name, *build_source(name, ds, cfg.data, cfg.model.in_chans)))
        except (IndexFormatError, FileNotFoundError) as err:  # a malformed line; listed files missing
            raise ConfigError(f"{key}.{name}", str(err)) from None
    return built


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


__all__ = ["FinetuneTask", "ModelEMA", "Validation", "build_checked_sources", "check_split_unchanged", "finetune",
           "validate"]
