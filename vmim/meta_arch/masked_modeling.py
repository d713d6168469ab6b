"""Masked modeling: one backbone, one head per target, the targets and their losses, built from the config.

This is the method layer (dinov2's ``SSLMetaArch`` in spirit): it owns every trainable part of a pretraining run
and the frozen ones (targets, teachers), and turns a batch into losses. The trainer calls
``method(batch) -> {"loss", "loss/<target>"}`` and never sees targets or masks; the backbone never sees targets;
a target never sees the student. Each target entry picks its head (decoder or linear), its loss and its token
set (:mod:`vmim.meta_arch.token_sets`), so MAE, VideoMAE, VideoMAE V2, MaskFeat and MR-MAE-style mixes are configs.

Student and EMA teacher side by side (dinov2's ``ssl_meta_arch.py``): when a target reads an EMA copy of the student
(a target class with ``follows_student``, the ``momentum`` kind), the method makes the copy (``ema.<name>``, one per
such target, each with its entry's schedule), hands it to the target as the frozen encoder it reads, keeps it in eval
mode, and updates it in :meth:`MaskedModeling.after_step` (:mod:`vmim.meta_arch.ema`). Checkpoints of the layout
before (``targets.<name>.ema.*``) load through a ``load_state_dict`` pre-hook that renames their keys.

What the engine reads of a method, all generic (the engine imports nothing from targets or meta_arch):
``step_macs(batch)`` for MFU (:mod:`vmim.models.flops`; each backbone, head and target counts itself);
``after_step(step, total)``; ``records()`` / ``check_records(saved)`` / ``describe()`` for what the checkpoint keeps of
the targets (a teacher's source and hash) and the start-up log; the targets' extra metrics come out of ``forward`` as
``perf/<key>/<name>`` beside the losses (:meth:`MaskedModeling.extra_metrics`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import Config, video_grid
from ..masking.masks import Masks
from ..models import EncoderOutput, InputNormalizer, build_head, create_backbone
from ..models.flops import encoded_tokens, module_macs
from ..targets import TARGETS, Target, build_target
from ..targets.teacher import TeacherError
from .ema import MomentumSchedule, ema_update, frozen_copy, upgrade_ema_keys
from .losses import LossFn, build_loss, weighted_mean
from .token_sets import TOKEN_SETS

Batch = dict[str, Any]


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
        ema: name -> the frozen EMA copy of ``backbone`` that target reads (momentum targets; :meth:`from_config`
            makes them and builds those targets with them).
        ema_schedules: name -> the momentum schedule of ``ema[name]``.

    Attributes:
        last_momentum: name -> the momentum of the latest EMA update (absent before the first).
    """

    def __init__(self, backbone: nn.Module, normalizer: InputNormalizer, targets: dict[str, Target],
                 heads: dict[str, nn.Module], losses: dict[str, LossFn], token_sets: dict[str, str],
                 weights: dict[str, float], head_blocks: dict[str, int | None] | None = None,
                 ema: dict[str, nn.Module] | None = None, ema_schedules: dict[str, MomentumSchedule] | None = None):
        super().__init__()
        self.backbone = backbone
        self.normalizer = normalizer
        self.targets = nn.ModuleDict(targets)
        self.heads = nn.ModuleDict(heads)
        self.losses = dict(losses)
        self.token_sets = dict(token_sets)
        self.weights = dict(weights)
        self.head_blocks = {n: b for n, b in (head_blocks or {}).items() if b is not None}
        self.ema = nn.ModuleDict(ema or {})
        self.ema_schedules = dict(ema_schedules or {})
        if set(self.ema) != set(self.ema_schedules):
            raise ValueError(f"EMA copies {sorted(self.ema)} and schedules {sorted(self.ema_schedules)} differ")
        self.last_momentum: dict[str, float] = {}
        self.register_load_state_dict_pre_hook(self._upgrade_state_dict)

    @staticmethod
    def _upgrade_state_dict(module: "MaskedModeling", state_dict: dict, prefix: str, *args: Any) -> None:
        """``load_state_dict`` pre-hook: EMA weights saved under the previous layout get their new names."""
        upgrade_ema_keys(state_dict, prefix, list(module.ema))

    def upgrade_state_dict(self, state_dict: dict) -> dict:
        """A copy of a whole state dict of this method with the previous layout's keys renamed (what the pre-hook
        does inside ``load_state_dict``), for loaders that bypass it (FSDP's ``set_state_dict``)."""
        state_dict = dict(state_dict)
        upgrade_ema_keys(state_dict, "", list(self.ema))
        return state_dict

    def legacy_state_names(self) -> dict[str, str]:
        """Key -> its name in the previous layout, for the keys that moved (the EMA copies): what a sharded (DCP)
        checkpoint of that layout stores them under; loaders read those names into these tensors."""
        names = {}
        for name in self.ema:
            new = f"ema.{name}."
            names.update({k: f"targets.{name}.ema.{k[len(new):]}" for k in self.state_dict() if k.startswith(new)})
        return names

    @classmethod
    def from_config(cls, cfg: Config) -> "MaskedModeling":
        backbone = create_backbone(cfg.model, video_grid(cfg))
        normalizer = InputNormalizer(cfg.data.mean, cfg.data.std, backbone.patch_size[0])
        targets, ema, schedules = {}, {}, {}
        for name, t in cfg.targets.items():
            try:
                if TARGETS[t.kind].follows_student:  # reads an EMA copy of the student: the method's, handed over
                    ema[name] = frozen_copy(backbone)
                    targets[name] = TARGETS[t.kind].from_config(t, backbone.patch_size, cfg.model.in_chans,
                                                                encoder=ema[name], normalizer=normalizer,
                                                                key=f"targets.{name}")
                    schedules[name] = MomentumSchedule.from_config(targets[name])  # the schedule its entry gives
                else:
                    targets[name] = build_target(t.kind, t, backbone.patch_size, cfg.model.in_chans)
            except TeacherError as err:  # raised with the entry's own key (path, blocks, ...)
                raise err.under(f"targets.{name}") from None
        method = cls(backbone, normalizer, targets, {},
                     losses={n: build_loss(t.loss) for n, t in cfg.targets.items()},
                     token_sets={n: t.token_set for n, t in cfg.targets.items()},
                     weights={n: t.weight for n, t in cfg.targets.items()},
                     head_blocks={n: t.head.block for n, t in cfg.targets.items()}, ema=ema, ema_schedules=schedules)
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

    def train(self, mode: bool = True) -> "MaskedModeling":
        """Sets the mode, but the EMA copies stay in eval mode (no drop path, no dropout)."""
        super().train(mode)
        self.ema.eval()
        return self

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (1-based) of ``total_steps``: each EMA copy moves towards the student,
        ``ema = m * ema + (1 - m) * backbone`` with ``m`` from its schedule (:mod:`vmim.meta_arch.ema`)."""
        for name, ema in self.ema.items():
            m = self.ema_schedules[name].at(step, total_steps)
            ema_update(ema, self.backbone, m)
            self.last_momentum[name] = m

    def predict(self, batch: Batch) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """[0, 1] pixels and, per target, (query (B, N) bool, loss weight (B, M), prediction (B, M, D))."""
        masks: Masks = batch["masks"]
        pixels, encoded = self.encode(batch["clip"], masks.encoder, masks.windows)
        out = {}
        for name, head in self.heads.items():
            query, weight = TOKEN_SETS[self.token_sets[name]](masks)
            out[name] = (query, weight, head(encoded.select(self.head_blocks.get(name)), query))
        return pixels, out

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """batch {"clip": (B, C, T, H, W), "masks": :class:`~vmim.masking.masks.Masks`} -> {"loss", "loss/<name>"}, plus
        ``perf/teacher_ms/<name>`` (a teacher target's forward time, not a loss) once one has finished."""
        pixels, predictions = self.predict(batch)
        losses: dict[str, torch.Tensor] = {}
        total = pixels.new_zeros(())
        slots = batch["masks"].slots
        for name, (query, weight, pred) in predictions.items():
            target = _at_slots(self.targets[name](pixels), slots)
            target = target[query].reshape(query.shape[0], -1, target.shape[-1])
            loss = weighted_mean(self.losses[name](pred.float(), target), weight)
            losses[f"loss/{name}"] = loss
            total = total + self.weights[name] * loss
        losses["loss"] = total
        for key, value in self._extra_values().items():  # logged with the losses, not part of any; a tensor stays
            losses[key] = value.detach() if torch.is_tensor(value) else total.new_tensor(value)  # one: no host sync
        return losses

    # ------------------------------------------------------------------------------------------------
    # What the engine reads, generically: extra metrics, records, MACs
    # ------------------------------------------------------------------------------------------------

    def extra_metrics(self) -> dict[str, float]:
        """The targets' per-step scalars, ``perf/<key>/<name>`` (a teacher's ``perf/teacher_ms/<name>`` once one of
        its forwards has finished); :meth:`forward` adds them to its output. Reading them consumes them."""
        return {key: float(value) for key, value in self._extra_values().items()}

    def _extra_values(self) -> dict[str, Any]:
        """:meth:`extra_metrics` as the targets give them (a device tensor stays one: :meth:`forward` logs it beside
        the losses without a host sync per micro-batch)."""
        return {f"perf/{key}/{name}": value for name, extra in self._asking("extra_metrics")
                for key, value in extra().items()}

    def records(self) -> dict[str, dict]:
        """name -> what the checkpoint keeps of that target (a teacher's source and content hash); targets with
        nothing to keep are absent."""
        return {name: r for name, record in self._asking("record") if (r := record()) is not None}

    def check_records(self, saved: dict[str, dict]) -> None:
        """Refuse to continue a run whose targets changed since ``saved`` (:meth:`records` of its checkpoint); the
        error names ``targets.<name>...``. Targets absent from ``saved`` are new, and pass."""
        for name, check in self._asking("check_record"):
            check(saved.get(name) or {}, f"targets.{name}")

    def describe(self) -> list[str]:
        """Start-up log lines about the targets (a teacher's source, size and hash)."""
        return [line for name, describe in self._asking("describe") if (line := describe(f"targets.{name}"))]

    def _asking(self, call: str) -> list[tuple[str, Any]]:
        """(name, the target's ``call``) for each target that has it (a :class:`~vmim.targets.base.Target` has them
        all; a stand-in module, as tests put in, may not)."""
        return [(name, getattr(t, call)) for name, t in self.targets.items() if callable(getattr(t, call, None))]

    def step_macs(self, batch: Batch) -> tuple[int, int]:
        """(trained, frozen) multiply-adds of one micro-batch's forward (:mod:`vmim.models.flops`). Trained: the
        backbone on the encoder mask and every head on its token set's queries; frozen: the targets (an EMA encoder
        counted by the target that reads it). Only shapes and row-0 mask counts are read."""
        shape, masks = tuple(batch["clip"].shape), batch["masks"]
        first = masks.head(1)  # every sample has the same counts
        n_masked = int(first.encoder.sum())
        if masks.windowed:  # LoMaR: K windows of w tokens, each its own sequence
            windows = masks.windows
            k, w = windows.shape[1], math.prod(windows.shape[2:])
            n_in, trained = k * w, module_macs(self.backbone, shape, n_masked, windows=(k, w))
        else:
            n_in = encoded_tokens(self.backbone, shape, n_masked)
            trained = module_macs(self.backbone, shape, n_masked)
        frozen = 0
        for name, head in self.heads.items():
            query, _ = TOKEN_SETS[self.token_sets[name]](first)
            trained += module_macs(head, shape[0], n_in, int(query.sum()))
            frozen += module_macs(self.targets[name], shape)
        return trained, frozen

    @torch.no_grad()
    def features(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) uint8 -> (B, D) mean of the encoder's tokens, nothing masked (probing)."""
        return self.encode(clip)[1].tokens.mean(dim=1)

    @torch.no_grad()
    def preview(self, batch: Batch, max_items: int = 8) -> torch.Tensor | None:
        """Image grid rows: input, masked input, reconstruction (first frame), from the first target that maps back
        to pixels; (3, rows*H, cols*W) in [0, 1], or None when no target does."""
        batch = {"clip": batch["clip"][:max_items], "masks": batch["masks"].head(max_items)}
        pixels, predictions = self.predict(batch)
        grid, slots, encoder_mask = self.backbone.grid(pixels.shape), batch["masks"].slots, batch["masks"].encoder
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
