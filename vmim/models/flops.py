"""Multiply-adds of a forward pass (the papers' "GFLOPs"), and the model FLOPs of a training step.

Convention. SlowFast, MViTv2 and MaskFeat report fvcore counts, which count one fused multiply-add as one flop: they
are multiply-adds (MACs). ``torch.utils.flop_counter.FlopCounterMode`` counts two FLOPs per multiply-add (``2 m n k``
per matmul, convolutions and attention likewise), so :func:`count_macs` halves its total. Counted: linear / matmul /
conv / attention products (SDPA = q @ k^T + attn @ v, relative-position einsums, depthwise pooling convs); not
counted: norms, activations, softmax, max pooling, interpolation (1-3 % below a count that includes LayerNorm).

Analytic counts. Each backbone and head reports its MACs for an input through a registry keyed by module class
(:func:`macs_for` registers, :func:`module_macs` looks up along the class's MRO). The formulas read the layer shapes
from the module itself (widths, MLP hidden sizes, pooling kernels and strides), so they follow a module's
configuration without a table of sizes, and they cost microseconds (no tensors): the trainer evaluates them every
step. The arguments, per kind:

* backbone ``(m, shape, n_masked=0)``: ``shape`` = the input ``(B, C, T, H, W)``; ``n_masked`` = masked tokens per
  sample, which a visible-only ViT does not encode (dense backbones ignore it); a ViT also takes ``windows=(K, w)``
  (LoMaR's local windows);
* head ``(m, batch, n_in, n_query)``: ``n_in`` encoder tokens per sample in, ``n_query`` predicted positions out;
* classifier ``(m, shape)``: the backbone's pooled features and the linear layer.

The MViT count is analytic too (stem, q/k/v pooling convs with the one-frame kernel slice of
:func:`~vmim.models.mvit.conv3d_frames`, decomposed relative positions, pooled attention, the shortcut projection):
it equals FlopCounterMode's count on the meta device, which the tests check, so a change in mvit.py that the formula
misses fails there. A module without an analytic count (a timm teacher) is counted by :func:`fake_macs`: the real
forward under ``FakeTensorMode`` (no memory, no compute; about 0.5 s for a ViT-B), cached per input shape.

Training step. :func:`step_flops` = 2 FLOPs/MAC x (3 x the forward MACs of the trained parts + 1 x those of the frozen
ones): backward costs about twice the forward (a gradient for the input and one for the weights of every matmul), and
frozen teachers and momentum encoders run forward only, without grad. These are *model* FLOPs (PaLM's MFU): the
recomputation of gradient checkpointing is not counted, and neither is the first layer's unneeded input gradient.
Top-level models register their split with :func:`step_macs_for` (``(model, batch) -> (trained, frozen)``); the
classifier is registered here, the pretraining method in :mod:`vmim.engine.throughput` (this module sits below
targets and meta_arch in the import order).

Run :func:`count_macs` on the ``meta`` device to count a large model without computing it::

    with torch.device("meta"):
        model, x = create_backbone(cfg).eval(), torch.empty(1, 3, 16, 224, 224)
    gmacs = count_macs(model.forward_features, x) / 1e9
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .classifier import Classifier
from .heads import DecoderHead, LinearHead
from .layers import Block
from .mvit import MViT
from .vit import VisionTransformer

TRAIN_FACTOR = 3
"""Forward + backward of a trained part, in forwards (backward ~ 2 x forward)."""

MacsFn = Callable[..., int]
StepFn = Callable[[nn.Module, Mapping[str, Any]], tuple[int, int]]
_MACS: dict[type, MacsFn] = {}
_STEP: dict[type, StepFn] = {}


class NoCount(LookupError):
    """No MAC count is registered for a module's class."""


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Multiply-adds of ``fn(*args, **kwargs)`` under ``torch.no_grad`` (FlopCounterMode total / 2)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)
    return counter.get_total_flops() // 2


_FAKE_CACHE: dict[tuple, int] = {}


def fake_macs(fn: Callable[..., Any], *shapes: Sequence[int], key: Any = None, device: torch.device | None = None,
              **kwargs: Any) -> int:
    """:func:`count_macs` of ``fn`` on float32 inputs of ``shapes`` (on ``device``: the parameters') under
    ``FakeTensorMode``: real parameters are read as fake tensors, nothing is allocated or computed. Cached under
    ``(key, shapes, kwargs)`` when ``key`` (e.g. the module's id) is given."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    cache_key = None if key is None else (key, tuple(tuple(s) for s in shapes), repr(sorted(kwargs.items())))
    if cache_key in _FAKE_CACHE:
        return _FAKE_CACHE[cache_key]
    with FakeTensorMode(allow_non_fake_inputs=True):
        args = [torch.empty(*s, device=device) for s in shapes]
        macs = count_macs(fn, *args, **kwargs)
    if cache_key is not None:
        _FAKE_CACHE[cache_key] = macs
    return macs


# ----------------------------------------------------------------------------------------------------
# Registries
# ----------------------------------------------------------------------------------------------------


def macs_for(cls: type) -> Callable[[MacsFn], MacsFn]:
    """Register ``fn(module, *args, **kwargs) -> MACs of one forward`` for ``cls`` and its subclasses."""
    def register(fn: MacsFn) -> MacsFn:
        _MACS[cls] = fn
        return fn
    return register


def step_macs_for(cls: type) -> Callable[[StepFn], StepFn]:
    """Register ``fn(model, batch) -> (trained MACs, frozen MACs)`` of one micro-batch's forward for ``cls``."""
    def register(fn: StepFn) -> StepFn:
        _STEP[cls] = fn
        return fn
    return register


