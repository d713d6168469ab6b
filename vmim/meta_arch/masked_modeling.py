"""Masked modeling: one backbone, one head per target, the targets and their losses, built from the config.

This is the method layer (dinov2's ``SSLMetaArch`` in spirit): it owns every trainable part of a pretraining run
and the frozen ones (targets, teachers), and turns a batch into losses. The trainer calls
``method(batch) -> {"loss", "loss/<target>"}`` and never sees targets or masks; the backbone never sees targets;
a target never sees the student. Each target entry picks its head (decoder or linear), its loss and its token
set (:mod:`vmim.meta_arch.token_sets`), so MAE, VideoMAE, VideoMAE V2, MaskFeat and MR-MAE-style mixes are configs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import Config, video_grid
from ..models import EncoderOutput, InputNormalizer, build_head, create_backbone
from ..targets import Target, build_target
from ..targets.teacher import TeacherError, teachers_of
from .losses import LossFn, build_loss, weighted_mean
from .token_sets import TOKEN_SETS

Batch = dict[str, Any]


def _slots(masks: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """(B, L) grid index of each encoder token slot when the encoder ran over local windows (LoMaR), else None (the
    slots are the grid)."""
    windows = masks.get("encoder_windows")
    return None if windows is None else windows.flatten(1)


def _at_slots(values: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
    """Per-grid-token (B, N, D) values -> per slot (B, L, D) (a window token takes its grid cell's target)."""
    return values if slots is None else values.gather(1, slots.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


def _upsample(tokens: torch.Tensor, grid: tuple[int, int, int], patch_size: tuple[int, int, int]) -> torch.Tensor:
    """(B, N) per-token values -> (B, 1, T, H, W) per pixel (each token's tubelet)."""
    t, p, _ = patch_size
    x = tokens.float().view(-1, 1, *grid)
    return x.repeat_interleave(t, 2).repeat_interleave(p, 3).repeat_interleave(p, 4)


def _head_width(backbone: nn.Module, block: int | None, key: str) -> int:
    """Width of what a head reads: the encoder output, or block ``block``'s output (ValueError naming ``key`` when
    the backbone has no such block)."""
    if block is None:
        return backbone.embed_dim
    if not -backbone.depth <= block < backbone.depth:
        raise ValueError(f"{key}: {block} is not a block of the {backbone.depth}-block backbone")
    return backbone.dims[block]


class MaskedModeling(nn.Module):
    """Args:
        backbone: a registered backbone (visible-only or dense).
        normalizer: uint8 clip -> [0, 1] pixels -> normalized input.
        targets: name -> target (no trainable parameters).
        heads: name -> head predicting that target at its token set's positions.
        losses: name -> per-token loss function.
        token_sets: name -> a key of :data:`~vmim.meta_arch.token_sets.TOKEN_SETS`.
        weights: name -> weight of that loss in the total.
        head_blocks: name -> the encoder block that head reads (absent or None: the encoder output).

    Targets that follow the student (a momentum teacher) get the method through ``Target.bind`` once its backbone and
    normalizer exist (:meth:`from_config` builds the heads after it, from each bound target's ``dim``), and
    ``Target.after_step`` after every optimizer step (:meth:`after_step`, called by the pretraining task's hook).
    """

    def __init__(self, backbone: nn.Module, normalizer: InputNormalizer, targets: dict[str, Target],
                 heads: dict[str, nn.Module], losses: dict[str, LossFn], token_sets: dict[str, str],
                 weights: dict[str, float], head_blocks: dict[str, int | None] | None = None):
        super().__init__()
        self.backbone = backbone
        self.normalizer = normalizer
        self.targets = nn.ModuleDict(targets)
        self.heads = nn.ModuleDict(heads)
        self.losses = dict(losses)
        self.token_sets = dict(token_sets)
        self.weights = dict(weights)
        self.head_blocks = {n: b for n, b in (head_blocks or {}).items() if b is not None}
        for target in self.targets.values():
            target.bind(self)

    @classmethod
    def from_config(cls, cfg: Config) -> "MaskedModeling":
        backbone = create_backbone(cfg.model, video_grid(cfg))
        normalizer = InputNormalizer(cfg.data.mean, cfg.data.std, backbone.patch_size[0])
        targets = {}
        for name, t in cfg.targets.items():
            try:
                targets[name] = build_target(t.kind, t, backbone.patch_size, cfg.model.in_chans)
            except TeacherError as err:  # raised with the entry's own key (path, blocks, ...)
                raise err.under(f"targets.{name}") from None
        method = cls(backbone, normalizer, targets, {},  # binds the targets: a momentum teacher learns its width
                     losses={n: build_loss(t.loss) for n, t in cfg.targets.items()},
                     token_sets={n: t.token_set for n, t in cfg.targets.items()},
                     weights={n: t.weight for n, t in cfg.targets.items()},
                     head_blocks={n: t.head.block for n, t in cfg.targets.items()})
        for name, t in cfg.targets.items():
            method.heads[name] = build_head(t.head, _head_width(backbone, t.head.block, f"targets.{name}.head.block"),
                                            method.targets[name].dim, backbone.decoder_pos_embed,
                                            dense=getattr(backbone, "dense", True))
        return method

    def encode(self, clip: torch.Tensor, mask: torch.Tensor | None = None, windows: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, EncoderOutput]:
        """uint8 clip (B, C, T, H, W) and encoder mask (B, N) (with LoMaR's ``windows`` (B, K, wt, wh, ww): (B, K*w)
        over the window tokens) -> ([0, 1] pixels, encoder output with the blocks the heads read)."""
        pixels = self.normalizer.pixels(clip)
        kwargs = {"blocks": sorted(set(self.head_blocks.values()))} if self.head_blocks else {}
        if windows is not None:  # only a backbone that runs local windows takes them
            kwargs["windows"] = windows
        return pixels, self.backbone(self.normalizer(pixels), mask, **kwargs)

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (1-based) of ``total_steps``: targets that follow the student update."""
        for target in self.targets.values():
            target.after_step(step, total_steps)

    def predict(self, batch: Batch) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """[0, 1] pixels and, per target, (query (B, N) bool, loss weight (B, M), prediction (B, M, D))."""
        masks = batch["masks"]
        pixels, encoded = self.encode(batch["clip"], masks["encoder"], masks.get("encoder_windows"))
        out = {}
        for name, head in self.heads.items():
            query, weight = TOKEN_SETS[self.token_sets[name]](masks)
            out[name] = (query, weight, head(encoded.select(self.head_blocks.get(name)), query))
        return pixels, out

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """batch {"clip": (B, C, T, H, W), "masks": {"encoder": (B, N) bool, ...}} -> {"loss", "loss/<name>"}, plus
        ``perf/teacher_ms/<name>`` (a teacher target's forward time, not a loss) once one has finished."""
        pixels, predictions = self.predict(batch)
        losses: dict[str, torch.Tensor] = {}
        total = pixels.new_zeros(())
        slots = _slots(batch["masks"])
        for name, (query, weight, pred) in predictions.items():
            target = _at_slots(self.targets[name](pixels), slots)
            target = target[query].reshape(query.shape[0], -1, target.shape[-1])
            loss = weighted_mean(self.losses[name](pred.float(), target), weight)
            losses[f"loss/{name}"] = loss
            total = total + self.weights[name] * loss
        losses["loss"] = total
        for name, teacher in teachers_of(self.targets).items():  # ms of its forward, logged with the losses
            if (ms := teacher.take_ms()) is not None:
                losses[f"perf/teacher_ms/{name}"] = total.new_tensor(ms).detach()
        return losses

    @torch.no_grad()
    def features(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) uint8 -> (B, D) mean of the encoder's tokens, nothing masked (probing)."""
        return self.encode(clip)[1].tokens.mean(dim=1)

    @torch.no_grad()
    def preview(self, batch: Batch, max_items: int = 8) -> torch.Tensor | None:
        """Image grid rows: input, masked input, reconstruction (first frame), from the first target that maps back
        to pixels; (3, rows*H, cols*W) in [0, 1], or None when no target does."""
        batch = {"clip": batch["clip"][:max_items], "masks": {k: m[:max_items] for k, m in batch["masks"].items()}}
        pixels, predictions = self.predict(batch)
        grid, slots, encoder_mask = self.backbone.grid(pixels.shape), _slots(batch["masks"]), batch["masks"]["encoder"]
        if slots is None:
            keep, fill = ~encoder_mask, encoder_mask
        else:  # windows: visible = seen in some window; filled = predicted there and seen in none; the rest stays black
            seen = pixels.new_zeros(pixels.shape[0], math.prod(grid)).scatter_add_(1, slots, (~encoder_mask).float())
            keep = seen > 0
        for name, (query, _, pred) in predictions.items():
            full = self.targets[name](pixels)  # the clean clip's targets, the prediction written over its positions
            if slots is None:
                full[query] = pred.float().reshape(-1, full.shape[-1])
            else:
                rows = slots[query].reshape(query.shape[0], -1)
                full.scatter_(1, rows.unsqueeze(-1).expand(-1, -1, full.shape[-1]), pred.float())
                fill = torch.zeros_like(keep).scatter_(1, rows, True) & ~keep
            recon = self.targets[name].to_pixels(full, pixels)
            if recon is None:
                continue
            keep_px, fill_px = (_upsample(m, grid, self.backbone.patch_size) for m in (keep, fill))
            frames = [x[:, :3, 0].expand(-1, 3, -1, -1).clamp(0, 1) if x.shape[1] == 1 else x[:, :3, 0].clamp(0, 1)
                      for x in (pixels, pixels * keep_px, recon * fill_px + pixels * keep_px)]
            rows = [torch.cat(list(f), dim=-1) for f in frames]  # each (C, H, B*W)
            return torch.cat(rows, dim=-2)
        return None
