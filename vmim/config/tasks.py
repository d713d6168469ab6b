"""The TASKS table: each task's config schema and the function that runs it, read by the loader (a file's ``task``
key picks the schema), the CLI (``vmim pretrain`` / ``vmim finetune``) and the Slurm job (``vmim submit``).

A runner is a lazy ``module:attr`` path (as every builder in :mod:`vmim.config.registry`), so the table stays
torch-free: importing it imports the schemas only. A new task is one schema module and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from .finetune import FinetuneConfig
from .pretrain import Config


@dataclass(frozen=True)
class Task:
    """``schema``: the config dataclass of a ``task: <name>`` file; ``runner``: ``module:attr`` of ``run(cfg)``."""

    name: str
    schema: type
    runner: str
    summary: str

    def run_fn(self) -> Callable[[Any], Any]:
        module, _, attr = self.runner.partition(":")
        return getattr(importlib.import_module(module), attr)


TASKS: dict[str, Task] = {
    "pretrain": Task("pretrain", Config, "vmim.engine.pretrain:pretrain", "masked pretraining (or its resume)"),
    "finetune": Task("finetune", FinetuneConfig, "vmim.engine.finetune:finetune",
                     "supervised fine-tuning (its config also serves vmim eval and vmim probe)"),
}


def task_schemas() -> dict[str, type]:
    """``task`` value -> its top-level config dataclass."""
    return {name: task.schema for name, task in TASKS.items()}