def _lookup(table: dict[type, Callable], module: nn.Module, what: str) -> Callable:
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    hint = " (the pretraining method's is registered by importing vmim.engine.throughput)" if what == "step" else ""
    raise NoCount(f"no {what} MAC count registered for {type(module).__name__}{hint}")


def module_macs(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """Analytic multiply-adds of one forward of ``module`` (arguments per kind in the module docstring).

    Raises:
        NoCount: nothing registered for the module's class.
    """
    return int(_lookup(_MACS, module, "forward")(module, *args, **kwargs))


def step_macs(model: nn.Module, batch: Mapping[str, Any]) -> tuple[int, int]:
    """(trained, frozen) multiply-adds of one micro-batch's forward: ``batch`` is what the task forwards (``clip``
    ``(B, C, T, H, W)``, ``masks`` of bool ``(B, N)`` for pretraining); only shapes and row-0 mask counts are read."""
    trained, frozen = _lookup(_STEP, model, "step")(model, batch)
    return int(trained), int(frozen)


def step_flops(model: nn.Module, batch: Mapping[str, Any]) -> float:
    """Model FLOPs of one micro-batch's forward and backward: 2 x (3 x trained + frozen) MACs (module docstring)."""
    trained, frozen = step_macs(model, batch)
    return 2.0 * (TRAIN_FACTOR * trained + frozen)


# ----------------------------------------------------------------------------------------------------
# Transformer pieces
# ----------------------------------------------------------------------------------------------------


def _linear(layer: nn.Linear, rows: int) -> int:
    return rows * layer.in_features * layer.out_features


def _mlp(mlp: nn.Module, rows: int) -> int:
    return _linear(mlp.fc1, rows) + _linear(mlp.fc2, rows)


def block_macs(block: Block, batch: int, length: int, queries: int | None = None) -> int:
    """A pre-norm transformer block over ``(batch, length, D)``: qkv, q @ k^T and attn @ v, proj, MLP; with
    ``queries`` only that many rows query and go through proj and MLP (``Block(x, queries=m)``)."""
    width = block.attn.qkv.out_features // 3
    q = length if queries is None else queries
    return (_linear(block.attn.qkv, batch * length) + 2 * batch * q * length * width
            + _linear(block.attn.proj, batch * q) + _mlp(block.mlp, batch * q))


def _conv(conv: nn.Conv3d, out_voxels: int, kernel: Sequence[int] | None = None) -> int:
    """MACs of a Conv3d giving ``out_voxels`` outputs per channel (summed over the batch), as FlopCounterMode counts
    them: every output x C_out x C_in / groups x kernel volume (padding included)."""
    volume = math.prod(conv.kernel_size if kernel is None else kernel)
    return out_voxels * conv.out_channels * (conv.in_channels // conv.groups) * volume


# ----------------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------------


def encoded_tokens(backbone: nn.Module, shape: Sequence[int], n_masked: int = 0) -> int:
    """Tokens per sample the backbone returns for an input of ``shape``: its output grid, less the masked ones for a
    visible-only ViT (backbones without a ``dense`` flag are dense)."""
    n = math.prod(backbone.grid(tuple(shape)))
    return n - n_masked if getattr(backbone, "dense", True) is False else n


@macs_for(VisionTransformer)
def _vit(m: VisionTransformer, shape: Sequence[int], n_masked: int = 0, windows: Sequence[int] | None = None) -> int:
    """Patch embedding of the encoded tokens (visible-only: the visible ones; an image is repeated to the tubelet),
    then the blocks over the class token and the encoded tokens; with ``windows`` (K, w) (LoMaR), the blocks over
    B x K sequences of the class token and w window tokens."""
    b = shape[0]
    if windows is not None:
        k, w = windows
        return _conv(m.patch_embed.proj, b * k * w) + sum(block_macs(blk, b * k, m.num_prefix_tokens + w)
                                                           for blk in m.blocks)
    encoded = encoded_tokens(m, shape, n_masked)
    length = m.num_prefix_tokens + encoded
    return _conv(m.patch_embed.proj, b * encoded) + sum(block_macs(blk, b, length) for blk in m.blocks)


def _frame_kernel(conv: nn.Conv3d, frames: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kernel, padding) a conv runs with on ``frames`` frames: one frame with a centred temporal kernel runs its
    centre slice (:func:`vmim.models.mvit.conv3d_frames`)."""
    kt, pt = conv.kernel_size[0], conv.padding[0]
    if frames == 1 and kt != 1 and kt == 2 * pt + 1:
        return (1, *conv.kernel_size[1:]), (0, *conv.padding[1:])
    return tuple(conv.kernel_size), tuple(conv.padding)


def _conv_grid(conv: nn.Conv3d, thw: Sequence[int]) -> tuple[tuple[int, ...], int]:
    """(output grid, MACs per input sample and channel group) of ``conv`` on a ``thw`` grid."""
    kernel, padding = _frame_kernel(conv, thw[0])
    out = tuple((s + 2 * p - k) // st + 1 for s, k, st, p in zip(thw, kernel, conv.stride, padding))
    return out, _conv(conv, math.prod(out), kernel)


def _pool_attention(attn: nn.Module, b: int, thw: tuple[int, ...], prefix: int) -> tuple[int, tuple[int, ...]]:
    """MACs of a :class:`~vmim.models.mvit.PoolAttention` on grid ``thw`` and its pooled q grid."""
    heads, width = attn.num_heads, attn.dim_out
    head_dim = width // heads
    n_in = math.prod(thw)
    macs = _linear(attn.qkv, b * (prefix + n_in))
    grids = {}
    for name in ("q", "k", "v"):
        pool = getattr(attn, f"pool_{name}")
        if pool is None:
            grids[name] = thw
            continue
        grids[name], per = _conv_grid(pool, thw)
        macs += b * heads * per  # depthwise over (B * heads) maps of head_dim channels
    nq, nk = math.prod(grids["q"]), math.prod(grids["k"])
    if attn.rel_pos_spatial:
        macs += b * heads * nq * head_dim * (grids["k"][1] + grids["k"][2])
    if attn.rel_pos_temporal:
        macs += b * heads * nq * head_dim * grids["k"][0]
    macs += 2 * b * heads * (prefix + nq) * (prefix + nk) * head_dim
    return macs + _linear(attn.proj, b * (prefix + nq)), grids["q"]


@macs_for(MViT)
def _mvit(m: MViT, shape: Sequence[int], n_masked: int = 0) -> int:
    """Stem conv, then per block: pooling attention, the shortcut projection (on the block's input when the width
    grows in attention, after attention otherwise) and the MLP on the pooled tokens. Dense: ``n_masked`` is unused."""
    b, p = shape[0], m.num_prefix_tokens
    thw, macs = _conv_grid(m.patch_embed.proj, tuple(shape[-3:]))
    macs *= b
    for blk in m.blocks:
        rows_in = b * (p + math.prod(thw))
        attn, thw = _pool_attention(blk.attn, b, thw, p)
        rows_out = b * (p + math.prod(thw))
        macs += attn + _mlp(blk.mlp, rows_out)
        if blk.proj is not None:
            macs += _linear(blk.proj, rows_in if blk.dim_mul_in_att else rows_out)
    return macs


# ----------------------------------------------------------------------------------------------------
# Heads and the classifier
# ----------------------------------------------------------------------------------------------------


@macs_for(DecoderHead)
def _decoder(m: DecoderHead, batch: int, n_in: int, n_query: int) -> int:
    """Embedding of the encoder tokens, blocks over ``n_in + n_query`` tokens (the last one for the query rows only),
    the output layer on the queries; a dense decoder runs its blocks over the ``n_in`` encoder tokens alone."""
    if m.dense:
        return (_linear(m.embed, batch * n_in) + sum(block_macs(blk, batch, n_in) for blk in m.blocks)
                + _linear(m.head, batch * n_query))
    length, depth = n_in + n_query, len(m.blocks)
    return (_linear(m.embed, batch * n_in) + _linear(m.head, batch * n_query)
            + sum(block_macs(blk, batch, length, n_query if i == depth - 1 else None)
                  for i, blk in enumerate(m.blocks)))


@macs_for(LinearHead)
def _linear_head(m: LinearHead, batch: int, n_in: int, n_query: int) -> int:
    return _linear(m.proj, batch * n_query)


@macs_for(Classifier)
def _classifier(m: Classifier, shape: Sequence[int]) -> int:
    """Pooled backbone features of every token, then the linear layer."""
    return module_macs(m.backbone, shape) + _linear(m.head, shape[0])


@step_macs_for(Classifier)
def _classifier_step(m: Classifier, batch: Mapping[str, Any]) -> tuple[int, int]:
    return module_macs(m, tuple(batch["clip"].shape)), 0


__all__ = ["TRAIN_FACTOR", "NoCount", "block_macs", "count_macs", "encoded_tokens", "fake_macs", "macs_for",
           "module_macs", "step_flops", "step_macs", "step_macs_for"]
