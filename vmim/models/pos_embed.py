"""Position embeddings of the token grid: fixed sin-cos tables and a learned table.

``sincos_3d`` (our default, MAE-ST / MVD style) splits the channels between time (a quarter) and space (three
quarters, half for rows and half for columns). ``sincos_1d`` is VideoMAE's table over the flattened token index,
kept so that VideoMAE weights reproduce their features. In both an image is the t=0 slice of the clip's table, so
images and videos share one embedding, and any grid size works without interpolation. ``learned`` is a trainable
table (MAE-style fine-tuning checkpoints, timm ViTs). ``none`` adds nothing (SimMIM, BEiT: a relative position bias
in the attention carries the positions instead); the backbone skips the addition and decoders fall back to
``sincos_3d``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn
import torch.nn.functional as F


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


@lru_cache(maxsize=32)
def _sincos_flat_cpu(n: int, dim: int) -> torch.Tensor:
    """VideoMAE's ``get_sinusoid_encoding_table``: position p, channel j -> p / 10000^(2 (j // 2) / dim), sin on
    even channels and cos on odd ones (interleaved, unlike :func:`sincos_1d`)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    j = torch.arange(dim, dtype=torch.float64)
    angles = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** (2 * (j // 2) / dim)[None, :]
    table = angles.clone()
    table[:, 0::2] = angles[:, 0::2].sin()
    table[:, 1::2] = angles[:, 1::2].cos()
    return table.float()


@lru_cache(maxsize=64)
def _sincos_flat_on(n: int, dim: int, device: torch.device) -> torch.Tensor:
    return _sincos_flat_cpu(n, dim).to(device)


def sincos_flat(grid: tuple[int, int, int], dim: int, device: torch.device | None = None) -> torch.Tensor:
    """1-D sin-cos over the flattened (t, h, w) token index (VideoMAE), (T'*H'*W', dim), cached per device. An image
    (T' = 1) takes the first H'*W' rows, the t = 0 slice of a clip's table."""
    n = int(grid[0]) * int(grid[1]) * int(grid[2])
    return _sincos_flat_on(n, dim, torch.device(device or "cpu"))


def resample_table(table: torch.Tensor, src_grid: tuple[int, int, int], dst_grid: tuple[int, int, int]
                   ) -> torch.Tensor:
    """A position table (T*H*W, D) in (t, h, w) row-major order for ``src_grid`` -> the table for ``dst_grid``.

    Space: bicubic (antialiased) interpolation of every t-slice. Time: the slices repeated when they are all equal
    (a 2-D table, or one imported from it: exact), else linear interpolation over t.
    """
    st, sh, sw = src_grid
    dt, dh, dw = dst_grid
    if table.shape[0] != st * sh * sw:
        raise ValueError(f"position table of {table.shape[0]} rows does not fit the grid {src_grid}")
    if tuple(src_grid) == tuple(dst_grid):
        return table
    dtype, dim = table.dtype, table.shape[1]
    grid = table.float().reshape(st, sh, sw, dim)
    if (sh, sw) != (dh, dw):
        grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(dh, dw), mode="bicubic", align_corners=False,
                             antialias=True).permute(0, 2, 3, 1)
    if st != dt:
        if all(torch.equal(grid[0], grid[i]) for i in range(1, st)):
            grid = grid[:1].expand(dt, -1, -1, -1)
        else:
            flat = grid.permute(1, 2, 3, 0).reshape(1, dh * dw * dim, st)
            grid = F.interpolate(flat, size=dt, mode="linear", align_corners=False).reshape(dh, dw, dim, dt)
            grid = grid.permute(3, 0, 1, 2)
    return grid.reshape(dt * dh * dw, dim).to(dtype).contiguous()


FIXED_TABLES = {"sincos_3d": sincos_3d, "sincos_1d": sincos_flat}


class PositionEmbedding(nn.Module):
    """A backbone's position embedding, one of ``vmim.config.POS_EMBEDS``, or ``none`` (no positions).

    ``sincos_3d`` and ``sincos_1d`` are fixed tables for any grid. ``learned`` is a trainable ``(N, dim)`` table for
    the training clip's grid (``video_grid``), trunc-normal(0.02) initialized; an image takes its t = 0 slice, and
    another spatial size reads the table resampled to it (:func:`resample_table`: bicubic, as MAE / DeiT interpolate
    position embeddings; progressive resolution trains through the resampling); another clip length is an error.
    """

    def __init__(self, kind: str, dim: int, video_grid: tuple[int, int, int] | None = None):
        super().__init__()
        if kind not in (*FIXED_TABLES, "learned", "none"):
            raise ValueError(f"unknown position embedding '{kind}'; one of {(*FIXED_TABLES, 'learned', 'none')}")
        self.kind, self.dim = kind, dim
        if kind == "learned":
            if video_grid is None:
                raise ValueError("a learned position embedding needs the training clip's token grid")
            self.video_grid = tuple(int(g) for g in video_grid)
            self.table = nn.Parameter(torch.zeros(math.prod(self.video_grid), dim))
            nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """(T'*H'*W', dim) rows in (t, h, w) row-major order (zeros for ``none``, which callers skip)."""
        if self.kind == "none":
            return torch.zeros(math.prod(grid), self.dim, device=device)
        if self.kind != "learned":
            return FIXED_TABLES[self.kind](grid, self.dim, device)
        t, h, w = grid
        vt, vh, vw = self.video_grid
        if t not in (1, vt):
            raise ValueError(f"learned position embedding is for {vt} time slices (or the first one), got the grid "
                             f"{tuple(grid)}")
        table = self.table
        if (h, w) != (vh, vw):  # another resolution (progressive resizing): the table resampled, differentiably
            table = resample_table(table, self.video_grid, (vt, h, w))
        return table[: t * h * w]

    def extra_repr(self) -> str:
        return f"kind={self.kind}, dim={self.dim}"
