"""HOG target of MaskFeat: SlowFast's ``HOGLayerC`` (no Gaussian window), the same up to float round-off.

Per channel: 3x3 Sobel gradients on the reflect-padded image (exactly zero on flat regions, see
:func:`_sobel`), unsigned orientation ``atan2(gx, gy)`` hard-voted into ``nbins`` bins over [0, pi) with the
gradient magnitude as weight, summed over non-overlapping ``cell_size`` x ``cell_size`` cells and
L2-normalized over the bins of each cell.
The per-cell L2 norm makes the features invariant to a per-channel positive affine change of intensities,
so computing them on [0, 1] pixels or on mean/std-normalized pixels gives the same target.

Where it runs: on the device, inside the training step, on the batch of clean clips (the same place as the
pixel target), never in data-loader workers: it is a few convolutions on the GPU, and workers then only
ship pixels.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from vmim.targets.base import Target

_DIFF = (1.0, 0.0, -1.0)
_SMOOTH = (1.0, 2.0, 1.0)


def _depthwise(images: Tensor, kernel: tuple[float, ...], vertical: bool) -> Tensor:
    """Valid per-channel cross-correlation of ``(B, C, H, W)`` with a 1-D kernel along H or W."""
    c = images.shape[1]
    shape = (1, 1, -1, 1) if vertical else (1, 1, 1, -1)
    weight = torch.tensor(kernel, dtype=images.dtype, device=images.device).view(shape).expand(c, -1, -1, -1)
    return F.conv2d(images, weight, groups=c)


def _sobel(images: Tensor) -> tuple[Tensor, Tensor]:
    """3x3 Sobel ``(gx, gy)`` of reflect-padded ``(B, C, H, W)`` images, per channel.

    weight_x = [[1, 0, -1], [2, 0, -2], [1, 0, -1]] = [1, 2, 1]^T [1, 0, -1] and weight_y = weight_x^T, applied
    in this separable form, difference first: a flat region then gives exactly zero gradient, whereas the fused
    3x3 conv leaves float32 round-off (~1e-7) that the per-cell L2 norm would blow up into unit-norm histograms.
    """
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    gx = _depthwise(_depthwise(padded, _DIFF, vertical=False), _SMOOTH, vertical=True)
    gy = _depthwise(_depthwise(padded, _DIFF, vertical=True), _SMOOTH, vertical=False)
    return gx, gy


def hog_histograms(images: Tensor, nbins: int = 9, cell_size: int = 8) -> Tensor:
    """Per-channel HOG cell histograms, as SlowFast's ``HOGLayerC``.

    Gradients are taken on the whole image; rows and columns past the last full cell (``H % cell_size``,
    ``W % cell_size``) are then dropped, as SlowFast's unfold does.

    Args:
        images: Float ``(B, C, H, W)``, H and W at least 2 (reflect padding).
        nbins: Orientation bins over [0, pi).
        cell_size: Cell side in pixels.

    Returns:
        ``(B, C, nbins, H // cell_size, W // cell_size)``, L2-normalized over the bins; all zeros in a cell
        without gradient.
    """
    gx, gy = _sobel(images)
    magnitude = torch.sqrt(gx * gx + gy * gy)
    phase = torch.atan2(gx, gy) / math.pi * nbins  # in [-nbins, nbins]
    bins = phase.floor().long() % nbins
    b, c, h, w = images.shape
    votes = images.new_zeros(b, c, nbins, h, w).scatter_(2, bins.unsqueeze(2), magnitude.unsqueeze(2))
    hist = votes.unfold(3, cell_size, cell_size).unfold(4, cell_size, cell_size).sum(dim=(-2, -1))
    return F.normalize(hist, p=2, dim=2)


class HOGTarget(Target):
    """HOG of the first frame of each tubelet (frames 0, t, 2t, ...), as SlowFast's MaskFeat.

    Per-token layout ``(c, bin, cell_row, cell_col)`` over the token's (p / cell_size)^2 cells:
    D = C * nbins * (p // cell_size)^2, e.g. 108 for 16x16 patches, 3 channels, 9 bins and 8-pixel cells.

    Args:
        patch_size: Tubelet size ``(t, p, p)``; p must be a multiple of ``cell_size``.
        in_chans: Channels C.
        nbins: Orientation bins over [0, pi).
        cell_size: Cell side in pixels.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int = 3, nbins: int = 9, cell_size: int = 8):
        super().__init__(patch_size, in_chans)
        p = self.patch_size[1]
        if cell_size < 1 or p % cell_size:
            raise ValueError(f"cell_size={cell_size} must divide the patch size p={p}")
        self.nbins = nbins
        self.cell_size = cell_size
        self.dim = in_chans * nbins * (p // cell_size) ** 2

    @classmethod
    def from_config(cls, cfg: Any, patch_size: tuple[int, int, int], in_chans: int) -> HOGTarget:
        return cls(patch_size, in_chans, nbins=cfg.nbins, cell_size=cfg.cell_size)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, in_chans={self.in_chans}, nbins={self.nbins}, " \
               f"cell_size={self.cell_size}"

    def macs(self, shape: Sequence[int]) -> int:
        """Four 3-tap depthwise convs per channel of the first frame of each tubelet, on the reflect-padded frame: gx
        along W then H, gy along H then W: 3 x ((H+2) W + H W + H (W+2) + H W) MACs."""
        b, c, frames, h, w = shape
        n = b * c * math.ceil(frames / self.patch_size[0])
        return n * 3 * (4 * h * w + 2 * h + 2 * w)

    def _compute(self, pixels: Tensor) -> Tensor:
        t, p, _ = self.patch_size
        b = pixels.shape[0]
        frames = rearrange(pixels[:, :, ::t], "b c n h w -> (b n) c h w")
        hist = hog_histograms(frames, self.nbins, self.cell_size)
        k = p // self.cell_size
        return rearrange(hist, "(b n) c k (h i) (w j) -> b (n h w) (c k i j)", b=b, i=k, j=k)
