"""Prediction heads: encoder tokens -> one target vector per predicted position.

A head is called as ``head(encoded, query)`` with an :class:`~vmim.models.base.EncoderOutput` and a bool ``(B, N)``
``query`` (the positions to predict, the same count M per sample) and returns ``(B, M, out_dim)`` in the
row-major order of the query positions. Which positions are queried is the method's business (its token sets),
so one head serves MAE (the masked tokens), MR-MAE (the visible ones) and VideoMAE V2 (the decoder-kept ones).

Registry: :data:`HEADS` maps a config ``kind`` (``vmim.config.HEADS``) to a builder
``(cfg, in_dim, out_dim, pos_embed, dense) -> nn.Module``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..config.registry import LazyRegistry

from .base import EncoderOutput
from .flops import block_macs, linear_macs
from .layers import Block, init_weights
from .layouts import DecoderInPlace, DecoderKept
from .pos_embed import FIXED_TABLES


class DecoderHead(nn.Module):
    """MAE / VideoMAE decoder that builds only what it is asked for.

    The encoder tokens are projected to ``dim`` and take the fixed position table at their positions; a learned
    mask token plus the table's row is appended for every query position; ``depth`` blocks run over this
    ``N_present + M`` sequence (the last block for the M query rows only: nothing reads the others), and a
    LayerNorm and a linear layer map the last M tokens to the target. With the masked positions as the query this
    is MAE's decoder (the visible tokens and one mask token per masked position, in another order, which attention
    does not see); with VideoMAE V2's decoder-kept positions it builds only those (160 + 784 tokens instead of 1568
    for ViT-B at 16x224², 90% + 50%).

    ``dense=True`` (built so behind a dense encoder, whose masked positions already carry its mask token: SimMIM,
    FastMIM, MaskFeat, MViT): nothing is appended and the head has no mask token of its own (a parameter without
    gradient would stop DDP); the blocks run over the N encoder tokens and the head reads the query positions
    (FastMIM's one-block decoder).

    The two regimes are the decoder-side token layouts of :mod:`vmim.models.layouts`: :class:`DecoderKept` and
    :class:`DecoderInPlace` (a plain attribute, ``layout``: no parameters, no state-dict keys).
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 4, dim: int = 384, heads: int = 6,
                 mlp_ratio: float = 4.0, pos_embed: str = "sincos_3d", dense: bool = False):
        super().__init__()
        self.dim, self.dense = dim, dense
        self.layout = DecoderInPlace() if dense else DecoderKept()
        self.pos_table = FIXED_TABLES[pos_embed if pos_embed in FIXED_TABLES else "sincos_3d"]
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = None if dense else nn.Parameter(torch.zeros(1, 1, dim))  # dense: the encoder's serves
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        self.apply(init_weights)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return set() if self.dense else {"mask_token"}

    def forward(self, encoded: EncoderOutput, query: torch.Tensor) -> torch.Tensor:
        """encoded tokens (B, N_present, in_dim), query (B, N) bool -> (B, M, out_dim)."""
        x = self.embed(encoded.tokens)
        pos = self.pos_table(encoded.grid, self.dim, x.device).to(x.dtype)
        if self.dense:  # a windowed encoder's tokens (LoMaR) take the positions of the grid cells they stand for
            return self._decode_in_place(x, pos, encoded.index, query)
        x, m = self.layout.assemble(x, pos, encoded.present, query, self.mask_token)
        for block in self.blocks[:-1]:
            x = block(x)
        if len(self.blocks):  # the last block computes only the query rows: no loss reads the others
            x = self.blocks[-1](x, queries=m)
        return self.head(self.norm(x[:, -m:]))

    def _decode_in_place(self, x: torch.Tensor, pos: torch.Tensor, index: torch.Tensor | None, query: torch.Tensor
                         ) -> torch.Tensor:
        """A dense encoder's (B, N, dim) embedded tokens, the (N, dim) position table and the windows' ``index`` (or
        None): the blocks over them, the head at the query."""
        if x.shape[1] != query.shape[1]:
            raise ValueError(f"a dense decoder needs a token at every position: got {x.shape[1]} of {query.shape[1]}")
        x = self.layout.assemble(x, pos, index)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(self.layout.read(x, query)))

    def macs(self, batch: int, n_in: int, n_query: int) -> int:
        """Multiply-adds of one forward (:mod:`vmim.models.flops`): the embedding of the ``n_in`` encoder tokens, the
        blocks over ``n_in + n_query`` tokens (the last one for the query rows only), the output layer on the
        queries; a dense decoder runs its blocks over the ``n_in`` encoder tokens alone."""
        if self.dense:
            return (linear_macs(self.embed, batch * n_in) + sum(block_macs(blk, batch, n_in) for blk in self.blocks)
                    + linear_macs(self.head, batch * n_query))
        length, depth = n_in + n_query, len(self.blocks)
        return (linear_macs(self.embed, batch * n_in) + linear_macs(self.head, batch * n_query)
                + sum(block_macs(blk, batch, length, n_query if i == depth - 1 else None)
                      for i, blk in enumerate(self.blocks)))


class LinearHead(nn.Module):
    """A linear layer on the encoder's own tokens at the query positions (MaskFeat on a dense backbone, MR-MAE's
    mimic head on visible tokens): no mask tokens, no scatter."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.apply(init_weights)

    def forward(self, encoded: EncoderOutput, query: torch.Tensor) -> torch.Tensor:
        """-> (B, M, out_dim); ValueError if a query position holds no encoder token."""
        return self.proj(encoded.at(query))

    def macs(self, batch: int, n_in: int, n_query: int) -> int:
        """Multiply-adds of one forward: the linear layer on the ``n_query`` queried tokens."""
        return linear_macs(self.proj, batch * n_query)


def _decoder(cfg: Any, in_dim: int, out_dim: int, pos_embed: str, dense: bool) -> nn.Module:
    return DecoderHead(in_dim, out_dim, cfg.depth, cfg.dim, cfg.heads, cfg.mlp_ratio, pos_embed, dense)


def _linear(cfg: Any, in_dim: int, out_dim: int, pos_embed: str, dense: bool) -> nn.Module:
    return LinearHead(in_dim, out_dim)


HEADS: Mapping[str, Callable[[Any, int, int, str, bool], nn.Module]] = LazyRegistry("heads")
"""Kind -> builder, from the registration table (``vmim/models/schemas.py``)."""


def build_head(cfg: Any, in_dim: int, out_dim: int, pos_embed: str = "sincos_3d", dense: bool = False) -> nn.Module:
    """A head from its config (a dataclass of ``vmim.config.HEADS``); ``pos_embed`` is the backbone's kind (a
    decoder uses the same fixed table, sincos_3d for a learned one); ``dense``: the encoder keeps a token at every
    position."""
    if cfg.kind not in HEADS:
        raise KeyError(f"unknown head '{cfg.kind}'; registered: {', '.join(HEADS)}")
    return HEADS[cfg.kind](cfg, in_dim, out_dim, pos_embed, dense)
