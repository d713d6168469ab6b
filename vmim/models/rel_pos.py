"""A learned relative position bias over a 3-D token grid (BEiT / SimMIM style), for any attention over grid tokens.

One table holds a value per head for every offset ``(dt, dh, dw)`` between two tokens of the configured grid
``(T', H', W')``: ``(2T'-1)(2H'-1)(2W'-1)`` rows x heads (an image is T' = 1: BEiT's 2-D table). :meth:`bias` gives
the ``(heads, N, N)`` logits to add for a grid, from an index of offsets built once per grid and device and cached.

Decisions:

* **Grids other than the configured one.** A grid that fits inside it (an image in a video model, a LoMaR window in
  a full-image model) reads the same offsets from the table unchanged: an offset means the same thing at any grid
  size, so there is nothing to resample. An axis that outgrows it is resampled with :func:`resize_table` (the table
  read as an image of offsets, as BEiT / SimMIM fine-tuning does when the resolution changes); ``load_init`` resizes
  a pretrained table to the fine-tuning grid the same way, once.
* **Interpolation.** :func:`resize_table` is bicubic over the (dh, dw) offset plane, as Swin / SimMIM-Swin's
  ``utils.py`` (``F.interpolate(..., mode="bicubic")``), and linear over dt; ``align_corners=False`` keeps offset 0
  at the centre. BEiT's ViT loader instead fits a cubic spline on a geometric sequence of offsets (scipy
  ``interp2d``), denser near 0; plain bicubic needs no scipy and keeps a constant table constant and a same-size
  table unchanged (both tested).
* **No class-token entries.** BEiT adds three learned entries (cls to token, token to cls, cls to cls); SimMIM's
  pretraining never reads the class token, so prefix tokens get a zero bias here (:func:`pad_prefix`).
* **Zero init**, as BEiT / SimMIM: an untrained table is no bias at all, so a model built with one and loaded from
  weights without one (``load_init``) starts as the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Grid = tuple[int, int, int]


def offset_shape(grid: Grid) -> Grid:
    """Offsets per axis of a grid: (2T'-1, 2H'-1, 2W'-1)."""
    return tuple(2 * int(g) - 1 for g in grid)


def relative_index(grid: Grid, table_grid: Grid | None = None) -> torch.Tensor:
    """(N, N) long: row i, column j hold the table row of the offset ``pos(i) - pos(j)``, tokens in (t, h, w)
    row-major order; the table is laid out for ``table_grid`` (default: ``grid``) as offsets ``(dt, dh, dw)``
    row-major, each shifted by its axis' ``extent - 1`` so that it starts at 0."""
    table_grid = tuple(grid) if table_grid is None else tuple(table_grid)
    if any(g > tg for g, tg in zip(grid, table_grid)):
        raise ValueError(f"grid {tuple(grid)} does not fit inside the table's grid {table_grid}")
    coords = torch.stack(torch.meshgrid(*(torch.arange(int(g)) for g in grid), indexing="ij")).flatten(1)  # (3, N)
    delta = coords[:, :, None] - coords[:, None, :]  # (3, N, N)
    _, sh, sw = offset_shape(table_grid)
    dt, dh, dw = (delta[a] + table_grid[a] - 1 for a in range(3))
    return (dt * sh + dh) * sw + dw


def resize_table(table: torch.Tensor, src_grid: Grid, dst_grid: Grid) -> torch.Tensor:
    """A ((2T-1)(2H-1)(2W-1), heads) offset table for ``src_grid`` -> the table for ``dst_grid``: bicubic over the
    (dh, dw) plane, linear over dt (module docstring). The same grid returns ``table`` itself."""
    src, dst = offset_shape(src_grid), offset_shape(dst_grid)
    if table.shape[0] != math.prod(src):
        raise ValueError(f"relative position table of {table.shape[0]} rows does not fit the grid {tuple(src_grid)}")
    if src == dst:
        return table
    heads, dtype = table.shape[1], table.dtype
    grid = table.float().reshape(*src, heads).permute(0, 3, 1, 2)  # (St, heads, Sh, Sw)
    if src[1:] != dst[1:]:
        grid = F.interpolate(grid, size=dst[1:], mode="bicubic", align_corners=False)
    if src[0] != dst[0]:
        flat = grid.permute(1, 2, 3, 0).reshape(1, -1, src[0])  # (1, heads*Sh*Sw, St)
        grid = F.interpolate(flat, size=dst[0], mode="linear", align_corners=False)
        grid = grid.reshape(heads, dst[1], dst[2], dst[0]).permute(3, 0, 1, 2)
    return grid.permute(0, 2, 3, 1).reshape(math.prod(dst), heads).to(dtype).contiguous()


def pad_prefix(bias: torch.Tensor, prefix: int) -> torch.Tensor:
    """(..., N, N) -> (..., prefix + N, prefix + N): zero bias to and from ``prefix`` leading (class) tokens."""
    return F.pad(bias, (prefix, 0, prefix, 0)) if prefix else bias


def gather_present(bias: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """(heads, N, N) grid bias -> (B, heads, M, M) among each sample's M present tokens (``present``: (B, N) bool,
    the same count per sample), for an encoder that sees only the visible tokens."""
    b, n = present.shape
    idx = torch.arange(n, device=present.device).expand(b, n)[present].reshape(b, -1)  # (B, M), ascending
    return bias[:, idx[:, :, None], idx[:, None, :]].transpose(0, 1)


class RelativePositionBias(nn.Module):
    """A learned per-head bias for each offset of the configured grid; :meth:`bias` maps it onto a grid.

    Args:
        num_heads: attention heads (one bias per head).
        grid: the configured token grid (T', H', W'); smaller grids read its table, larger ones resample it.
    """

    def __init__(self, num_heads: int, grid: Grid):
        super().__init__()
        self.num_heads, self.grid = num_heads, tuple(int(g) for g in grid)
        self.table = nn.Parameter(torch.zeros(math.prod(offset_shape(self.grid)), num_heads))
        self._index: dict[tuple[Grid, Grid, torch.device], torch.Tensor] = {}

    def index(self, grid: Grid, table_grid: Grid, device: torch.device) -> torch.Tensor:
        """:func:`relative_index`, cached per (grid, table grid, device)."""
        key = (tuple(int(g) for g in grid), tuple(table_grid), torch.device(device))
        if key not in self._index:
            self._index[key] = relative_index(key[0], key[1]).to(device)
        return self._index[key]

    def bias(self, grid: Grid) -> torch.Tensor:
        """(heads, N, N) additive attention logits for the N = T'H'W' tokens of ``grid`` (row-major)."""
        table, table_grid = self.table, self.grid
        if any(g > own for g, own in zip(grid, self.grid)):
            table_grid = tuple(max(int(g), own) for g, own in zip(grid, self.grid))
            table = resize_table(table, self.grid, table_grid)
        n = math.prod(int(g) for g in grid)
        idx = self.index(grid, table_grid, table.device)
        return table[idx.flatten()].reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, grid: Grid) -> torch.Tensor:
        return self.bias(grid)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, grid={self.grid}"


__all__ = ["RelativePositionBias", "gather_present", "offset_shape", "pad_prefix", "relative_index", "resize_table"]
