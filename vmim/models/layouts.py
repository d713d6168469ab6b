"""Token layouts: which tokens an encoder (or a decoder) runs over, and where each of them sits on the grid.

A ViT is patch embedding + blocks + norm; what differs between MAE, SimMIM, FastMIM and LoMaR is only which tokens go
into the blocks and how the outputs map back to the grid. A layout owns exactly that for its regime:

* ``embed``: which tubelets are embedded (the gather), how masked ones are filled in (mask-in), their positions;
* the relative position bias among the tokens it keeps (the same gather on the bias's rows and columns);
* ``merge``: the blocks' sequences back to one ``(B, L, D)`` row per sample (the scatter), with
  ``present`` / ``index`` saying where each output token sits (:class:`~vmim.models.base.EncoderOutput`);
* its MACs: how many tubelets are embedded and the sequences the blocks run over.

Encoder layouts (:data:`TOKEN_LAYOUTS`):

============== ===== ======= ======== ===============================================================================
name           dense mask_in windowed tokens in
============== ===== ======= ======== ===============================================================================
visible        no    --      no       the visible tokens only (MAE, VideoMAE): ``present`` = ~mask
dense_tokens   yes   tokens  no       every token, masked ones replaced by a learned (D,) token (SimMIM, MaskFeat)
dense_pixels   yes   pixels  no       every token, masked tubelets painted with a learned (C,) colour (FastMIM)
windows        yes   tokens  yes      K local windows, each its own sequence, window-major; ``index`` (LoMaR)
============== ===== ======= ======== ===============================================================================

Decoder side: :class:`DecoderKept` (behind a visible-only encoder: the encoder tokens plus a mask token at each
position the decoder keeps, VideoMAE V2's decoder masking, MAE's masked positions) and :class:`DecoderInPlace`
(behind a dense or windowed encoder: every position already holds a token). :class:`~vmim.models.heads.DecoderHead`
picks one by its ``dense`` flag.

Decisions:

* **Layouts hold no parameters.** The mask token, the patch embedding and the position table stay the ViT's own
  (``mask_token``, ``patch_embed.*``, ``pos_embed.*``), and a layout reads them from the stem it is given, so state-dict
  keys are those of every checkpoint written before layouts existed and load strictly. A layout is a plain object,
  not an ``nn.Module``, for the same reason.
* **A plain registry, not the config's registration table.** No config key names a layout: the ViT derives it from
  its existing keys (``dense``, ``mask_in``) and from whether the batch's masks carry windows. An entry in the config
  table would show in ``vmim list`` and the config reference as a kind that nobody can type. So a new regime is one
  class and one :func:`token_layout` decorator here; :func:`select_layout` finds it by the flags it declares, and a
  new ``mask_in`` value is the class plus the schema's choice list (``vmim/models/schemas.py``).
* **Numerics are those of the ViT before the split**: the same operations in the same order, so outputs are
  bit-identical (tests compare exact values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .grid import Grid
from .rel_pos import gather_present, pad_prefix


@dataclass
class Laid:
    """An encoder's input sequences for one forward, from :meth:`TokenLayout.embed`.

    Attributes:
        tokens: ``(S, L, D)``: S sequences of L tokens each (no class token yet).
        present: bool ``(B, N)``: the grid positions the tokens stand for (visible-only), or None (all of them).
        index: int ``(B, S / B * L)``: the grid position of each token when the sequences are windows, or None.
        grid: the grid a sequence's relative positions live on (the window's for windows).
    """

    tokens: torch.Tensor
    present: torch.Tensor | None
    index: torch.Tensor | None
    grid: Grid

    def fit_bias(self, bias: torch.Tensor, prefix: int) -> torch.Tensor:
        """A grid bias ``(h, N, N)`` -> the logits among the tokens kept: ``(B, h, M, M)`` for present tokens only,
        zero rows and columns for ``prefix`` class tokens."""
        if self.present is not None:
            bias = gather_present(bias, self.present)
        return pad_prefix(bias, prefix)

    def merge(self, tokens: torch.Tensor) -> torch.Tensor:
        """The blocks' ``(S, L, D)`` sequences (class token dropped) -> ``(B, S / B * L, D)``; unchanged unless the
        sequences are windows (then window-major)."""
        return tokens if self.index is None else tokens.reshape(self.index.shape[0], -1, tokens.shape[-1])


class TokenLayout:
    """One encoder token regime (module docstring). Subclasses declare the flags :func:`select_layout` matches and
    implement :meth:`embed` and :meth:`counts`.

    The ``stem`` a layout reads is the backbone: ``patch_embed`` (a :class:`~vmim.models.vit.PatchEmbed3d`),
    ``pos_embed``, ``mask_token``, ``embed_dim``, ``patch_size`` and ``grid(shape)``.
    """

    name: ClassVar[str]
    dense: ClassVar[bool]
    mask_in: ClassVar[str | None] = None
    """Where a dense layout fills in masked tokens (``tokens`` / ``pixels``); None for a visible-only one."""
    windowed: ClassVar[bool] = False

    def mask_token_shape(self, embed_dim: int, in_chans: int) -> tuple[int, ...] | None:
        """Shape of the learned mask token the backbone holds for this layout (None: none)."""
        return None

    def embed(self, stem: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
              windows: torch.Tensor | None = None) -> Laid:
        raise NotImplementedError

    def counts(self, batch: int, n: int, n_masked: int, windows: tuple[int, int] | None = None
               ) -> tuple[int, int, int]:
        """(tubelets embedded, sequences, tokens per sequence) for ``batch`` inputs of ``n`` grid tokens with
        ``n_masked`` masked per sample (``windows`` (K, w): LoMaR), for the MAC count."""
        raise NotImplementedError


TOKEN_LAYOUTS: dict[str, type[TokenLayout]] = {}
"""Layout name -> class: every encoder token regime (module docstring)."""


def token_layout(cls: type[TokenLayout]) -> type[TokenLayout]:
    """Class decorator: registers ``cls`` under its ``name`` (the one registration a new regime adds)."""
    if cls.name in TOKEN_LAYOUTS:
        raise ValueError(f"token layout {cls.name!r} is registered twice")
    TOKEN_LAYOUTS[cls.name] = cls
    return cls


def mask_ins() -> tuple[str, ...]:
    """The ``mask_in`` values some dense layout takes, in registration order."""
    return tuple(dict.fromkeys(c.mask_in for c in TOKEN_LAYOUTS.values() if c.dense and c.mask_in))


def select_layout(dense: bool, mask_in: str, windowed: bool = False) -> TokenLayout:
    """The layout for a backbone's flags (``mask_in`` only matters when dense) and the batch's windows.

    Raises:
        ValueError: no registered layout has these flags.
    """
    for cls in TOKEN_LAYOUTS.values():
        if cls.dense == dense and cls.windowed == windowed and (not dense or cls.mask_in == mask_in):
            return cls()
    if windowed:
        raise ValueError("local windows (LoMaR) need a dense encoder with its mask token on tokens "
                         "(model.dense=true, model.mask_in=tokens)")
    raise ValueError(f"no token layout for dense={dense}, mask_in={mask_in!r}; registered: {sorted(TOKEN_LAYOUTS)}")


def _add_positions(stem: nn.Module, tokens: torch.Tensor, grid: Grid, device: torch.device,
                   present: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens plus the position table's rows at their grid positions (all, or the ``present`` ones)."""
    if stem.pos_embed.kind == "none":
        return tokens
    pos = stem.pos_embed(grid, device).to(tokens.dtype)
    if present is not None:
        b, n = present.shape
        pos = pos.expand(b, n, pos.shape[-1])[present].reshape(b, -1, pos.shape[-1])
    return tokens + pos


