"""Normalized-pixel target (MAE, VideoMAE, OmniMAE, MaskFeat's pixel variant).

Per-token layout ``(t p p c)``, channel last: D = t*p*p*C. Normalization is per token:

* ``per_channel`` (VideoMAE, OmniMAE): each channel over its t*p*p pixels, ``(x - mean) / (std + eps)``.
* ``joint`` (MAE, MaskFeat): all t*p*p*C values together, ``(x - mean) / sqrt(var + eps)``.
* ``none``: raw pixels.

Variances are unbiased (divide by n - 1), as in the reference code.
"""

from __future__ import annotations

from typing import Any, Sequence

from einops import rearrange
from torch import Tensor

from vmim.targets.base import Grid, Target, float32_no_grad

NORMS = ("per_channel", "joint", "none")
_TOKENS = "b c (n t) (h p) (w q) -> b (n h w) (t p q c)"
_CLIP = "b (n h w) (t p q c) -> b c (n t) (h p) (w q)"


class PixelTarget(Target):
    """Per-token normalized pixels.

    Args:
        patch_size: Tubelet size ``(t, p, p)``.
        in_chans: Channels C.
        norm: ``per_channel``, ``joint`` or ``none``.
        eps: Added to the std (``per_channel``) or to the variance (``joint``).
    """

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int = 3, norm: str = "per_channel",
                 eps: float = 1e-6):
        super().__init__(patch_size, in_chans)
        if norm not in NORMS:
            raise ValueError(f"unknown pixel norm {norm!r}; expected one of {NORMS}")
        self.norm = norm
        self.eps = eps
        t, p, _ = self.patch_size
        self.dim = t * p * p * in_chans

    @classmethod
    def from_config(cls, cfg: Any, patch_size: tuple[int, int, int], in_chans: int) -> PixelTarget:
        return cls(patch_size, in_chans, norm=cfg.norm)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, in_chans={self.in_chans}, norm={self.norm}, eps={self.eps}"

    def macs(self, shape: Sequence[int]) -> int:
        """No products: a reshape and per-token statistics (not counted, :mod:`vmim.models.flops`)."""
        return 0

    def _compute(self, pixels: Tensor) -> Tensor:
        tokens = self.patchify(pixels)
        if self.norm == "none":
            return tokens
        groups, mean, scale = self._stats(tokens)
        return ((groups - mean) / scale).flatten(-2)

    def to_pixels(self, pred: Tensor, pixels: Tensor) -> Tensor:
        """Un-normalizes ``pred`` ``(B, N, D)`` with the per-token stats of ``pixels`` and un-patchifies it.

        Returns:
            float32 clip ``(B, C, T, H, W)``.
        """
        grid = self.grid(pixels)
        with float32_no_grad(pixels.device):
            tokens = pred.float()
            if self.norm != "none":
                _, mean, scale = self._stats(self.patchify(pixels.float()))
                tokens = (self._group(tokens) * scale + mean).flatten(-2)
            return self.unpatchify(tokens, grid)

    def patchify(self, pixels: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` -> ``(B, N, t*p*p*C)`` tokens in (t, h, w) order, layout ``(t p p c)``."""
        t, p, _ = self.patch_size
        return rearrange(pixels, _TOKENS, t=t, p=p, q=p)

    def unpatchify(self, tokens: Tensor, grid: Grid) -> Tensor:
        """Inverse of :meth:`patchify`: ``(B, N, D)`` on a ``(T', H', W')`` grid -> ``(B, C, T, H, W)``."""
        t, p, _ = self.patch_size
        n, h, w = grid
        return rearrange(tokens, _CLIP, n=n, h=h, w=w, t=t, p=p, q=p, c=self.in_chans)

    def _group(self, tokens: Tensor) -> Tensor:
        """``(B, N, D)`` -> ``(B, N, D/G, G)``: the values sharing stats lie along dim -2 (G = C or 1)."""
        return tokens.unflatten(-1, (-1, self.in_chans if self.norm == "per_channel" else 1))

    def _stats(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Grouped tokens and their per-group ``(mean, scale)``, with target = (x - mean) / scale."""
        groups = self._group(tokens)
        mean = groups.mean(dim=-2, keepdim=True)
        var = groups.var(dim=-2, keepdim=True, correction=1)
        scale = var.sqrt() + self.eps if self.norm == "per_channel" else (var + self.eps).sqrt()
        return groups, mean, scale
