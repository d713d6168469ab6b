"""RandAugment for clips: timm's ops, drawn once per clip, applied identically to every frame.

Decisions and their reasons:

- **One draw per clip.** SlowFast's and VideoMAE's ``AugmentOp.__call__(img_list)`` draw an op's firing and its
  magnitude once and apply the op with the same arguments to every PIL frame, so a clip's frames stay a coherent
  video (a rotation that changed from frame to frame would be fake motion). :class:`ClipRandAugment` does the same:
  ``num_layers`` ops are chosen (with replacement, or without when the transform set is weighted, as timm), each
  fires with its ``prob`` and gets a magnitude from N(magnitude, magnitude_std) (uniform on [0, magnitude] when
  the std is inf) clipped to [0, magnitude_max or 10], and its level arguments are computed once.
- **timm's ops, not a copy.** The op functions, level functions and transform sets come from
  ``timm.data.auto_augment.rand_augment_transform``; only the random draws are ours. Hyper-parameters follow
  VideoMAE / SlowFast's ``create_random_augment``: ``translate_const = int(0.45 * img_size)``, fill (128, 128, 128)
  (their ``_FILL``; ``img_mean`` is not passed there), and bicubic interpolation (``--train_interpolation``
  default). The interpolation is fixed on purpose: given a tuple, timm picks one per call from Python's global
  ``random``, which would differ from frame to frame.
- **Draws from the sample's own generator.** Every draw comes from the ``numpy.random.Generator`` passed in (the
  per-sample seed of the data path), so an augmented clip is a pure function of (clip, seed): resuming, re-reading
  a sample or changing the worker count gives the same pixels. timm's level functions negate randomly with
  Python's global ``random`` (and ``GaussianBlurRand`` draws its radius there); those calls run with the global
  state seeded from ``rng`` (per op for the level arguments, and re-seeded to the same value before every frame for
  the op itself, so all frames get the same draw), and the previous global state is restored afterwards. Data-loader
  workers are processes, so the brief swap of the global state is not shared with another thread.
- **A strict grammar first.** The string is parsed by :func:`vmim.config.finetune.parse_rand_augment` (torch-free,
  so config validation runs the same check) before timm sees it: timm silently drops a section without digits
  (``rand-m-n4`` has no magnitude), takes an unknown transform set (``tfoo``) for the default one, and clips a
  magnitude above its bound.
- **PIL per frame.** Frames go through PIL once (one ``Image.fromarray`` in, one ``np.asarray`` out, all ops in
  between). A clip on which no op fires is returned untouched without any conversion. One-channel clips are
  repeated to RGB, augmented, and reduced back to their first channel (all ops act per channel on a grey image;
  the fill is grey), so the fill colour and every op behave as on the equal-channel digits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import AugmentOp, posterize, rand_augment_transform

from ..config.finetune import parse_rand_augment

__all__ = ["ClipRandAugment", "DrawnOp", "FILL", "LEVEL_DENOM"]

FILL = (128, 128, 128)
"""Fill colour of geometric ops (SlowFast / VideoMAE ``_FILL``)."""
LEVEL_DENOM = 10.0
"""timm's default magnitude upper bound (``_LEVEL_DENOM``), used when an op has no ``magnitude_max``."""
_BICUBIC = Image.Resampling.BICUBIC
_SEED_BOUND = 2**63


@dataclass(frozen=True)
class DrawnOp:
    """One op as drawn for one clip: apply with ``aug_fn(frame, *args, **op.kwargs)`` to every frame."""

    op: AugmentOp
    magnitude: float
    args: tuple
    frame_seed: int
    """Python ``random`` is seeded with this before the op runs on each frame (only ``GaussianBlurRand`` uses it)."""

    def apply(self, img: Image.Image) -> Image.Image:
        """The op on one PIL frame; the caller owns Python's global random state (see :meth:`ClipRandAugment.apply`).

        Posterize keeping 0 bits (``PosterizeIncreasing`` at magnitude 10, which ``mstd`` draws reach: ~0.2 % of the
        clips of ``rand-m9-n2-mstd0.5-inc1``) is a black frame, as Pillow before 13 made it; Pillow 13 raises
        instead, in a loader worker, which stopped a run."""
        random.seed(self.frame_seed)
        if self.op.aug_fn is posterize and self.args and self.args[0] < 1:
            return Image.new(img.mode, img.size)
        return self.op.aug_fn(img, *self.args, **self.op.kwargs)


class _PythonRandomSandbox:
    """Saves Python's global ``random`` state on entry and restores it on exit."""

    def __enter__(self) -> None:
        self._state = random.getstate()

    def __exit__(self, *exc: Any) -> None:
        random.setstate(self._state)


