"""MViTv2 (Li et al. 2022) for clips and images, after SlowFast's video MViT and its MaskFeat variant.

Decisions:

* One 3-D model. An image is a one-frame clip ``(B, C, 1, H, W)`` through the same weights: the stem is a Conv3d with
  kernel (3, 7, 7), stride (2, 4, 4), padding (1, 3, 3), so on T = 1 only the centre temporal slice of the kernel
  touches the frame (the two outer slices see zero padding) and the stem grid has one frame; the (3, 3, 3) pooling
  convs likewise use only their centre temporal slice, so on T = 1 they run as (1, k, k) convs of that slice
  (:func:`conv3d_frames`: exact, and an image costs what a 2-D MViT's does). Temporal relative positions are
  a single (t = 0) entry on one frame: the same learned offset for every pair, a per-row constant that softmax
  ignores, so they have no effect on images. 2-D weights therefore embed exactly as the centre slice with
  zeros elsewhere (:func:`from_timm_mvitv2`).
* Pooling attention as SlowFast (``MODE conv``, ``POOL_FIRST False``): depthwise Conv3d pooling of q, k and v (one
  kernel per head channel, shared across heads), each followed by a LayerNorm over the head dim; q stride at the
  stage transitions, KV stride adaptive (divided by every q stride met). Residual pooling adds the pooled q to the
  attention output (not for the cls token). Max-pool skip (kernel stride + 1) at q-pool blocks.
* Decomposed relative positions in h, w and t added to the logits (SlowFast ``cal_rel_pos_spatial`` /
  ``cal_rel_pos_temporal``); tables are linearly interpolated when the input size differs from the configured one,
  as SlowFast's ``get_rel_pos`` (timm does not interpolate). The logit bias goes to
  :func:`~vmim.models.layers.attention` (``F.scaled_dot_product_attention`` with a float mask; written out for
  bf16 on CPU, where it is faster).
* ``dim_mul_in_att`` True (supervised MViTv2): channels double in the q-pool block's attention; False (MaskFeat):
  in the previous block's MLP. The shortcut projection reads the normalized input in both cases (as SlowFast).
* Masking is dense (MaskMViT): masked stem tokens become a learned ``mask_token`` after the patch embedding, before
  the absolute positions and the cls token; every token goes through every block.
* Init as SlowFast ``MViT._init_weights``: trunc_normal(0.02) Linear/Conv weights, Linear and LayerNorm biases 0.02.
* Blocks are flat (``blocks.{i}``, SlowFast names: ``attn.pool_q``, ``attn.rel_pos_t``, ``proj`` for the shortcut
  projection); timm nests them in ``stages.{s}.blocks.{b}`` and names the projection ``shortcut_proj_attn/_mlp``.

SlowFast vs timm: timm is 2-D only (Conv2d stem and pools, no temporal table), fixes the input size (no table
interpolation), uses a stage-wise drop-path ramp and zero biases at init, and groups layer decay by stage.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import attention
from .base import EncoderOutput
from .flops import conv_macs, linear_macs, mlp_macs
from .grid import token_grid
from .schemas import MVIT_SIZES, MViTSize, Triple  # noqa: F401  (MViTSize: re-exported)



def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _get_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) table -> (length, C), linearly interpolated when L differs (SlowFast ``get_rel_pos``)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()


def _rel_index(q: int, k: int, device: torch.device) -> torch.Tensor:
    """(q, k) long indices into a table of length 2 max(q, k) - 1, rescaled when q != k (as SlowFast)."""
    q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
    dist = (torch.arange(q, device=device)[:, None] * q_ratio - torch.arange(k, device=device)[None, :] * k_ratio)
    return (dist + (k - 1) * k_ratio).long()


def conv3d_frames(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for x (B, C, T, H, W). On one frame (T = 1) with a centred temporal kernel (k = 2 p + 1) only the
    centre slice meets the frame, the rest sees zero padding: the same result from a (1, kh, kw) conv, k times
    cheaper (images through the 3-D stem and pooling convs)."""
    kt, pt = conv.kernel_size[0], conv.padding[0]
    if x.shape[2] != 1 or kt == 1 or kt != 2 * pt + 1:
        return conv(x)
    return F.conv3d(x, conv.weight[:, :, pt:pt + 1], conv.bias, conv.stride, (0, *conv.padding[1:]), conv.dilation,
                    conv.groups)


