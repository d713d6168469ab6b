"""Fixed separable space-time sin-cos position embeddings (MAE-ST / MVD style).

The channels are split between time (a quarter) and space (three quarters, half for rows and half for
columns). An image is the t=0 slice of the same table, so images and videos share one embedding, and
any grid size works without interpolation.
"""

from __future__ import annotations

from functools import lru_cache

import torch


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(L,) positions -> (L, dim) as [sin(pos * w_k), cos(pos * w_k)], w_k = 10000^(-2k/dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


@lru_cache(maxsize=32)
def _sincos_3d_cpu(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    t, h, w = grid
    dim_t = dim // 4
    dim_s = dim - dim_t
    if dim_t % 2 or dim_s % 4:
        raise ValueError(f"embedding width {dim} must split into time (dim//4, even) and space (rest, /4)")
    emb_t = sincos_1d(torch.arange(t), dim_t)  # (t, dim_t)
    emb_h = sincos_1d(torch.arange(h), dim_s // 2)
    emb_w = sincos_1d(torch.arange(w), dim_s // 2)
    space = torch.cat([emb_h[:, None, :].expand(h, w, -1), emb_w[None, :, :].expand(h, w, -1)], dim=-1)
    full = torch.cat([
        emb_t[:, None, None, :].expand(t, h, w, -1),
        space[None].expand(t, h, w, -1),
    ], dim=-1)
    return full.reshape(t * h * w, dim).float()


@lru_cache(maxsize=64)
def _sincos_3d_on(grid: tuple[int, int, int], dim: int, device: torch.device) -> torch.Tensor:
    return _sincos_3d_cpu(grid, dim).to(device)


def sincos_3d(grid: tuple[int, int, int], dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Position table (T'*H'*W', dim) for a token grid in (t, h, w) row-major order, cached per device
    (no host-to-device copy per forward pass)."""
    return _sincos_3d_on(tuple(int(g) for g in grid), dim, torch.device(device or "cpu"))
