"""Momentum-teacher target (BootMAE, data2vec): features of the method's EMA copy of the student encoder.

Who owns what, and why. The EMA encoder is the method's (:class:`~vmim.meta_arch.masked_modeling.MaskedModeling`
keeps it beside the student, as dinov2's ``SSLMetaArch`` keeps its teacher, creates it when a target of this kind is
configured, and updates it after every optimizer step, :mod:`vmim.meta_arch.ema`): the update needs the student and the
EMA side by side, and only the method holds both. This target is then a function of the clean clip given that frozen
encoder: the method passes the encoder when it builds the target (``encoder=``), and the target only reads it, as a
teacher target reads its frozen network. The target never sees the student; there is no ``bind``. Built without an
encoder (``build_target`` alone) it is unbound and refuses to run.

What it computes. The encoder (frozen, always in eval mode: no drop path; the method keeps it so) encodes the **full,
unmasked** clean clip (mask None: a visible-only student's EMA still encodes every token, so targets exist at masked
positions), normalized with a copy of the method's own input normalizer, under the step's autocast (as the student
runs) and without grad. The target is the output of ``blocks`` (default ``[-1]``: the last block, before the final
norm, class token dropped: BootMAE's ``get_feature``), returned in float32. ``norm`` applies ``LayerNorm(D, eps=1e-6)``
without affine to each block's output (BootMAE normalizes the target so). Several blocks are averaged after that
per-block norm (data2vec's top-K average: the norm first keeps blocks of different scales from dominating); they must
all have the width ``dim`` and sit on the output grid.

The width ``dim`` (0 = the encoder's width at ``blocks``) and ``blocks`` are checked against the encoder when the
target is built with one; errors name the target's config key (``key``, ``targets.<name>``). The momentum schedule
(``momentum``, ``momentum_end``, ``schedule``, ``milestones``, ``milestone_momenta``) is kept here as plain data, as
the entry gives it: it describes the EMA this target reads, and the method applies it when it updates that EMA
(:class:`vmim.meta_arch.ema.MomentumSchedule`). The target holds no tensors at all (the EMA's weights are the
method's, under ``ema.<name>.*`` in the checkpoint).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vmim.models.flops import module_macs
from vmim.targets.base import Target, float32_no_grad

NORM_EPS = 1e-6


class MomentumTarget(Target):
    """Features of an EMA encoder (the method's) at chosen blocks.

    Args:
        patch_size: Tubelet size ``(t, p, p)`` of the student's output tokens.
        in_chans: Channels C.
        dim: Features per token: the encoder's width at ``blocks``; 0 = that width, read from the encoder.
        momentum, momentum_end, schedule, milestones, milestone_momenta: the schedule of the EMA this target reads
            (applied by the method; :func:`vmim.meta_arch.ema.momentum_at`).
        blocks: Block indices (negative from the end) whose outputs, before the final norm, are averaged.
        norm: LayerNorm without affine (eps 1e-6) on each block's output.
        encoder: The frozen EMA encoder to read (owned and updated by the method); None: unbound.
        normalizer: The method's input normalizer ([0, 1] pixels -> the encoder's input); copied.
        key: The target's config key, for errors (``targets.<name>``).

    Raises:
        ValueError: a block the encoder lacks, a block named twice, or a width other than ``dim``.
    """

    follows_student = True

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int = 3, dim: int = 0, momentum: float = 0.999,
                 momentum_end: float = 1.0, schedule: str = "cosine", milestones: Sequence[float] = (),
                 milestone_momenta: Sequence[float] = (), blocks: Sequence[int] = (-1,), norm: bool = False,
                 encoder: nn.Module | None = None, normalizer: nn.Module | None = None, key: str = "the target"):
        super().__init__(patch_size, in_chans)
        if dim < 0:
            raise ValueError(f"dim must be 0 (the student's width at blocks {list(blocks)}) or that width, got {dim}")
        if not blocks:
            raise ValueError("blocks must name at least one encoder block")
        self.dim = int(dim)
        self.momentum, self.momentum_end, self.schedule = float(momentum), float(momentum_end), schedule
        self.milestones = [float(x) for x in milestones]
        self.milestone_momenta = [float(x) for x in milestone_momenta]
        self.blocks = [int(b) for b in blocks]
        self.norm = bool(norm)
        self.normalizer = None if normalizer is None else copy.deepcopy(normalizer)
        self._encoder: tuple[nn.Module, ...] = ()  # read, not registered: its weights are the method's
        self._spread: Tensor | None = None  # of the latest targets: extra_metrics
        if encoder is not None:
            self._check(encoder, key)
            self._encoder = (encoder,)

    @classmethod
    def from_config(cls, cfg: Any, patch_size: tuple[int, int, int], in_chans: int, encoder: nn.Module | None = None,
                    normalizer: nn.Module | None = None, key: str = "the target") -> MomentumTarget:
        return cls(patch_size, in_chans, dim=cfg.dim, momentum=cfg.momentum, momentum_end=cfg.momentum_end,
                   schedule=cfg.schedule, milestones=cfg.milestones, milestone_momenta=cfg.milestone_momenta,
                   blocks=cfg.blocks, norm=cfg.norm, encoder=encoder, normalizer=normalizer, key=key)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, dim={self.dim}, blocks={self.blocks}, norm={self.norm}, "
                f"momentum={self.momentum} -> {self.momentum_end} ({self.schedule})")

    def _check(self, encoder: nn.Module, key: str) -> None:
        """Sets ``dim`` from the encoder when 0; checks blocks and width (errors name ``key``)."""
        depth, dims = encoder.depth, encoder.dims
        if self.dim == 0 and all(-depth <= b < depth for b in self.blocks):
            self.dim = int(dims[self.blocks[0]])
        for b in self.blocks:
            if not -depth <= b < depth:
                raise ValueError(f"{key}.blocks: {b} is not a block of the {depth}-block backbone")
            if dims[b] != self.dim:
                raise ValueError(f"{key}.dim: {self.dim}, but block {b} of the student is {dims[b]} wide; "
                                 f"set {key}.dim={dims[b]}")
        if len({b % depth for b in self.blocks}) != len(self.blocks):
            raise ValueError(f"{key}.blocks: {self.blocks} names a block twice")

    @property
    def ema(self) -> nn.Module | None:
        """The EMA encoder this target reads (the method's), or None when unbound."""
        return self._encoder[0] if self._encoder else None

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
        encoder = self._bound()
        grid = self.grid(pixels)
        n = grid[0] * grid[1] * grid[2]
        out = encoder(self.normalizer(pixels), None, blocks=self.blocks)
        with float32_no_grad(pixels.device):
            feats = []
            for b in self.blocks:
                f = out.blocks[b].float()
                if f.shape[1] != n:
                    raise ValueError(f"block {b} has {f.shape[1]} tokens, the student's grid {tuple(grid)} has {n}: "
                                     "a momentum target reads only blocks on the output grid")
                feats.append(F.layer_norm(f, f.shape[-1:], eps=NORM_EPS) if self.norm else f)
            target = feats[0] if len(feats) == 1 else torch.stack(feats).mean(dim=0)
            self._spread = target.reshape(-1, target.shape[-1]).std(dim=0).mean()
            return target

    def extra_metrics(self) -> dict[str, float]:
        """``{"target_spread": s}`` once a forward has run (logged ``perf/target_spread/<name>``), then consumed: the
        per-channel std of the latest targets over every sample and token, averaged over channels. It falls towards
        0 when the EMA encoder collapses towards one output for every token (with ``norm`` 1 is the most a channel
        can spread; a random-init ViT-Tiny's last block gives about 0.43 on the motion clips)."""
        spread, self._spread = self._spread, None
        return {} if spread is None else {"target_spread": spread.detach()}

    def macs(self, shape: Sequence[int]) -> int:
        """The EMA encoder on every token of a clip of ``shape`` (the norm and the average are not counted)."""
        return module_macs(self._bound(), shape)

    def _bound(self) -> nn.Module:
        if not self._encoder or self.normalizer is None:
            raise RuntimeError("the momentum target is not bound to an EMA encoder: MaskedModeling builds it with its "
                               "own EMA copy of the student")
        return self._encoder[0]
