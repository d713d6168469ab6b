"""Transformer building blocks shared by the backbones and the decoders.

Attention kernel (:func:`attention`): ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels) except
for bf16 on CPU, where the product is written out (``softmax(q k^T / sqrt(d) + bias) v``, softmax in bf16 with
fp32 accumulation inside the kernel, as flash kernels also feed bf16 probabilities to the second product). Measured
on one AVX512-BF16 core, forward + backward of a VideoMAE decoder's attention (6 heads x 1568 tokens x 64): the
CPU flash kernel 216 ms in fp32 but 326 ms in bf16, the written-out product 119 ms in bf16; at encoder size
(12 x 160 x 64) 20 ms vs 3.6 ms. The written-out form keeps the (B, h, N, N) probabilities for backward (30 MB per
decoder block above), which a CPU run affords.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn

from .rel_pos import RelativePositionBias


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention of (B, h, N, d) q and (B, h, M, d) k, v with an optional additive (B, h, N, M)
    logit bias -> (B, h, N, d), on the faster kernel for the device and dtype (module docstring)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias.to(logits.dtype)
        return logits.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


class Attention(nn.Module):
    """Multi-head self-attention (:func:`attention`)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, queries: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); with ``queries=m`` only the last m tokens query (keys and values from all N):
        (B, m, D). ``bias``: additive logits, (h, N, N) or (B, h, N, N); with ``queries`` its last m rows are used."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if queries is not None:
            q = q[:, :, n - queries:]
            bias = None if bias is None else bias[..., n - queries:, :]
        x = attention(q, k, v, None if bias is None else bias.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(b, -1, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(LS(Attn(LN(x)))), then x + DropPath(LS(MLP(LN(x)))).

    Args:
        layer_scale: initial value of timm's per-channel ``LayerScale`` on both branches (CaiT, BEiT, SimMIM); 0 = off.
        rel_pos_grid: give the block its own :class:`~vmim.models.rel_pos.RelativePositionBias` (``rel_pos``) for
            this token grid; the owner computes the bias and passes it to :meth:`forward` (it knows the grid).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, layer_scale: float = 0.0,
                 rel_pos_grid: tuple[int, int, int] | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale > 0 else nn.Identity()
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale > 0 else nn.Identity()
        if rel_pos_grid is not None:
            self.rel_pos = RelativePositionBias(num_heads, rel_pos_grid)

    def forward(self, x: torch.Tensor, queries: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, D) -> (B, N, D); with ``queries=m`` the outputs at the last m tokens only, (B, m, D): attention
        rows, projection and MLP of the other tokens are skipped (a last block whose other outputs nobody reads).
        ``bias``: additive attention logits over all N tokens, (h, N, N) or (B, h, N, N)."""
        kept = x if queries is None else x[:, x.shape[1] - queries:]
        x = kept + self.drop_path(self.ls1(self.attn(self.norm1(x), queries, bias)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def init_weights(module: nn.Module) -> None:
    """MAE initialization: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