@token_layout
class VisibleOnly(TokenLayout):
    """MAE / VideoMAE: only the visible tubelets are embedded (and the blocks see only them)."""

    name, dense = "visible", False

    def embed(self, stem: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
              windows: torch.Tensor | None = None) -> Laid:
        grid = stem.grid(x.shape)
        present = None if mask is None else ~mask
        tokens = stem.patch_embed(x, present)  # only the visible tubelets go through the embedding
        return Laid(_add_positions(stem, tokens, grid, x.device, present), present, None, grid)

    def counts(self, batch: int, n: int, n_masked: int, windows: tuple[int, int] | None = None
               ) -> tuple[int, int, int]:
        return batch * (n - n_masked), batch, n - n_masked


class Dense(TokenLayout):
    """Every token goes in; a masked one carries the mask token (where: the subclass's ``mask_in``)."""

    dense = True

    def fill_pixels(self, stem: nn.Module, x: torch.Tensor, mask: torch.Tensor, grid: Grid) -> torch.Tensor:
        """The input with masked tubelets filled in before the embedding (default: unchanged)."""
        return x

    def fill_tokens(self, stem: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embedded tokens with masked ones filled in (default: unchanged)."""
        return tokens

    def embed(self, stem: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
              windows: torch.Tensor | None = None) -> Laid:
        grid = stem.grid(x.shape)
        if mask is not None:
            x = self.fill_pixels(stem, x, mask, grid)
        tokens = stem.patch_embed(x)
        if mask is not None:
            tokens = self.fill_tokens(stem, tokens, mask)
        return Laid(_add_positions(stem, tokens, grid, x.device), None, None, grid)

    def counts(self, batch: int, n: int, n_masked: int, windows: tuple[int, int] | None = None
               ) -> tuple[int, int, int]:
        return batch * n, batch, n


@token_layout
class DenseTokens(Dense):
    """SimMIM / MaskFeat: a learned (D,) token replaces each masked token after the patch embedding."""

    name, mask_in = "dense_tokens", "tokens"

    def mask_token_shape(self, embed_dim: int, in_chans: int) -> tuple[int, ...]:
        return 1, 1, embed_dim

    def fill_tokens(self, stem: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.unsqueeze(-1), stem.mask_token.to(tokens.dtype), tokens)


@token_layout
class DensePixels(Dense):
    """FastMIM: a learned (C,) colour replaces the pixels of each masked tubelet before the patch embedding."""

    name, mask_in = "dense_pixels", "pixels"

    def mask_token_shape(self, embed_dim: int, in_chans: int) -> tuple[int, ...]:
        return 1, in_chans, 1, 1, 1

    def fill_pixels(self, stem: nn.Module, x: torch.Tensor, mask: torch.Tensor, grid: Grid) -> torch.Tensor:
        return torch.where(pixel_mask(mask, x.shape, grid, stem.patch_size), stem.mask_token.to(x.dtype), x)


def pixel_mask(mask: torch.Tensor, shape: torch.Size, grid: Grid, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """(B, N) token mask -> (B, 1, T, H, W) over the pixels of the masked tubelets (an image's one frame stands for
    its whole tubelet)."""
    t, p, _ = patch_size
    m = mask.view(mask.shape[0], 1, *grid)
    return m.repeat_interleave(min(t, shape[2]), 2).repeat_interleave(p, 3).repeat_interleave(p, 4)


@token_layout
class Windows(DenseTokens):
    """LoMaR: the tokens of K local windows (``windows`` (B, K, wt, wh, ww) grid indices), each window its own
    sequence of w tokens with the mask token on its masked ones (``mask`` (B, K * w) over the window tokens);
    positions from the grid's table, relative positions on the window's grid."""

    name, windowed = "windows", True

    def embed(self, stem: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
              windows: torch.Tensor | None = None) -> Laid:
        grid = stem.grid(x.shape)
        b, k = windows.shape[:2]
        index = windows.flatten(1)  # (B, K*w), window-major
        tokens = stem.patch_embed(x, index)
        tokens = self.fill_tokens(stem, tokens, mask)
        if stem.pos_embed.kind != "none":
            tokens = tokens + stem.pos_embed(grid, x.device).to(tokens.dtype).reshape(-1, stem.embed_dim)[index]
        return Laid(tokens.reshape(b * k, -1, stem.embed_dim), None, index, tuple(windows.shape[2:]))

    def counts(self, batch: int, n: int, n_masked: int, windows: tuple[int, int] | None = None
               ) -> tuple[int, int, int]:
        k, w = windows
        return batch * k * w, batch * k, w


# ----------------------------------------------------------------------------------------------------
# Decoder side
# ----------------------------------------------------------------------------------------------------


def gather_rows(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of an (N, D) table at the True entries of bool (B, N) positions -> (B, M, D)."""
    b, n = positions.shape
    return table.expand(b, n, table.shape[-1])[positions].reshape(b, -1, table.shape[-1])


class DecoderKept:
    """A decoder behind a visible-only encoder: the encoder tokens at their positions, then one mask token per
    position the decoder builds (its query: MAE's masked positions, VideoMAE V2's decoder-kept ones)."""

    def assemble(self, x: torch.Tensor, pos: torch.Tensor, present: torch.Tensor | None, query: torch.Tensor,
                 mask_token: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Embedded encoder tokens (B, N_present, d), the (N, d) position table, the encoder's ``present`` and the bool
        (B, N) query -> (the (B, N_present + M, d) sequence, M): the query rows are the last M."""
        x = x + (pos if present is None else gather_rows(pos, present))
        queries = mask_token.to(x.dtype) + gather_rows(pos, query)
        return torch.cat([x, queries], dim=1), queries.shape[1]


class DecoderInPlace:
    """A decoder behind a dense (or windowed) encoder: every position already holds a token, which takes the position
    of the grid cell it stands for; the head reads the query positions after the blocks."""

    def assemble(self, x: torch.Tensor, pos: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        """(B, L, d) tokens plus their positions: the (N, d) table, or its rows at the windows' ``index``."""
        return x + (pos if index is None else pos[index])

    @staticmethod
    def read(x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, M, d) at the True entries of the (B, L) query."""
        return x[query].reshape(x.shape[0], -1, x.shape[-1])


__all__ = ["DecoderInPlace", "DecoderKept", "Dense", "DensePixels", "DenseTokens", "Laid", "TOKEN_LAYOUTS",
           "TokenLayout", "VisibleOnly", "Windows", "gather_rows", "mask_ins", "pixel_mask", "select_layout",
           "token_layout"]
