"""Momentum-teacher target (BootMAE, data2vec): features of an exponential moving average of the student encoder.

What it computes. At :meth:`MomentumTarget.bind` (once, when the method is built) the target takes a deep copy of the
student's backbone: the EMA encoder, frozen (``requires_grad`` False) and always in eval mode (no drop path), even
when the method is put in train mode. Each step it encodes the **full, unmasked** clean clip (mask None: a
visible-only student's EMA still encodes every token, so targets exist at masked positions), normalized with a copy
of the method's own input normalizer, under the step's autocast (as the student runs) and without grad. The target
is the output of ``blocks`` (default ``[-1]``: the last block, before the final norm, class token dropped: BootMAE's
``get_feature``), returned in float32. ``norm`` applies ``LayerNorm(D, eps=1e-6)`` without affine to each block's
output (BootMAE normalizes the target so). Several blocks are averaged after that per-block norm (data2vec's top-K
average: the norm first keeps blocks of different scales from dominating); they must all have the width ``dim``
and sit on the output grid.

The update. After every optimizer step ``k`` (1-based) of a run of ``K`` steps (:meth:`MomentumTarget.after_step`,
called through the pretraining hook ``TargetUpdates``): ``ema = m * ema + (1 - m) * student`` for every parameter
(``lerp_``), buffers copied. ``m`` comes from :func:`momentum_at` at progress ``(k - 1) / K``, DINO's per-iteration
table indexed by the 0-based iteration, so the first update uses ``momentum`` exactly:

* ``cosine`` (DINO): ``end - (end - start) * (1 + cos(pi * progress)) / 2``;
* ``linear``: straight from ``momentum`` to ``momentum_end``, or piecewise linear through
  ``(milestones[i], milestone_momenta[i])`` in between (BootMAE: 0.999 -> 0.9999 over the first 1/8 of the run,
  -> 0.99999 by half of it, then flat);
* ``constant``: ``momentum`` throughout (``momentum_end`` unused).
The update also runs after a step the trainer skipped for a non-finite loss: the student did not move, and the EMA
moves towards it as the schedule says, so a run stays a function of its steps.

Where its state lives, and why.

* The EMA encoder is a registered submodule (``targets.<name>.ema.*``), so it is in the checkpoint's ``model``
  state dict and a resume restores it exactly: the EMA is a function of the whole history of student weights, which
  cannot be recomputed from the last checkpoint. (The other targets hold no state at all.)
* Its parameters do not require grad, so the optimizer skips them (``vmim.engine.optim.param_groups``), and so does
  the count of trainable parameters in the log.
* ``vmim convert``, fine-tuning and probing from a run read only the ``backbone.*`` keys
  (``vmim.models.loading.read_weights``): the EMA never leaves the pretraining run. BootMAE fine-tunes the student too.
* The student is referenced, not registered (a tuple holds it): its weights stay under ``backbone.*`` once.

The width ``dim`` (0 = the student's width at ``blocks``) is set by :meth:`bind`, which the method calls before it
builds the heads (a head's output width is its target's ``dim``); a non-zero ``dim`` is checked against the student.
Under DDP the method is wrapped after it is built, so :meth:`bind` sees the unwrapped backbone; every rank keeps the
same EMA (same student, same schedule). Under FSDP the EMA copy's blocks are sharded like the student's, so each rank
updates its own shards (``vmim.engine.fsdp``).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vmim.config import MOMENTUM_SCHEDULES as SCHEDULES
from vmim.targets.base import Target, float32_no_grad

NORM_EPS = 1e-6


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


class MomentumTarget(Target):
    """Features of an EMA copy of the student encoder at chosen blocks.

    Args:
        patch_size: Tubelet size ``(t, p, p)`` of the student's output tokens.
        in_chans: Channels C.
        dim: Features per token: the student's width at ``blocks``; 0 = set by :meth:`bind`.
        momentum: Momentum at the start of the run.
        momentum_end: Momentum at the end of the run (cosine, linear).
        schedule: ``cosine``, ``linear`` or ``constant``.
        milestones: Piecewise-linear knots (fractions of the run) for ``linear``.
        milestone_momenta: The momentum at each knot.
        blocks: Block indices (negative from the end) whose outputs, before the final norm, are averaged.
        norm: LayerNorm without affine (eps 1e-6) on each block's output.

    Attributes:
        ema: The EMA encoder (None until :meth:`bind`).
        last_momentum: The momentum of the latest update (None before the first).
    """

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int = 3, dim: int = 0, momentum: float = 0.999,
                 momentum_end: float = 1.0, schedule: str = "cosine", milestones: Sequence[float] = (),
                 milestone_momenta: Sequence[float] = (), blocks: Sequence[int] = (-1,), norm: bool = False):
        super().__init__(patch_size, in_chans)
        if dim < 0:
            raise ValueError(f"dim must be 0 (the student's width at blocks {list(blocks)}) or that width, got {dim}")
        if not blocks:
            raise ValueError("blocks must name at least one encoder block")
        momentum_at(1, 1, momentum, momentum_end, schedule, milestones, milestone_momenta)  # validates the schedule
        self.dim = int(dim)
        self.momentum = float(momentum)
        self.momentum_end = float(momentum_end)
        self.schedule = schedule
        self.milestones = [float(x) for x in milestones]
        self.milestone_momenta = [float(x) for x in milestone_momenta]
        self.blocks = [int(b) for b in blocks]
        self.norm = bool(norm)
        self.ema: nn.Module | None = None
        self.normalizer: nn.Module | None = None
        self._student: tuple[nn.Module, ...] = ()
        self.last_momentum: float | None = None

    @classmethod
    def from_config(cls, cfg: Any, patch_size: tuple[int, int, int], in_chans: int) -> MomentumTarget:
        return cls(patch_size, in_chans, dim=cfg.dim, momentum=cfg.momentum, momentum_end=cfg.momentum_end,
                   schedule=cfg.schedule, milestones=cfg.milestones, milestone_momenta=cfg.milestone_momenta,
                   blocks=cfg.blocks, norm=cfg.norm)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, dim={self.dim}, blocks={self.blocks}, norm={self.norm}, "
                f"momentum={self.momentum} -> {self.momentum_end} ({self.schedule})")

    def bind(self, method: nn.Module) -> None:
        """Copies ``method.backbone`` into the frozen EMA encoder and ``method.normalizer``; checks ``dim``/``blocks``.

        Raises:
            RuntimeError: already bound.
            ValueError: a block the backbone lacks, or a width other than ``dim``.
        """
        if self.ema is not None:
            raise RuntimeError("a momentum target is bound once, to the method that owns it")
        student = method.backbone
        name = next((f"targets.{n}" for n, t in getattr(method, "targets", {}).items() if t is self), "the target")
        depth, dims = student.depth, student.dims
        if self.dim == 0 and all(-depth <= b < depth for b in self.blocks):
            self.dim = int(dims[self.blocks[0]])
        for b in self.blocks:
            if not -depth <= b < depth:
                raise ValueError(f"{name}.blocks: {b} is not a block of the {depth}-block backbone")
            if dims[b] != self.dim:
                raise ValueError(f"{name}.dim: {self.dim}, but block {b} of the student is {dims[b]} wide; "
                                 f"set {name}.dim={dims[b]}")
        if len({b % depth for b in self.blocks}) != len(self.blocks):
            raise ValueError(f"{name}.blocks: {self.blocks} names a block twice")
        ema = copy.deepcopy(student)
        ema.requires_grad_(False)
        ema.eval()
        self.ema = ema
        self.normalizer = copy.deepcopy(method.normalizer)
        self._student = (student,)

    def train(self, mode: bool = True) -> MomentumTarget:
        """Sets the mode of the module but keeps the EMA encoder in eval mode (no drop path, no dropout)."""
        super().train(mode)
        if self.ema is not None:
            self.ema.eval()
        return self

    def momentum_for(self, step: int, total_steps: int) -> float:
        """The momentum of the update after step ``step`` (1-based) of ``total_steps``."""
        return momentum_at(step, total_steps, self.momentum, self.momentum_end, self.schedule, self.milestones,
                           self.milestone_momenta)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """``ema = m * ema + (1 - m) * student`` for parameters, buffers copied; ``m`` from the schedule."""
        ema, student = self._bound()
        m = self.momentum_for(step, total_steps)
        ema_params, params = list(ema.parameters()), list(student.parameters())
        if len(ema_params) != len(params):
            raise RuntimeError("the student's parameters changed after bind: the EMA no longer mirrors it")
        for e, p in zip(ema_params, params):
            e.lerp_(p.detach().to(e.dtype), 1.0 - m)
        for e, b in zip(ema.buffers(), student.buffers()):
            e.copy_(b)
        self.last_momentum = m

    def forward(self, pixels: Tensor) -> Tensor:
        """Targets of a clip, computed under the caller's autocast (the training step's), without grad.

        Args:
            pixels: ``(B, C, T, H, W)`` clean clip in [0, 1].

        Returns:
            float32 ``(B, N, dim)`` for all N tokens of the grid, in (t, h, w) order.
        """
        with torch.no_grad():
            return self._compute(pixels.float())

    def _compute(self, pixels: Tensor) -> Tensor:
        ema, _ = self._bound()
        grid = self.grid(pixels)
        n = grid[0] * grid[1] * grid[2]
        out = ema(self.normalizer(pixels), None, blocks=self.blocks)
        with float32_no_grad(pixels.device):
            feats = []
            for b in self.blocks:
                f = out.blocks[b].float()
                if f.shape[1] != n:
                    raise ValueError(f"block {b} has {f.shape[1]} tokens, the student's grid {tuple(grid)} has {n}: "
                                     "a momentum target reads only blocks on the output grid")
                feats.append(F.layer_norm(f, f.shape[-1:], eps=NORM_EPS) if self.norm else f)
            return feats[0] if len(feats) == 1 else torch.stack(feats).mean(dim=0)

    def _bound(self) -> tuple[nn.Module, nn.Module]:
        if self.ema is None or not self._student:
            raise RuntimeError("the momentum target is not bound to a method yet (MaskedModeling binds it when built)")
        return self.ema, self._student[0]
