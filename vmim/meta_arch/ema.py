"""The method's EMA teachers: a frozen copy of the student backbone that follows it, and its momentum schedule.

Why here. An EMA teacher is a function of the whole history of the student's weights, so whoever updates it must hold
the student and the teacher side by side; that is the method (dinov2's ``SSLMetaArch`` keeps ``student`` and
``teacher`` together for the same reason), not a target and not the trainer. :class:`~vmim.meta_arch.masked_modeling.
MaskedModeling` keeps one EMA copy per momentum target (each target entry has its own schedule keys), registered under
``ema.<name>.*``: in the checkpoint (exact resume), out of the optimizer (``requires_grad`` False), out of ``vmim
convert`` / fine-tuning (they read ``backbone.*`` only). Under FSDP the copy's blocks are sharded like the student's,
so each rank updates its own shards.

The update. After every optimizer step ``k`` (1-based) of a run of ``K`` steps: ``ema = m * ema + (1 - m) * student``
for every parameter (``lerp_``), buffers copied. ``m`` comes from :func:`momentum_at` at progress ``(k - 1) / K``,
DINO's per-iteration table indexed by the 0-based iteration, so the first update uses ``momentum`` exactly:

* ``cosine`` (DINO): ``end - (end - start) * (1 + cos(pi * progress)) / 2``;
* ``linear``: straight from ``momentum`` to ``momentum_end``, or piecewise linear through
  ``(milestones[i], milestone_momenta[i])`` in between (BootMAE: 0.999 -> 0.9999 over the first 1/8 of the run,
  -> 0.99999 by half of it, then flat);
* ``constant``: ``momentum`` throughout (``momentum_end`` unused).

The update also runs after a step the trainer skipped for a non-finite loss: the student did not move, and the EMA
moves towards it as the schedule says, so a run stays a function of its steps.

Checkpoints of the previous layout. Until the EMA moved here it was a submodule of its target, saved as
``targets.<name>.ema.*``; :func:`upgrade_ema_keys` renames those keys to ``ema.<name>.*`` when such a state dict is
loaded (the method registers it as a ``load_state_dict`` pre-hook), so runs written before still resume.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..targets.schemas import MOMENTUM_SCHEDULES as SCHEDULES


def momentum_at(step: int, total_steps: int, start: float, end: float, schedule: str = "cosine",
                milestones: Sequence[float] = (), milestone_momenta: Sequence[float] = ()) -> float:
    """EMA momentum for the update after optimizer step ``step`` (1-based) of ``total_steps``.

    Args:
        step: Optimizer steps done, 1 for the first update.
        total_steps: Steps of the whole run.
        start: Momentum at progress 0 (the first update).
        end: Momentum at progress 1.
        schedule: ``cosine``, ``linear`` or ``constant``.
        milestones: ``linear`` only: progress points strictly inside (0, 1), increasing.
        milestone_momenta: The momentum at each milestone.

    Returns:
        ``m`` at progress ``(step - 1) / total_steps`` (clamped to [0, 1]).
    """
    progress = min(max(step - 1, 0) / max(total_steps, 1), 1.0)
    if schedule == "constant":
        return float(start)
    if schedule == "cosine":
        if milestones:
            raise ValueError("milestones need schedule linear")
        return float(end - (end - start) * (1.0 + math.cos(math.pi * progress)) / 2.0)
    if schedule != "linear":
        raise ValueError(f"unknown momentum schedule {schedule!r}; expected one of {SCHEDULES}")
    if len(milestones) != len(milestone_momenta):
        raise ValueError(f"{len(milestones)} milestones but {len(milestone_momenta)} milestone momenta")
    xs, ys = [0.0, *milestones, 1.0], [start, *milestone_momenta, end]
    for i in range(1, len(xs)):
        if progress <= xs[i]:
            span = xs[i] - xs[i - 1]
            frac = (progress - xs[i - 1]) / span if span > 0 else 1.0
            return float(ys[i - 1] + (ys[i] - ys[i - 1]) * frac)
    return float(end)


@dataclass(frozen=True)
class MomentumSchedule:
    """The momentum of each EMA update (:func:`momentum_at`); ValueError on an invalid schedule."""

    momentum: float = 0.999
    momentum_end: float = 1.0
    schedule: str = "cosine"
    milestones: Sequence[float] = field(default_factory=tuple)
    milestone_momenta: Sequence[float] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.at(1, 1)

    @classmethod
    def from_config(cls, cfg: Any) -> "MomentumSchedule":
        """From a momentum target or its config entry (``momentum`` and the keys beside it)."""
        return cls(float(cfg.momentum), float(cfg.momentum_end), cfg.schedule,
                   tuple(float(x) for x in cfg.milestones), tuple(float(x) for x in cfg.milestone_momenta))

    def at(self, step: int, total_steps: int) -> float:
        """The momentum of the update after step ``step`` (1-based) of ``total_steps``."""
        return momentum_at(step, total_steps, self.momentum, self.momentum_end, self.schedule, self.milestones,
                           self.milestone_momenta)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` that never trains: ``requires_grad`` False, eval mode (the owner keeps it so)."""
    ema = copy.deepcopy(module)
    ema.requires_grad_(False)
    return ema.eval()


@torch.no_grad()
def ema_update(ema: nn.Module, student: nn.Module, m: float) -> None:
    """``ema = m * ema + (1 - m) * student`` for every parameter; buffers copied.

    Raises:
        RuntimeError: the two no longer have the same parameters.
    """
    ema_params, params = list(ema.parameters()), list(student.parameters())
    if len(ema_params) != len(params):
        raise RuntimeError("the student's parameters changed after the EMA copy was made: it no longer mirrors it")
    for e, p in zip(ema_params, params):
        e.lerp_(p.detach().to(e.dtype), 1.0 - m)
    for e, b in zip(ema.buffers(), student.buffers()):
        e.copy_(b)


def upgrade_ema_keys(state_dict: dict[str, Any], prefix: str, names: Sequence[str]) -> None:
    """Rename, in place, ``<prefix>targets.<name>.ema.<rest>`` (the layout before the EMA moved to the method) to
    ``<prefix>ema.<name>.<rest>`` for each momentum target ``name``; other keys are left as they are."""
    for name in names:
        old, new = f"{prefix}targets.{name}.ema.", f"{prefix}ema.{name}."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[new + key[len(old):]] = state_dict.pop(key)


__all__ = ["MomentumSchedule", "ema_update", "frozen_copy", "momentum_at", "upgrade_ema_keys"]
