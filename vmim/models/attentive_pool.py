"""Attentive pooling (V-JEPA's frozen-evaluation pooler): learnable queries cross-attend over a backbone's tokens.

One block, as the reference's ``AttentivePooler`` with ``depth=1`` (facebookresearch/jepa
``src/models/attentive_pooler.py`` and ``CrossAttentionBlock`` in ``src/models/utils/modules.py``):
``q = q + proj(attn(W_q q, W_kv LN(x)))``, then ``q = q + MLP(LN(q))``; the output is the query token(s), averaged
when there are several. Decisions:

* the pre-norm of the attention sub-layer is on the tokens (keys and values), not on the query, as the reference: the
  query is a learned parameter whose scale is learned directly, and the tokens come from any backbone, normed or not
  (a ViT with ``fc_norm`` hands out un-normed tokens);
* no final norm after the block: the reference's linear classifier reads the query as it leaves the block;
* init as the reference: trunc-normal(0.02) for the query and every Linear, zero biases, and the two residual
  projections (attention output, second MLP layer) divided by sqrt(2).
"""

from __future__ import annotations

import math

import torch
from timm.layers import Mlp
from torch import nn

from .flops import linear_macs, mlp_macs
from .layers import attention


def default_heads(dim: int) -> int:
    """Heads of 64 channels when 64 divides ``dim`` (ViT-B: 12, ViT-L: 16), else one head."""
    return dim // 64 if dim % 64 == 0 else 1


class AttentivePool(nn.Module):
    """``(B, N, D)`` tokens -> ``(B, D)``: ``num_queries`` learned queries, one cross-attention + MLP block.

    Args:
        dim: D, the token width (the pool keeps it).
        num_heads: attention heads (must divide ``dim``); 0 = :func:`default_heads`.
        num_queries: learned query tokens; their outputs are averaged.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    reads_prefix = False
    """Attends over the grid tokens only (the reference pools patch tokens; a class token is not one of them)."""

    def __init__(self, dim: int, num_heads: int = 0, num_queries: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        num_heads = num_heads or default_heads(dim)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        if num_queries < 1:
            raise ValueError(f"num_queries={num_queries} must be >= 1")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.norm_kv = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        nn.init.trunc_normal_(self.query, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.proj.weight.div_(math.sqrt(2.0))
            self.mlp.fc2.weight.div_(math.sqrt(2.0))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, h, L, D / h)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def _qkv(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b, query = tokens.shape[0], self.query.to(tokens.dtype)
        q = self.q(query).expand(b, -1, -1)  # the queries are the same for every sample: projected once
        k, v = self.kv(self.norm_kv(tokens)).chunk(2, dim=-1)
        return query.expand(b, -1, -1), self._heads(q), self._heads(k), self._heads(v)

    def forward(self, tokens: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, D); ``prefix`` (the pooling call's common signature) is not read."""
        query, q, k, v = self._qkv(tokens)
        out = attention(q, k, v).transpose(1, 2).reshape(query.shape)
        x = query + self.proj(out)
        x = x + self.mlp(self.norm_mlp(x))
        return x.mean(dim=1)

    def macs(self, batch: int, n_tokens: int) -> int:
        """Multiply-adds of one forward over ``(batch, n_tokens, D)`` (:mod:`vmim.models.flops`): keys and values of
        every token, the queries' projection (once: they are parameters), then per sample and query q @ k^T and
        attn @ v, the output projection and the MLP."""
        queries = batch * self.query.shape[1]
        dim = self.q.in_features
        return (linear_macs(self.kv, batch * n_tokens) + linear_macs(self.q, self.query.shape[1])
                + 2 * queries * n_tokens * dim
                + linear_macs(self.proj, queries) + mlp_macs(self.mlp, queries))

    @torch.no_grad()
    def attention_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> the queries' attention over the tokens, (B, heads, num_queries, N), rows summing to 1."""
        _, q, k, _ = self._qkv(tokens)
        return ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
