"""Interface shared by all reconstruction targets.

A target maps a clean clip ``(B, C, T, H, W)`` in [0, 1] to one feature vector per token, ``(B, N, D)``, for
ALL tokens, in the (t, h, w) row-major token order of a Conv3d patch embedding flattened with
``x.flatten(2).transpose(1, 2)``. The loss picks the masked (or visible) tokens afterwards.

Targets hold no trainable parameters and never build a graph; they run on the device inside the training step, on
the batch of clean clips. Hand-made targets (pixels, HOG) compute in float32 also inside ``torch.autocast``; model
targets (teachers) run under the step's autocast, as the student does.

What a target may tell the method, through one generic interface (the method asks each target and prefixes the
answers with the target's name; the engine sees only the method's):

* :meth:`Target.macs`: multiply-adds of its forward on a clip shape (:mod:`vmim.models.flops`); the default counts the
  forward under fake tensors, a target with a formula overrides it;
* :meth:`Target.extra_metrics`: per-step scalars that are not losses (a teacher's forward time);
* :meth:`Target.record` / :meth:`Target.check_record`: plain data the checkpoint keeps (a teacher's source and
  content hash) and the check of a resumed run against it; :meth:`Target.describe`: a start-up log line.

A target never sees the student. A momentum teacher's EMA encoder is the method's (it owns and updates it, beside
the student); the momentum target only reads the encoder it is given when built (:mod:`vmim.targets.momentum`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from vmim.models.flops import fake_macs, module_device
from vmim.models.grid import Grid, token_grid


@contextmanager
def float32_no_grad(device: torch.device) -> Iterator[None]:
    """No grad and no autocast on ``device``: ops run in the dtype of their (float32) inputs."""
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        yield


class Target(nn.Module, ABC):
    """Abstract reconstruction target.

    Args:
        patch_size: Tubelet size ``(t, p, p)`` of the patch embedding.
        in_chans: Channels ``C`` of the clips.

    Attributes:
        dim: Features per token ``D``.
        follows_student: True for a kind that reads an EMA copy of the student: the method makes the copy, keeps and
            updates it, and builds the target with ``from_config(..., encoder=copy, normalizer=..., key=...)``.
    """

    dim: int
    follows_student: bool = False

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int = 3):
        super().__init__()
        if len(patch_size) != 3 or patch_size[1] != patch_size[2] or min(patch_size) < 1:
            raise ValueError(f"patch_size must be (t, p, p) with positive sizes, got {patch_size}")
        self.patch_size: tuple[int, int, int] = tuple(int(s) for s in patch_size)
        self.in_chans = in_chans

    @classmethod
    @abstractmethod
    def from_config(cls, cfg: Any, patch_size: tuple[int, int, int], in_chans: int) -> Target:
        """Builds the target from a ``TargetConfig``-like dataclass."""

    @abstractmethod
    def _compute(self, pixels: Tensor) -> Tensor:
        """Float32 ``(B, C, T, H, W)`` clip (already validated) -> ``(B, N, D)`` features."""

    def forward(self, pixels: Tensor) -> Tensor:
        """Per-token targets of a clip.

        Args:
            pixels: ``(B, C, T, H, W)`` clean clip in [0, 1]; T a multiple of t, H and W multiples of p.

        Returns:
            float32 ``(B, N, D)``, N = (T/t)*(H/p)*(W/p) in (t, h, w) row-major order, without grad.
        """
        self.grid(pixels)
        with float32_no_grad(pixels.device):
            return self._compute(pixels.float())

    def macs(self, shape: Sequence[int]) -> int:
        """Multiply-adds of :meth:`forward` on a clean clip of ``shape`` ``(B, C, T, H, W)``. The default (the generic
        fallback) runs the forward under ``FakeTensorMode``, cached per shape: nothing is allocated or computed."""
        return fake_macs(self, shape, key=id(self), device=module_device(self))

    def extra_metrics(self) -> dict[str, float]:
        """Per-step scalars that are not losses, e.g. ``{"teacher_ms": 12.5}`` (default: none). The method logs each
        as ``perf/<key>/<target name>``; a ``*_ms`` key is a time per micro-batch, which the log turns into a share
        of the step (``perf/<part>_share``)."""
        return {}

    def record(self) -> dict[str, str] | None:
        """Plain data the checkpoint keeps of this target, to check a resumed run against (default: None)."""
        return None

    def check_record(self, saved: dict[str, str], key: str) -> None:
        """Refuse to continue a run whose :meth:`record` was ``saved`` if this target now differs (default: nothing).
        ``key`` is the target's config key (``targets.<name>``), for the error."""

    def describe(self, key: str) -> str | None:
        """One start-up log line about the target under config key ``key`` (default: None, nothing to say)."""
        return None

    def to_pixels(self, pred: Tensor, pixels: Tensor) -> Tensor | None:
        """Maps a prediction ``(B, N, D)`` back to a clip ``(B, C, T, H, W)`` for visualization.

        Args:
            pred: Predicted targets for all tokens.
            pixels: The clean clip ``(B, C, T, H, W)`` the targets were computed from.

        Returns:
            The clip, or None when the target cannot be inverted (the default).
        """
        return None

    def grid(self, pixels: Tensor) -> Grid:
        """Token grid ``(T/t, H/p, W/p)`` of a clip; ValueError if its shape does not fit the target."""
        t, p, _ = self.patch_size
        if pixels.ndim != 5 or pixels.shape[1] != self.in_chans:
            raise ValueError(f"expected a (B, {self.in_chans}, T, H, W) clip, got shape {tuple(pixels.shape)}")
        if pixels.shape[2] % t:  # images are repeated to the tubelet length first (InputNormalizer.pixels)
            raise ValueError(f"clip shape {tuple(pixels.shape)} is not divisible by patch size {self.patch_size}")
        return token_grid(pixels.shape, self.patch_size)
