"""The raw-pixel baseline of ``vmim probe``: what a classifier gets from the evaluation clip itself, without an encoder.

Decisions (docs/probes.md, "The raw-pixel rule"):

* **The same pixels as the encoder's.** The features are the uint8 clip that the evaluation transform gives the
  backbone (same views, crops, resize), scaled to [0, 1], averaged over the views as the encoder's features are, and
  flattened. No per-channel normalization: the linear probe standardizes each feature, the k-NN probe compares
  directions.
* **At most ``max_dim`` values** (``probe.raw_pixels_dim``, 4096): a C x T x S x S clip that has more is
  average-pooled (:func:`pooled_size`). Every frame is kept, and the two spatial sides shrink alike to the largest
  side that fits; where that side would fall under 8 pixels (a long or wide clip), the side stays at 8 (or S, if
  smaller) and the frames are pooled instead to as many as fit. Keeping frames first keeps motion, the only label
  of a motion task, and 8 x 8 keeps a coarse picture of every frame; at 224 px: images 3 x 36 x 36 (3888 values),
  16-frame clips 3 x 16 x 9 x 9 (3888).
* **Tokens for the attentive probe** are the clip's non-overlapping patches of the backbone's own patch and tubelet
  size (``(T / t) (S / p)^2`` tokens of ``C t p^2`` values, unpooled): the pixels each backbone token starts from, so
  the attentive probe on them is that probe without the encoder. They cost about as much memory as the encoder's
  tokens (``C t p^2`` values against the encoder's width: 1536 against 768 for ViT-B with 16 px, 2-frame tubelets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_DIM = 4096
MIN_SIDE = 8


def pooled_size(channels: int, frames: int, side: int, max_dim: int = MAX_DIM) -> tuple[int, int]:
    """``(T', S')``: frames and spatial side of a ``(C, T, S, S)`` clip pooled to at most ``max_dim`` values (at
    least one frame and one pixel per side, whatever ``max_dim``)."""
    if channels * frames * side * side <= max_dim:
        return frames, side
    fitted = math.isqrt(max_dim // (channels * frames))
    floor = min(MIN_SIDE, side)
    if fitted >= floor:
        return frames, fitted
    side = max(1, min(floor, math.isqrt(max_dim // channels)))
    return max(1, min(frames, max_dim // (channels * side * side))), side


def pixel_patches(clip: torch.Tensor, patch: int, tubelet: int) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B, N, C * t * p * p)`` non-overlapping patches (``t = min(tubelet, T)``; a border that
    does not fill a patch is dropped), token order time-major as the backbone's."""
    b, c, t, h, w = clip.shape
    pt, p = min(tubelet, t), min(patch, h, w)
    nt, nh, nw = t // pt, h // p, w // p
    x = clip[:, :, :nt * pt, :nh * p, :nw * p].reshape(b, c, nt, pt, nh, p, nw, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, nt * nh * nw, c * pt * p * p)


class PixelFeatures:
    """A feature set of :func:`vmim.engine.probe_features.extract` (no parameters: nothing to load or train).

    Args:
        max_dim: most values of the pooled vector (:func:`pooled_size`).
        patch, tubelet: the backbone's patch and tubelet size (tokens for the attentive probe).
        tokens: also return ``"tokens"``.
    """

    def __init__(self, max_dim: int = MAX_DIM, patch: int = 16, tubelet: int = 2, tokens: bool = False):
        self.max_dim, self.patch, self.tubelet, self.want_tokens = max_dim, patch, tubelet, tokens
        self.shape: tuple[int, ...] | None = None
        """``(C, T', S', S')`` of the pooled clip, after the first call."""

    def pooled(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, T, S, S)`` -> ``(B, D)`` pixels in [0, 1], average-pooled to ``D <= max_dim`` values."""
        b, c, t, h, w = clip.shape
        frames, side = pooled_size(c, t, max(h, w), self.max_dim)
        x = clip.float() / 255.0
        size = (frames, min(side, h), min(side, w))
        if size != (t, h, w):
            x = F.adaptive_avg_pool3d(x, size)
        self.shape = (c, *size)
        return x.flatten(1)

    def __call__(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"pooled": self.pooled(clip)}
        if self.want_tokens:
            out["tokens"] = pixel_patches(clip.float() / 255.0, self.patch, self.tubelet)
        return out
