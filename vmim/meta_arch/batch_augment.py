"""Batch augmentations of fine-tuning that run on the device: random erasing, Mixup / CutMix, the soft-target loss.

They belong to the classification method (:mod:`vmim.meta_arch.classification`), which applies them in its training
forward, as the masked-modeling method draws its own targets: the trainer and the fine-tuning task see neither.
(Moved here from ``vmim.engine.batch_augment``; the behaviour and the random draws are unchanged.)

Both work on a batch of float pixels in [0, 1], shape ``(B, C, T, H, W)``, *before* the model's per-channel
normalization ``(x - mean) / std``. That is equivalent to the references, which erase and mix normalized tensors:

- Mixup is an affine combination with weights summing to 1 and CutMix copies pixels; both commute with a
  per-channel affine map, so mixing then normalizing equals normalizing then mixing.
- Erasing writes N(0, 1) noise into a box of the *normalized* tensor (timm ``mode='pixel'``); in pixel space that is
  ``mean[c] + std[c] * N(0, 1)``, which is what :class:`ClipRandomErasing` writes (no clamping: values outside
  [0, 1] are exactly the reference's noise seen in pixel units).

Doing them here, once per batch on the device, keeps the data workers to uint8 work and needs no normalized copy.

Clips, not frames:

- Random erasing follows VideoMAE / SlowFast ``RandomErasing(cube=True)``: per clip, with probability p, one box
  drawn as timm's ``RandomErasing`` draws it (area fraction uniform in [min_area, max_area], log-uniform aspect in
  [min_aspect, 1 / min_aspect], up to ``max_attempts`` tries: timm tries 10, SlowFast's cube variant 100), the SAME
  box on every frame, with fresh per-pixel noise in each frame (SlowFast draws the noise frame by frame).
- Mixup / CutMix wrap ``timm.data.Mixup`` in batch mode (one lambda per batch, partner ``x.flip(0)``). timm's
  CutMix writes ``x[:, :, yl:yh, xl:xh]``, which on ``(B, C, T, H, W)`` would cut T and H; the clip is therefore
  handed to timm as the view ``(B, C*T, H, W)``, so one (H, W) box covers every frame (VideoMAE's ``mixup.py``).

Randomness and exact resume: the trainer checkpoints Python's, numpy's and torch's (CPU and CUDA) global RNG states
of every rank, so augmentations that draw from those global generators in the main process resume exactly.
:class:`ClipMixup` draws from numpy's global RNG (``np.random``, inside timm); :class:`ClipRandomErasing` draws its
boxes from torch's CPU global generator (no device sync) and its noise from the global generator of the batch's
device, unless a ``torch.Generator`` is passed, which then supplies every draw.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

__all__ = ["ClipRandomErasing", "ClipMixup", "soft_target_cross_entropy"]

Box = tuple[int, int, int, int]  # top, left, height, width
ERASE_MODES = ("pixel", "rand", "const")


class ClipRandomErasing:
    """Per clip, with probability ``probability``, erase one box (the same on every frame) of a [0, 1] pixel batch.

    ``mean`` / ``std`` are the per-channel normalization statistics of [0, 1] pixels (``data.mean`` / ``data.std``);
    the box is filled with ``mean[c] + std[c] * z`` where z is, by ``mode``: ``pixel`` N(0, 1) per pixel and frame
    (VideoMAE's default), ``rand`` N(0, 1) per channel and frame, ``const`` 0 (i.e. the mean colour).
    """

    def __init__(self, probability: float, mean: Sequence[float], std: Sequence[float], min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3, mode: str = "pixel", max_attempts: int = 10) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"random erasing probability must be in [0, 1], got {probability}")
        if not 0.0 < min_area <= max_area <= 1.0:
            raise ValueError(f"need 0 < min_area <= max_area <= 1, got {min_area}, {max_area}")
        if not 0.0 < min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], got {min_aspect}")
        if mode not in ERASE_MODES:
            raise ValueError(f"unknown erasing mode '{mode}' ({', '.join(ERASE_MODES)})")
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length: {len(mean)} vs {len(std)}")
        self.probability = float(probability)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.min_area, self.max_area = float(min_area), float(max_area)
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
        self.mode = mode
        self.max_attempts = int(max_attempts)

    def sample_boxes(self, batch_size: int, height: int, width: int,
                     generator: torch.Generator | None = None) -> list[Box | None]:
        """One ``(top, left, h, w)`` box per clip, or None for a clip left alone (not drawn, or no attempt fitted).

        Uses ``generator`` (one ``.tolist()`` of its draws) or else torch's CPU global generator.
        """
        draws = 1 + 4 * self.max_attempts
        device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(batch_size, draws, generator=generator, dtype=torch.float64, device=device).tolist()
        area = height * width
        lo_aspect, hi_aspect = self.log_aspect
        boxes: list[Box | None] = []
        for row in u:
            box = None
            if row[0] < self.probability:
                for a in range(self.max_attempts):
                    ua, ur, ut, ul = row[1 + 4 * a: 5 + 4 * a]
                    target = (self.min_area + (self.max_area - self.min_area) * ua) * area
                    aspect = math.exp(lo_aspect + (hi_aspect - lo_aspect) * ur)
                    h = int(round(math.sqrt(target * aspect)))
                    w = int(round(math.sqrt(target / aspect)))
                    if 0 < h < height and 0 < w < width:  # timm: w < W and h < H (an empty box would erase nothing)
                        top = min(int(ut * (height - h + 1)), height - h)
                        left = min(int(ul * (width - w + 1)), width - w)
                        box = (top, left, h, w)
                        break
            boxes.append(box)
        return boxes

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Erase in place and return ``clips``: float ``(B, C, T, H, W)`` pixels in [0, 1]."""
        if clips.ndim != 5 or not clips.is_floating_point():
            raise ValueError(f"expected float clips (B, C, T, H, W), got {tuple(clips.shape)} {clips.dtype}")
        b, c, t, h, w = clips.shape
        if c != len(self.mean):
            raise ValueError(f"clips have {c} channels, erasing statistics {len(self.mean)}")
        if self.probability == 0.0:
            return clips
        boxes = self.sample_boxes(b, h, w, generator)
        if all(box is None for box in boxes):
            return clips
        mean = torch.tensor(self.mean, dtype=clips.dtype, device=clips.device).view(c, 1, 1, 1)
        std = torch.tensor(self.std, dtype=clips.dtype, device=clips.device).view(c, 1, 1, 1)
        for i, box in enumerate(boxes):
            if box is None:
                continue
            top, left, bh, bw = box
            region = clips[i, :, :, top:top + bh, left:left + bw]  # (C, T, bh, bw) view
            if self.mode == "const":
                region.copy_(mean.expand_as(region))
                continue
            shape = (c, t, bh, bw) if self.mode == "pixel" else (c, t, 1, 1)
            z = torch.randn(shape, generator=generator, dtype=clips.dtype, device=clips.device)
            region.copy_((mean + std * z).expand_as(region))
        return clips

    def __repr__(self) -> str:
        return (f"ClipRandomErasing(p={self.probability}, mode={self.mode}, area=({self.min_area}, {self.max_area}), "
                f"min_aspect={math.exp(self.log_aspect[0]):.3g})")


class ClipMixup:
    """Mixup / CutMix of a clip batch with soft targets: timm ``Mixup`` in batch mode, one CutMix box on all frames.

    Draws from numpy's global RNG (``np.random``, as timm does) in the main process; the trainer checkpoints that
    state with the others, so a resumed run mixes exactly as the uninterrupted one. With both alphas 0 (or
    ``prob`` 0) clips pass unchanged and targets are the label-smoothed one-hot vectors.
    """

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float,
                 label_smoothing: float, num_classes: int) -> None:
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup / cutmix alphas must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
            raise ValueError(f"mixup prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.active = (mixup_alpha > 0 or cutmix_alpha > 0) and prob > 0
        self._mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                            mode="batch", correct_lam=True, label_smoothing=label_smoothing,
                            num_classes=num_classes) if self.active else None

    @torch.no_grad()
    def __call__(self, clips: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float ``(B, C, T, H, W)``, int ``(B,)`` -> mixed float ``(B, C, T, H, W)``, float32 soft targets ``(B, K)``.

        Mixes in place when ``clips`` is contiguous (as timm does): clone first to keep the originals.
        """
        if clips.ndim != 5:
            raise ValueError(f"expected clips (B, C, T, H, W), got {tuple(clips.shape)}")
        if labels.shape != clips.shape[:1]:
            raise ValueError(f"expected labels ({clips.shape[0]},), got {tuple(labels.shape)}")
        if self._mixup is None:
            return clips, mixup_target(labels, self.num_classes, 1.0, self.label_smoothing)
        b, c, t, h, w = clips.shape
        if b % 2:
            raise ValueError(f"mixup / cutmix pair clip i with clip B-1-i and need an even batch, got B={b}: "
                             f"set data.batch_size to an even number (and drop the last incomplete batch)")
        flat = clips.contiguous().view(b, c * t, h, w)  # one (H, W) CutMix box for every frame
        flat, targets = self._mixup(flat, labels)
        return flat.view(b, c, t, h, w), targets

    def __repr__(self) -> str:
        if self._mixup is None:
            return f"ClipMixup(off, label_smoothing={self.label_smoothing}, num_classes={self.num_classes})"
        m = self._mixup
        return (f"ClipMixup(mixup={m.mixup_alpha}, cutmix={m.cutmix_alpha}, prob={m.mix_prob}, "
                f"switch={m.switch_prob}, label_smoothing={self.label_smoothing}, num_classes={self.num_classes})")


_SOFT_CE = SoftTargetCrossEntropy()


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k targets * log_softmax(logits)``: ``(B, K)``, ``(B, K)`` -> scalar.

    timm's ``SoftTargetCrossEntropy`` in float32, so bf16 / fp16 logits outside autocast lose no precision.
    """
    return _SOFT_CE(logits.float(), targets.float())