def conv3d_frames_macs(conv: nn.Conv3d, thw: Triple) -> tuple[Triple, int]:
    """(output grid, MACs per input sample and channel group) of :func:`conv3d_frames` on a ``thw`` grid: one frame
    with a centred temporal kernel runs the centre slice only."""
    kernel, padding = tuple(conv.kernel_size), tuple(conv.padding)
    if thw[0] == 1 and kernel[0] != 1 and kernel[0] == 2 * padding[0] + 1:
        kernel, padding = (1, *kernel[1:]), (0, *padding[1:])
    out = tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(thw, kernel, conv.stride, padding))
    return out, conv_macs(conv, math.prod(out), kernel)


def _pool(x: torch.Tensor, pool: nn.Module | None, thw: Triple, prefix: int,
          norm: nn.Module | None = None) -> tuple[torch.Tensor, Triple]:
    """Pool the grid tokens of (B, [heads,] prefix + N, C) on the (T, H, W) grid; prefix tokens pass through.
    Returns (pooled tensor, new grid); ``norm`` applies to every token after pooling."""
    if pool is None:
        return x, thw
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(1)
    cls, x = x[:, :, :prefix], x[:, :, prefix:]
    b, h, _, c = x.shape
    x = x.reshape(b * h, *thw, c).permute(0, 4, 1, 2, 3)
    x = conv3d_frames(pool, x) if isinstance(pool, nn.Conv3d) else pool(x)
    thw = tuple(x.shape[2:])
    x = torch.cat([cls, x.reshape(b, h, c, -1).transpose(2, 3)], dim=2)
    if norm is not None:
        x = norm(x)
    return (x.squeeze(1) if squeeze else x), thw