class ClipRandAugment:
    """timm RandAugment (``config_str``, e.g. ``rand-m7-n4-mstd0.5-inc1``) with per-clip draws.

    Call with a uint8 clip ``(C, T, H, W)`` (C = 1 or 3) and the sample's ``numpy.random.Generator``; returns a uint8
    clip of the same shape. ``img_size`` is the crop size the clip is trained at (``translate_const`` = 0.45 of it).
    """

    def __init__(self, config_str: str, img_size: int) -> None:
        if not isinstance(config_str, str):
            raise ValueError(f"'{config_str}' is not a RandAugment string (e.g. rand-m7-n4-mstd0.5-inc1)")
        parse_rand_augment(config_str)  # strict: timm drops malformed sections and reads unknown sets as the default
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        hparams = dict(translate_const=int(0.45 * img_size), img_mean=FILL, interpolation=_BICUBIC)
        try:
            ra = rand_augment_transform(config_str, hparams)
        except (AssertionError, KeyError, ValueError) as e:
            raise ValueError(f"bad RandAugment string '{config_str}': {e!r}") from e
        for op in ra.ops:
            if isinstance(op.kwargs.get("resample"), (list, tuple)):  # never random per frame
                op.kwargs["resample"] = _BICUBIC
        self.config_str = config_str
        self.img_size = img_size
        self.ops: list[AugmentOp] = list(ra.ops)
        self.num_layers: int = int(ra.num_layers)
        self.choice_weights: np.ndarray | None = ra.choice_weights

    # ---------------------------------------------------------------- draws

    def draw(self, rng: np.random.Generator) -> list[DrawnOp]:
        """The ops that fire on one clip, in order, with their arguments; every random draw comes from ``rng``."""
        weights = self.choice_weights
        picks = rng.choice(len(self.ops), self.num_layers, replace=weights is None, p=weights)
        drawn = []
        with _PythonRandomSandbox():
            for i in picks:
                op = self.ops[int(i)]
                if op.prob < 1.0 and rng.random() > op.prob:  # timm: skip when random() > prob
                    continue
                magnitude = float(op.magnitude)
                std = op.magnitude_std or 0
                if std == float("inf"):
                    magnitude = float(rng.uniform(0.0, magnitude))
                elif std > 0:
                    magnitude = float(rng.normal(magnitude, std))
                magnitude = max(0.0, min(magnitude, op.magnitude_max or LEVEL_DENOM))
                level_seed, frame_seed = (int(s) for s in rng.integers(_SEED_BOUND, size=2))
                random.seed(level_seed)  # timm's _randomly_negate reads the global random module
                args = tuple(op.level_fn(magnitude, op.hparams)) if op.level_fn is not None else ()
                drawn.append(DrawnOp(op, magnitude, args, frame_seed))
        return drawn

    # ---------------------------------------------------------------- application

    @staticmethod
    def apply(clip: torch.Tensor, drawn: Sequence[DrawnOp]) -> torch.Tensor:
        """Apply ``drawn`` ops to every frame of a uint8 clip ``(C, T, H, W)`` -> uint8 ``(C, T, H, W)``.

        Returns ``clip`` itself when nothing fired; otherwise a new contiguous tensor.
        """
        if clip.dtype != torch.uint8 or clip.ndim != 4:
            raise ValueError(f"expected a uint8 clip (C, T, H, W), got {tuple(clip.shape)} {clip.dtype}")
        c = clip.shape[0]
        if c not in (1, 3):
            raise ValueError(f"RandAugment needs 1 or 3 channels, got {c}")
        if not drawn:
            return clip
        frames = clip.permute(1, 2, 3, 0).numpy()  # (T, H, W, C) view
        if c == 1:
            frames = np.repeat(frames, 3, axis=3)  # contiguous grey RGB
        else:
            frames = np.ascontiguousarray(frames)
        out = np.empty_like(frames)
        with _PythonRandomSandbox():
            for t, img in enumerate(_pil_frames(frames)):
                for d in drawn:
                    img = d.apply(img)
                out[t] = np.asarray(img)
        if c == 1:
            out = out[..., :1]
        return torch.from_numpy(out).permute(3, 0, 1, 2).contiguous()

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """uint8 ``(C, T, H, W)`` -> uint8 ``(C, T, H, W)``: one draw from ``rng``, the same ops on every frame."""
        return self.apply(clip, self.draw(rng))

    def __repr__(self) -> str:
        return (f"ClipRandAugment('{self.config_str}', img_size={self.img_size}, n={self.num_layers}, "
                f"ops={len(self.ops)})")


def _pil_frames(frames: np.ndarray) -> Iterator[Image.Image]:
    """uint8 ``(T, H, W, 3)`` contiguous -> one RGB PIL image per frame."""
    for t in range(frames.shape[0]):
        yield Image.fromarray(frames[t])
