"""What the generic trainer trains: a task gives the model, the data and one micro-batch's losses.

The trainer (:mod:`vmim.engine.trainer`) owns everything generic: device, precision, DDP, accumulation, clipping,
the NaN guard, checkpoints with exact mid-epoch resume, stop signals and metrics. A task owns what differs between
pretraining and fine-tuning: which model, which data, what one forward pass returns, its own hooks (e.g. the
reconstruction preview, or per-epoch validation), and the lines that say in words what the run trains on
(:meth:`Task.summary_lines`). Tasks never see the optimizer; the trainer never sees targets, masks or labels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator, Protocol

import torch
from torch import nn

from ..config import Config
from .distributed import DistInfo
from .throughput import task_step_flops


class TrainData(Protocol):
    """The data a task trains on, resumable at a micro-batch of an epoch."""

    names: list[str]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...

    def __iter__(self) -> Iterator[dict]: ...

    def __len__(self) -> int: ...

    def scalars(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None: ...


class Task(ABC):
    """One kind of training run, configured by a :class:`~vmim.config.Config`."""

    name: str = "task"

    def __init__(self, cfg: Config):
        self.cfg = cfg

    @abstractmethod
    def build_model(self) -> nn.Module:
        """The trainable module (all of its parameters with ``requires_grad`` go to the optimizer)."""

    @abstractmethod
    def build_data(self, model: nn.Module, dist: DistInfo) -> TrainData:
        """This rank's training data."""

    @abstractmethod
    def forward(self, model: nn.Module, batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
        """One micro-batch on ``device`` -> scalar losses, ``"loss"`` being the one to minimize (under autocast)."""

    def batch_size(self, batch: dict) -> int:
        """Samples in a micro-batch (for throughput)."""
        return int(batch["clip"].shape[0])

    def step_flops(self, model: nn.Module, batch: dict) -> float | None:
        """Model FLOPs (forward and backward) of one micro-batch on this rank, for ``perf/tflops`` and ``perf/mfu``;
        None: unknown. The default looks the model's class up in :mod:`vmim.models.flops` (the pretraining method and
        the classifier are registered); a task whose batches the count cannot read overrides it."""
        return task_step_flops(model, batch)

    def hooks(self) -> list[Any]:
        """Task-specific :class:`~vmim.engine.hooks.Hook` instances."""
        return []

    def summary_lines(self) -> list[str]:
        """What the run trains on, in words, for ``log.txt`` and the console: the trainer logs these after its own
        set-up lines (the task's data is often built before the trainer's logger exists). The default describes
        the training sources the task keeps as ``self.built`` ((name, source, listed, missing) tuples; samples and
        modality, and the ``fraction`` subset where there is one); none kept: nothing."""
        built = getattr(self, "built", None) or []
        if not built:
            return []
        from ..data.build import describe_source

        datasets = self.cfg.data.datasets
        return [f"train {describe_source(name, source, datasets.get(name), labeled=False)}"
                for name, source, *_ in built]