class PoolAttention(nn.Module):
    """Multi-head pooling attention with decomposed relative positions and residual pooling.

    Args:
        dim, dim_out: input and output widths (qkv maps dim -> 3 dim_out).
        grid: the configured input grid (T, H, W) of this block (sizes the relative-position tables).
        kernel: pooling kernel for q, k and v; stride_q, stride_kv: their strides.
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, grid: Triple, kernel: Triple, stride_q: Triple,
                 stride_kv: Triple, prefix: int, qkv_bias: bool = True, rel_pos_spatial: bool = True,
                 rel_pos_temporal: bool = True, residual_pooling: bool = True):
        super().__init__()
        self.num_heads, self.dim_out, self.prefix = num_heads, dim_out, prefix
        head_dim = dim_out // num_heads
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        padding = tuple(k // 2 for k in kernel)
        for name, stride in (("q", stride_q), ("k", stride_kv), ("v", stride_kv)):
            skip = math.prod(kernel) == 1 and math.prod(stride) == 1
            pool = None if skip else nn.Conv3d(head_dim, head_dim, kernel, stride, padding, groups=head_dim,
                                               bias=False)
            setattr(self, f"pool_{name}", pool)
            setattr(self, f"norm_{name}", None if skip else nn.LayerNorm(head_dim, eps=1e-6))
        self.rel_pos_spatial, self.rel_pos_temporal = rel_pos_spatial, rel_pos_temporal
        if rel_pos_spatial:
            if grid[1] != grid[2]:
                raise ValueError(f"spatial relative positions need a square grid, got {grid}")
            size = max(grid[1] // stride_q[1], grid[1] // stride_kv[1])
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, head_dim))
        if rel_pos_temporal:
            self.rel_pos_t = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.residual_pooling = residual_pooling

    def _rel_bias(self, q: torch.Tensor, q_thw: Triple, k_thw: Triple) -> torch.Tensor:
        """(B, heads, Nq, Nk) logit bias of the grid tokens from the pooled, unscaled q (B, heads, Nq, C)."""
        b, h, _, c = q.shape
        r_q = q.reshape(b, h, *q_thw, c)
        bias = q.new_zeros(b, h, *q_thw, *k_thw)
        if self.rel_pos_spatial:
            for axis, table in ((1, self.rel_pos_h), (2, self.rel_pos_w)):
                qs, ks = q_thw[axis], k_thw[axis]
                rel = _get_rel_pos(table, 2 * max(qs, ks) - 1)[_rel_index(qs, ks, q.device)].to(q.dtype)
                eq = "bythwc,hkc->bythwk" if axis == 1 else "bythwc,wkc->bythwk"
                term = torch.einsum(eq, r_q, rel)  # (B, heads, qt, qh, qw, k_axis)
                shape = [b, h, *q_thw, 1, 1, 1]
                shape[5 + axis] = ks
                bias = bias + term.reshape(shape)
        if self.rel_pos_temporal:
            qt, kt = q_thw[0], k_thw[0]
            rel = _get_rel_pos(self.rel_pos_t, 2 * max(qt, kt) - 1)[_rel_index(qt, kt, q.device)].to(q.dtype)
            term = torch.einsum("bythwc,tkc->bythwk", r_q, rel)
            bias = bias + term.reshape(b, h, *q_thw, kt, 1, 1)
        bias = bias.reshape(b, h, math.prod(q_thw), math.prod(k_thw))
        if self.prefix:
            bias = F.pad(bias, (self.prefix, 0, self.prefix, 0))
        return bias

    def forward(self, x: torch.Tensor, thw: Triple) -> tuple[torch.Tensor, Triple]:
        """(B, prefix + T*H*W, dim) on grid thw -> ((B, prefix + N_q, dim_out), pooled grid)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, q_thw = _pool(q, self.pool_q, thw, self.prefix, self.norm_q)
        k, k_thw = _pool(k, self.pool_k, thw, self.prefix, self.norm_k)
        v, _ = _pool(v, self.pool_v, thw, self.prefix, self.norm_v)
        bias = None
        if self.rel_pos_spatial or self.rel_pos_temporal:
            bias = self._rel_bias(q[:, :, self.prefix:], q_thw, k_thw)
        out = attention(q, k, v, bias)
        if self.residual_pooling:
            out = torch.cat([out[:, :, :self.prefix], out[:, :, self.prefix:] + q[:, :, self.prefix:]], dim=2)
        return self.proj(out.transpose(1, 2).reshape(b, -1, self.dim_out)), q_thw

    def macs(self, batch: int, thw: Triple) -> tuple[int, Triple]:
        """(multiply-adds of one forward on ``batch`` samples on grid ``thw``, the pooled q grid): qkv, the depthwise
        pooling convs over (B x heads) maps, the decomposed relative positions, pooled attention, proj."""
        heads, width, prefix = self.num_heads, self.dim_out, self.prefix
        head_dim = width // heads
        macs = linear_macs(self.qkv, batch * (prefix + math.prod(thw)))
        grids = {}
        for name in ("q", "k", "v"):
            pool = getattr(self, f"pool_{name}")
            if pool is None:
                grids[name] = thw
                continue
            grids[name], per = conv3d_frames_macs(pool, thw)
            macs += batch * heads * per
        nq, nk = math.prod(grids["q"]), math.prod(grids["k"])
        if self.rel_pos_spatial:
            macs += batch * heads * nq * head_dim * (grids["k"][1] + grids["k"][2])
        if self.rel_pos_temporal:
            macs += batch * heads * nq * head_dim * grids["k"][0]
        macs += 2 * batch * heads * (prefix + nq) * (prefix + nk) * head_dim
        return macs + linear_macs(self.proj, batch * (prefix + nq)), grids["q"]


