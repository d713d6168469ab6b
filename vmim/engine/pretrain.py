"""The pretraining task: a masked-modeling method trained on the configured data mix.

Everything generic (loop, precision, DDP, checkpoints, resume, stop signals, logs) is the trainer's; this module
only says what the model and the data are, moves a batch to the device, and adds three hooks: the method's
``after_step`` (its EMA teachers follow the student), the targets' records (log lines, what the checkpoint keeps of
them, the resume check) and the reconstruction preview. It builds the method with ``vmim.meta_arch.build_method`` and
otherwise talks to it only through the method's own generic calls (``after_step``, ``describe``, ``records``,
``check_records``, ``preview``): it imports nothing from targets, and knows no kind of target.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from ..data import build_pretrain_data, build_sources
from ..meta_arch import build_method
from .distributed import DistInfo
from .hooks import Hook
from .precision import autocast
from .task import Task, TrainData
from .trainer import NonFiniteLossError, StopRequested, Trainer, TrainState

__all__ = ["NonFiniteLossError", "PretrainTask", "Preview", "StopRequested", "Trainer", "TrainState", "pretrain"]


def to_device(batch: dict, device: torch.device) -> dict:
    """The clip and the masks (a :class:`~vmim.masking.masks.Masks`) of a batch on ``device``."""
    return {"clip": batch["clip"].to(device, non_blocking=True), "masks": batch["masks"].to(device, non_blocking=True)}


class Preview(Hook):
    """Every ``log.image_every_steps``: input / masked / reconstruction rows of the step's batch to TensorBoard."""

    def __init__(self, every_steps: int):
        self.every_steps = every_steps

    def after_step(self, trainer: Trainer, batch: dict) -> None:
        sharded = getattr(trainer, "sharded", False)  # FSDP: every rank computes it (collectives), rank 0 logs it
        if not self.every_steps or trainer.state.step % self.every_steps or not (trainer.dist.is_main or sharded):
            return
        model = trainer.raw_model
        model.eval()
        if sharded:  # the root's own parameters (stem, norms); each block gathers its own in its forward
            model.unshard()
        with autocast(trainer.device, trainer.precision):
            grid = model.preview(to_device(batch, trainer.device))
        if sharded:
            model.reshard()
        model.train()
        if grid is not None and trainer.dist.is_main:
            trainer.metrics.image("reconstruction", trainer.state.step, grid)


class MethodAfterStep(Hook):
    """After every optimizer step: the method's ``after_step`` (its EMA teachers move towards the student)."""

    def after_step(self, trainer: Trainer, batch: dict) -> None:
        trainer.raw_model.after_step(trainer.state.step, trainer.total_steps)


class TeacherRecord(Hook):
    """The method's records of its targets (``records()``: a frozen teacher's source and content hash) in every
    checkpoint, its ``describe()`` lines in the log at the start, and ``check_records(saved)`` on a resume, before the
    first step (a teacher whose weights hash differently stops the run, naming ``targets.<name>.path``). The class
    keeps its name because checkpoints keep a hook's state under it (``hooks.TeacherRecord``)."""

    def __init__(self):
        self.records: dict[str, dict] = {}
        self.saved: dict | None = None

    def before_train(self, trainer: Trainer) -> None:
        method = trainer.raw_model
        self.records = method.records()
        for line in method.describe():
            trainer.log.info(line)
        if self.saved is not None:
            method.check_records(self.saved)

    def state_dict(self) -> dict | None:
        return dict(self.records) or None

    def load_state_dict(self, state: dict) -> None:
        self.saved = state


class PretrainTask(Task):
    name = "pretrain"

    def build_model(self) -> nn.Module:
        return build_method(self.cfg)

    def build_data(self, model: nn.Module, dist: DistInfo) -> TrainData:
        self.built = build_sources(self.cfg.data.datasets, self.cfg.data, self.cfg.model.in_chans)  # summary_lines
        return build_pretrain_data(self.cfg, model.backbone.patch_size, dist.world_size, dist.rank, self.built)

    def forward(self, model: nn.Module, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        losses = model(to_device(batch, device))
        source = list(self.cfg.data.datasets)[int(batch["dataset"][0])]  # batches are homogeneous in dataset
        return {**losses, f"loss_by_dataset/{source}": losses["loss"]}

    def hooks(self) -> list[Hook]:
        return [MethodAfterStep(), TeacherRecord(), Preview(self.cfg.log.image_every_steps)]


def pretrain(cfg: Config) -> TrainState:
    """Run (or continue) a pretraining run; returns the final state."""
    return Trainer(cfg, PretrainTask(cfg)).fit()
