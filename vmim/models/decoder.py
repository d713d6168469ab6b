"""MAE-style decoder: visible tokens + mask tokens at their positions -> per-token predictions."""

from __future__ import annotations

import torch
from torch import nn

from .layers import Block, init_weights
from .pos_embed import sincos_3d


class MaskedDecoder(nn.Module):
    """Predicts a target for every token of the grid from the encoder's visible tokens.

    The encoder output is projected to ``dim``, a learned mask token is placed at every masked position,
    the fixed sin-cos table is added, then ``depth`` blocks, a LayerNorm and a linear head run over the
    full grid. ``depth=0`` is a linear head on (mask-token-completed) encoder features.
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 4, dim: int = 384, num_heads: int = 6,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, visible: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, N_visible, in_dim), mask (B, N) bool True = masked -> (B, N, out_dim)."""
        b, n = mask.shape
        x = self.embed(visible)
        full = self.mask_token.to(x.dtype).expand(b, n, self.dim).clone()
        full[~mask] = x.reshape(-1, self.dim)  # same row-major order as the encoder's gather
        full = full + sincos_3d(grid, self.dim, full.device).to(full.dtype)
        for block in self.blocks:
            full = block(full)
        return self.head(self.norm(full))