class MultiScaleBlock(nn.Module):
    """Pre-norm MViTv2 block: pooling attention with a (max-pooled, maybe projected) shortcut, then an MLP."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, grid: Triple, kernel: Triple, stride_q: Triple,
                 stride_kv: Triple, prefix: int, mlp_ratio: float = 4.0, dim_mul_in_att: bool = True,
                 drop_path: float = 0.0, **attn_kwargs):
        super().__init__()
        self.dim_mul_in_att = dim_mul_in_att
        att_dim = dim_out if dim_mul_in_att else dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PoolAttention(dim, att_dim, num_heads, grid, kernel, stride_q, stride_kv, prefix, **attn_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(att_dim, eps=1e-6)
        self.mlp = Mlp(att_dim, int(att_dim * mlp_ratio), out_features=dim_out, act_layer=nn.GELU)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.pool_skip = None
        if math.prod(stride_q) > 1:
            kernel_skip = tuple(s + 1 if s > 1 else s for s in stride_q)
            self.pool_skip = nn.MaxPool3d(kernel_skip, stride_q, tuple(k // 2 for k in kernel_skip))
        self.prefix = prefix

    def forward(self, x: torch.Tensor, thw: Triple) -> tuple[torch.Tensor, Triple]:
        """(B, prefix + N, dim) -> ((B, prefix + N', dim_out), new grid)."""
        x_norm = self.norm1(x)
        x_attn, thw_new = self.attn(x_norm, thw)
        if self.dim_mul_in_att and self.proj is not None:
            x = self.proj(x_norm)
        x = _pool(x, self.pool_skip, thw, self.prefix)[0] + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if not self.dim_mul_in_att and self.proj is not None:
            x = self.proj(x_norm)
        return x + self.drop_path(x_mlp), thw_new


class MViT(nn.Module):
    """MViTv2 encoder over clips (images: T = 1); keeps the contract of :mod:`vmim.models.base` (dense masking).

    Args:
        depth, embed_dim, num_heads: size; width and heads double at each of ``stage_blocks`` (the first block of
            stages 2-4).
        stage_blocks: where stages begin.
        q_pool_blocks: blocks with q stride (1, 2, 2); None = every ``stage_blocks`` entry. MaskFeat pre-training
            drops the last (SlowFast ``POOL_Q_STRIDE [14, 1, 1, 1]`` for MViT-S): the last stage keeps its doubled
            width and heads and a stride-1 q pooling conv, KV stays strided, and the output grid is 2x finer (14x14
            at 16 px for 224 input). The weights have the fine-tuning layout's shapes except the last stage's
            ``rel_pos_h/w`` tables (27 instead of 13 rows), which :func:`vmim.models.loading.load_init` resamples.
        input_size: (T, H, W) pixels of the configured input; sizes the relative-position tables (other inputs
            interpolate them) and the absolute position table.
        kv_stride_adaptive: KV stride of block 0, divided by every q stride met.
        stem_kernel, stem_stride, stem_padding: the Conv3d patch embedding.
        pool_kernel: q/k/v pooling kernel.
        cls_token: prepend a class token (dropped from every output but ``global_pool="token"``).
        abs_pos: learned absolute positions over (prefix + stem tokens) of ``input_size``.
        dim_mul_in_att: double the width in the q-pool block's attention (else in the previous block's MLP).
        drop_path: rate of the last block (linear ramp from 0).
        grad_checkpointing: recompute each block's activations in backward.
        global_pool: ``avg`` (mean of the last-stage tokens, then the final norm: MaskFeat fine-tuning), ``norm_avg``
            (norm every token, then mean: timm / SlowFast image) or ``token`` (the normed class token).
    """

    dense = True
    """Pooling attention needs every token: masked ones are mask tokens (MaskMViT), never dropped."""
    decoder_pos_embed = "sincos_3d"
    """A decoder head over MViT's output grid uses the space-time sin-cos table."""

    @property
    def stem_overlap(self) -> int:
        """Pixels a stem token reads beyond its own stride cell (3 for the 7x7, stride-4, padding-3 stem: into the
        previous cell); in time the (3, 2, 1) stem reads one frame of the next cell (see ``tests/test_mvit.py``)."""
        k, st, pad = self.stem_kernel[1], self.stem_stride[1], self.stem_padding[1]
        return max(pad, k - st - pad)

    def __init__(self, depth: int, embed_dim: int, num_heads: int, stage_blocks: tuple[int, ...],
                 q_pool_blocks: tuple[int, ...] | None = None, input_size: Triple = (16, 224, 224),
                 kv_stride_adaptive: Triple = (1, 8, 8), in_chans: int = 3,
                 stem_kernel: Triple = (3, 7, 7), stem_stride: Triple = (2, 4, 4), stem_padding: Triple = (1, 3, 3),
                 pool_kernel: Triple = (3, 3, 3), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 cls_token: bool = False, abs_pos: bool = False, rel_pos_spatial: bool = True,
                 rel_pos_temporal: bool = True, residual_pooling: bool = True, dim_mul_in_att: bool = True,
                 drop_path: float = 0.0, grad_checkpointing: bool = False, global_pool: str = "avg",
                 video_grid: Triple | None = None):
        super().__init__()
        del video_grid  # the registry passes it; MViT sizes its tables from input_size
        if global_pool not in ("avg", "norm_avg", "token") or (global_pool == "token" and not cls_token):
            raise ValueError(f"global_pool must be avg, norm_avg, or token with cls_token=True; got {global_pool!r}")
        self.depth, self.global_pool, self.grad_checkpointing = depth, global_pool, grad_checkpointing
        self.num_prefix_tokens = int(cls_token)
        self.stem_kernel, self.stem_stride, self.stem_padding = stem_kernel, stem_stride, stem_padding
        self.pool_kernel = pool_kernel
        q_pool_blocks = tuple(stage_blocks if q_pool_blocks is None else q_pool_blocks)
        if not set(q_pool_blocks) <= set(stage_blocks):
            raise ValueError(f"q_pool_blocks {list(q_pool_blocks)} must be stage transitions {list(stage_blocks)}")
        self.stage_blocks, self.q_pool_blocks = tuple(stage_blocks), q_pool_blocks
        self.q_strides = [(1, 2, 2) if i in q_pool_blocks else (1, 1, 1) for i in range(depth)]
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(in_chans, embed_dim, stem_kernel, stem_stride, stem_padding)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        grid = self.stem_grid((1, in_chans, *input_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + math.prod(grid), embed_dim)) \
            if abs_pos else None
        dim, heads, kv_stride = embed_dim, num_heads, kv_stride_adaptive
        self.blocks = nn.ModuleList()
        self.dims = []
        for i in range(depth):
            sq = self.q_strides[i]
            if i in stage_blocks:
                heads *= 2
                kv_stride = tuple(max(s // q, 1) for s, q in zip(kv_stride, sq))
            grows = (i in stage_blocks) if dim_mul_in_att else (i + 1 in stage_blocks)
            dim_out = dim * 2 if grows else dim
            self.blocks.append(MultiScaleBlock(
                dim, dim_out, heads, grid, pool_kernel, sq, kv_stride, self.num_prefix_tokens, mlp_ratio,
                dim_mul_in_att, drop_path * i / max(1, depth - 1), qkv_bias=qkv_bias,
                rel_pos_spatial=rel_pos_spatial, rel_pos_temporal=rel_pos_temporal,
                residual_pooling=residual_pooling))
            grid = self._pooled(grid, sq)
            dim = dim_out
            self.dims.append(dim)
        self.embed_dim = dim
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("rel_pos_h", "rel_pos_w", "rel_pos_t")) or name in ("mask_token", "cls_token",
                                                                                  "pos_embed"):
                nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """SlowFast ``MViT._init_weights``: trunc_normal(0.02) weights, 0.02 biases for Linear and LayerNorm."""
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.constant_(m.bias, 0.02)

    def _pooled(self, thw: Triple, stride: Triple) -> Triple:
        if math.prod(stride) == 1:
            return tuple(thw)
        return tuple(_conv_out(s, k, st, k // 2) for s, k, st in zip(thw, self.pool_kernel, stride))

    def stem_grid(self, shape: torch.Size | tuple[int, ...]) -> Triple:
        """Stem token grid (T, H, W) for an input of shape (..., T, H, W)."""
        return tuple(_conv_out(int(s), k, st, p) for s, k, st, p in
                     zip(shape[-3:], self.stem_kernel, self.stem_stride, self.stem_padding))

    def grid(self, shape: torch.Size | tuple[int, ...]) -> Triple:
        """Output (last-stage) token grid for an input of shape (..., T, H, W), which must be a whole number of
        :attr:`patch_size` units (T = 1: an image), as for every backbone (:func:`vmim.models.grid.token_grid`)."""
        out = self._output_grid(self.stem_grid(shape))
        if out != token_grid(shape, self.patch_size):
            raise ValueError(f"input {tuple(shape[-3:])} is not a whole number of {self.patch_size} units")
        return out

    def _output_grid(self, thw: Triple) -> Triple:
        for stride in self.q_strides:
            thw = self._pooled(thw, stride)
        return thw

    def stem_mask(self, mask: torch.Tensor, stem: Triple) -> torch.Tensor:
        """A bool mask over the output grid (B, N_out) -- the contract's, what mask generators draw on ``grid`` --
        or over the stem grid (B, N_stem) -> (B, N_stem): each output token's mask unit covers the stem tokens it
        pools (nearest upsampling; MaskFeat's 2x32x32 units are 1x8x8 stem tokens of MViT-S)."""
        if mask.shape[1] == math.prod(stem):
            return mask
        out = self._output_grid(stem)
        if mask.shape[1] != math.prod(out):
            raise ValueError(f"mask of {mask.shape[1]} tokens fits neither the output grid {out} nor the stem grid "
                             f"{stem}")
        up = F.interpolate(mask.view(-1, 1, *out).float(), size=stem, mode="nearest")
        return up.flatten(1) > 0.5

    @property
    def patch_size(self) -> Triple:
        """Input pixels per output token: the stem stride times the product of the q strides."""
        return tuple(st * math.prod(q[d] for q in self.q_strides) for d, st in enumerate(self.stem_stride))

    def no_weight_decay(self) -> set[str]:
        """Position, class and mask tokens and relative-position tables."""
        return {n for n, _ in self.named_parameters()
                if n in ("mask_token", "cls_token", "pos_embed") or re.search(r"rel_pos_[hwt]$", n)}

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style groups: stem 0, block i -> i + 1, the final norm after the blocks."""
        return {"stem": r"^patch_embed|^pos_embed|^mask_token|^cls_token",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, Triple]:
        """(B, C, T, H, W), mask over the output or stem grid -> ((B, prefix + N_stem, D), stem grid); masked stem
        tokens become ``mask_token``."""
        tokens = conv3d_frames(self.patch_embed.proj, x)
        thw = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        if mask is not None:
            mask = self.stem_mask(mask, thw)
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        if self.pos_embed is not None:
            if self.pos_embed.shape[1] != tokens.shape[1]:
                raise ValueError(f"absolute positions cover {self.pos_embed.shape[1]} tokens, input has "
                                 f"{tokens.shape[1]}")
            tokens = tokens + self.pos_embed.to(tokens.dtype)
        return tokens, thw

    def _run_block(self, i: int, tokens: torch.Tensor, thw: Triple) -> tuple[torch.Tensor, Triple]:
        if self.grad_checkpointing and self.training:
            return checkpoint(self.blocks[i], tokens, thw, use_reentrant=False)
        return self.blocks[i](tokens, thw)

    def forward_intermediates(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                              indices: int | list[int] | None = None, norm: bool = False
                              ) -> tuple[EncoderOutput, list[torch.Tensor]]:
        """The final output and the outputs of chosen blocks.

        Args:
            x: (B, C, T, H, W); mask: bool (B, N_stem), True = masked, or None.
            indices: block indices (negative from the end), or an int n for the last n blocks; None = all.
            norm: apply the final norm to the chosen outputs of the width it was built for (the last stage's).
        Returns:
            (EncoderOutput, [(B, N_i, D_i) per chosen block in block order, without cls]).
        """
        if indices is None:
            wanted = set(range(self.depth))
        elif isinstance(indices, int):
            wanted = set(range(self.depth - indices, self.depth))
        else:
            wanted = {i % self.depth for i in indices}
        tokens, thw = self.embed(x, mask)
        outputs = []
        for i in range(self.depth):
            tokens, thw = self._run_block(i, tokens, thw)
            if i in wanted:
                out = tokens[:, self.num_prefix_tokens:]
                outputs.append(self.norm(out) if norm and self.dims[i] == self.embed_dim else out)
        return EncoderOutput(self.norm(tokens[:, self.num_prefix_tokens:]), None, thw), outputs

    def _trunk(self, x: torch.Tensor, mask: torch.Tensor | None, blocks: Sequence[int] = ()
               ) -> tuple[torch.Tensor, Triple, dict[int, torch.Tensor]]:
        wanted = {b % self.depth: b for b in blocks}
        tokens, thw = self.embed(x, mask)
        kept = {}
        for i in range(self.depth):
            tokens, thw = self._run_block(i, tokens, thw)
            if i in wanted:
                kept[wanted[i]] = tokens[:, self.num_prefix_tokens:]
        return tokens, thw, kept

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, blocks: Sequence[int] = ()
                ) -> EncoderOutput:
        """(B, C, T, H, W), optional bool (B, N_stem) mask -> EncoderOutput with normed last-stage tokens
        (B, T'*H'*W', D) (no cls), ``present=None``, grid (T', H', W'), and the outputs of ``blocks`` (each on its
        own stage's grid)."""
        tokens, thw, kept = self._trunk(x, mask, blocks)
        return EncoderOutput(self.norm(tokens[:, self.num_prefix_tokens:]), None, thw, kept)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, D) pooled as ``global_pool`` says."""
        tokens, _, _ = self._trunk(x, mask)
        if self.global_pool == "avg":
            return self.norm(tokens[:, self.num_prefix_tokens:].mean(dim=1))
        tokens = self.norm(tokens)
        return tokens[:, 0] if self.global_pool == "token" else tokens[:, self.num_prefix_tokens:].mean(dim=1)

    def macs(self, shape: Sequence[int], n_masked: int = 0) -> int:
        """Multiply-adds of one forward on an input of ``shape`` (:mod:`vmim.models.flops`): the stem conv, then per
        block pooling attention, the shortcut projection (on the block's input when the width grows in attention,
        after attention otherwise) and the MLP on the pooled tokens. Dense: ``n_masked`` is unused. Equal to
        FlopCounterMode's count on the meta device (tests/test_flops.py)."""
        b, p = shape[0], self.num_prefix_tokens
        thw, macs = conv3d_frames_macs(self.patch_embed.proj, tuple(shape[-3:]))
        macs *= b
        for blk in self.blocks:
            rows_in = b * (p + math.prod(thw))
            attn, thw = blk.attn.macs(b, thw)
            rows_out = b * (p + math.prod(thw))
            macs += attn + mlp_macs(blk.mlp, rows_out)
            if blk.proj is not None:
                macs += linear_macs(blk.proj, rows_in if blk.dim_mul_in_att else rows_out)
        return macs


def _mvit(size: str, **kwargs) -> MViT:
    s = MVIT_SIZES[size]
    cfg = dict(depth=s.depth, embed_dim=s.embed_dim, num_heads=s.num_heads, stage_blocks=s.stage_blocks,
               input_size=s.input_size, kv_stride_adaptive=s.kv_stride_adaptive, cls_token=s.cls_token,
               rel_pos_temporal=s.rel_pos_temporal, dim_mul_in_att=s.dim_mul_in_att)
    cfg.update({k: v for k, v in kwargs.items() if v is not None})  # None: the size's own (config defaults)
    return MViT(**cfg)


def mvitv2_test(**kwargs) -> MViT:
    """32 wide, 3 blocks, 4x64x64: for tests."""
    return _mvit("mvitv2_test", **kwargs)


def mvitv2_demo(**kwargs) -> MViT:
    """48 wide, 6 blocks, stages [1, 2, 3], 4x32x32: the built-in MaskFeat demo's (``make demo-maskfeat``)."""
    return _mvit("mvitv2_demo", **kwargs)


def mvitv2_s_16x4(**kwargs) -> MViT:
    """MViTv2-S, K400 16x4 @224 (34.5 M with a 400-class head)."""
    return _mvit("mvitv2_s_16x4", **kwargs)


def mvitv2_b_32x3(**kwargs) -> MViT:
    """MViTv2-B, K400 32x3 @224 (51.2 M with a 400-class head)."""
    return _mvit("mvitv2_b_32x3", **kwargs)


def mvitv2_l_40x3(**kwargs) -> MViT:
    """MViTv2-L, K400 40x3 @312 (213.4 M by the config; the README says 217.6 M)."""
    return _mvit("mvitv2_l_40x3", **kwargs)


def maskfeat_mvitv2_s_16x4(**kwargs) -> MViT:
    """MaskFeat MViT-S 16x4 (``dim_mul_in_att=False``; 36 M with a 400-class head)."""
    return _mvit("maskfeat_mvitv2_s_16x4", **kwargs)


def mvitv2_t(**kwargs) -> MViT:
    """MViTv2-T image model @224, 3-D kernels (24.2 M with a 1000-class head and 2-D kernels)."""
    return _mvit("mvitv2_t", **{"global_pool": "norm_avg", **{k: v for k, v in kwargs.items() if v is not None}})


def mvitv2_s(**kwargs) -> MViT:
    """MViTv2-S image model @224."""
    return _mvit("mvitv2_s", **{"global_pool": "norm_avg", **{k: v for k, v in kwargs.items() if v is not None}})


def mvitv2_b(**kwargs) -> MViT:
    """MViTv2-B image model @224."""
    return _mvit("mvitv2_b", **{"global_pool": "norm_avg", **{k: v for k, v in kwargs.items() if v is not None}})


def _to_3d(w: torch.Tensor, kt: int) -> torch.Tensor:
    """(..., kh, kw) 2-D kernel -> (..., kt, kh, kw) with the kernel in the centre temporal slice, zeros elsewhere."""
    out = w.new_zeros(*w.shape[:2], kt, *w.shape[2:])
    out[:, :, kt // 2] = w
    return out


def from_timm_mvitv2(state_dict: dict[str, torch.Tensor], stem_kt: int = 3, pool_kt: int = 3
                     ) -> dict[str, torch.Tensor]:
    """timm 2-D MViTv2 state dict -> this module's, for images (T = 1) through the 3-D model.

    Differences handled: ``stages.{s}.blocks.{b}`` -> flat ``blocks.{i}``; ``shortcut_proj_attn``/``_mlp`` ->
    ``proj``; Conv2d stem and pool kernels -> the centre temporal slice of (kt, k, k) kernels (zeros elsewhere, exact
    on one frame since the outer slices see only padding); the classifier ``head.*`` is dropped; ``mask_token`` is
    not in timm (keep the module's own). Relative-position tables map unchanged (timm has no ``rel_pos_t``: build
    with ``rel_pos_temporal=False``).
    """
    keys = {}
    for key in state_dict:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            keys.setdefault((int(m.group(1)), int(m.group(2))), None)
    index = {sb: i for i, sb in enumerate(sorted(keys))}
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            continue
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        if m:
            rest = re.sub(r"^shortcut_proj_(attn|mlp)\.", "proj.", m.group(3))
            key = f"blocks.{index[(int(m.group(1)), int(m.group(2)))]}.{rest}"
            if re.search(r"attn\.pool_[qkv]\.weight$", key):
                value = _to_3d(value, pool_kt)
        elif key == "patch_embed.proj.weight":
            value = _to_3d(value, stem_kt)
        out[key] = value
    return out
