"""Multiply-adds of a forward pass (the papers' "GFLOPs"), and the model FLOPs of a training step.

Convention. SlowFast, MViTv2 and MaskFeat report fvcore counts, which count one fused multiply-add as one flop: they
are multiply-adds (MACs). ``torch.utils.flop_counter.FlopCounterMode`` counts two FLOPs per multiply-add (``2 m n k``
per matmul, convolutions and attention likewise), so :func:`count_macs` halves its total. Counted: linear / matmul /
conv / attention products (SDPA = q @ k^T + attn @ v, relative-position einsums, depthwise pooling convs); not
counted: norms, activations, softmax, max pooling, interpolation (1-3 % below a count that includes LayerNorm).

The protocol: each component counts itself, in its own file. A module that knows its cost declares

* ``macs(self, *args, **kwargs) -> int``: the MACs of one forward, with arguments per kind:

  - backbone ``macs(shape, n_masked=0)``: ``shape`` = the input ``(B, C, T, H, W)``; ``n_masked`` = masked tokens
    per sample, which a visible-only ViT does not encode (dense backbones ignore it); a ViT also takes
    ``windows=(K, w)`` (LoMaR's local windows);
  - head ``macs(batch, n_in, n_query)``: ``n_in`` encoder tokens per sample in, ``n_query`` predicted positions out;
  - target ``macs(shape)``: its forward on a clean clip of ``shape`` (the :class:`~vmim.targets.base.Target` default
    is :func:`fake_macs`, the generic fallback, so a target without a formula is still counted);
  - classifier ``macs(shape)``: the backbone's pooled features and the linear layer;

* a top-level model (the task's) ``step_macs(self, batch) -> (trained, frozen)``: the MACs of one micro-batch's
  forward, split into the parts that train and those that run forward only (teachers, EMA encoders). ``batch`` is what
  the task forwards; only shapes and row-0 mask counts may be read, so the count can be cached per batch signature.

:func:`module_macs` and :func:`step_macs` are the only readers: the trainer (``vmim.engine.throughput``) asks the
task's model through them and knows nothing of what it is made of. Why methods and not a registry keyed by class, as
before: a registry had to sit where both the class and the counting code were importable, which put the pretraining
method's and the targets' formulas in the engine (the engine then imported targets and meta_arch, upward). A method
lives beside the forward it counts, so a change to the forward and to its count are one diff in one file.

The formulas read the layer shapes from the module itself (widths, MLP hidden sizes, pooling kernels and strides), so
they follow a module's configuration without a table of sizes, and they cost microseconds (no tensors): the trainer
evaluates them every step. Every analytic count equals FlopCounterMode's count (``tests/test_flops.py``), so a change
in a forward that its formula misses fails there. A module without an analytic count (a timm teacher) is counted by
:func:`fake_macs`: the real forward under ``FakeTensorMode`` (no memory, no compute; about 0.5 s for a ViT-B), cached
per input shape.

Training step. :func:`step_flops` = 2 FLOPs/MAC x (3 x the forward MACs of the trained parts + 1 x those of the frozen
ones): backward costs about twice the forward (a gradient for the input and one for the weights of every matmul), and
frozen teachers and momentum encoders run forward only, without grad. These are *model* FLOPs (PaLM's MFU): the
recomputation of gradient checkpointing is not counted, and neither is the first layer's unneeded input gradient.

Run :func:`count_macs` on the ``meta`` device to count a large model without computing it::

    with torch.device("meta"):
        model, x = create_backbone(cfg).eval(), torch.empty(1, 3, 16, 224, 224)
    gmacs = count_macs(model.forward_features, x) / 1e9
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from .layers import Block

TRAIN_FACTOR = 3
"""Forward + backward of a trained part, in forwards (backward ~ 2 x forward)."""


class NoCount(LookupError):
    """A module declares no MAC count (no ``macs`` / ``step_macs`` method)."""


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


def module_device(module: nn.Module) -> torch.device | None:
    """Where a module's tensors live (its first parameter or buffer; None: it holds none)."""
    return next((t.device for t in itertools.chain(module.parameters(), module.buffers())), None)


# ----------------------------------------------------------------------------------------------------
# The protocol's readers
# ----------------------------------------------------------------------------------------------------


def _declared(module: nn.Module, name: str) -> Callable[..., Any]:
    fn = getattr(module, name, None)
    if callable(fn):
        return fn
    raise NoCount(f"{type(module).__name__} declares no MAC count (a {name}() method, vmim.models.flops)")


def module_macs(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """Multiply-adds of one forward of ``module``: its ``macs(*args, **kwargs)`` (arguments per kind in the module
    docstring).

    Raises:
        NoCount: the module declares none.
    """
    return int(_declared(module, "macs")(*args, **kwargs))


def step_macs(model: nn.Module, batch: Mapping[str, Any]) -> tuple[int, int]:
    """(trained, frozen) multiply-adds of one micro-batch's forward: the model's ``step_macs(batch)`` (``clip``
    ``(B, C, T, H, W)``, ``masks`` a :class:`~vmim.masking.masks.Masks` for pretraining); only shapes and row-0
    mask counts are read.

    Raises:
        NoCount: the model declares none.
    """
    trained, frozen = _declared(model, "step_macs")(batch)
    return int(trained), int(frozen)


def step_flops(model: nn.Module, batch: Mapping[str, Any]) -> float:
    """Model FLOPs of one micro-batch's forward and backward: 2 x (3 x trained + frozen) MACs (module docstring)."""
    trained, frozen = step_macs(model, batch)
    return 2.0 * (TRAIN_FACTOR * trained + frozen)


# ----------------------------------------------------------------------------------------------------
# Pieces the components' formulas are made of
# ----------------------------------------------------------------------------------------------------


def linear_macs(layer: nn.Linear, rows: int) -> int:
    """A linear layer on ``rows`` rows."""
    return rows * layer.in_features * layer.out_features


def mlp_macs(mlp: nn.Module, rows: int) -> int:
    """A two-layer MLP (``fc1``, ``fc2``) on ``rows`` rows."""
    return linear_macs(mlp.fc1, rows) + linear_macs(mlp.fc2, rows)


def block_macs(block: "Block", batch: int, length: int, queries: int | None = None) -> int:
    """A pre-norm transformer block over ``(batch, length, D)``: qkv, q @ k^T and attn @ v, proj, MLP; with
    ``queries`` only that many rows query and go through proj and MLP (``Block(x, queries=m)``)."""
    width = block.attn.qkv.out_features // 3
    q = length if queries is None else queries
    return (linear_macs(block.attn.qkv, batch * length) + 2 * batch * q * length * width
            + linear_macs(block.attn.proj, batch * q) + mlp_macs(block.mlp, batch * q))


def conv_macs(conv: nn.Conv3d, out_voxels: int, kernel: Sequence[int] | None = None) -> int:
    """MACs of a convolution giving ``out_voxels`` outputs per channel (summed over the batch), as FlopCounterMode
    counts them: every output x C_out x C_in / groups x kernel volume (padding included)."""
    volume = math.prod(conv.kernel_size if kernel is None else kernel)
    return out_voxels * conv.out_channels * (conv.in_channels // conv.groups) * volume


def encoded_tokens(backbone: nn.Module, shape: Sequence[int], n_masked: int = 0) -> int:
    """Tokens per sample the backbone returns for an input of ``shape``: its output grid, less the masked ones for a
    visible-only ViT (backbones without a ``dense`` flag are dense)."""
    n = math.prod(backbone.grid(tuple(shape)))
    return n - n_masked if getattr(backbone, "dense", True) is False else n


__all__ = ["TRAIN_FACTOR", "NoCount", "block_macs", "conv_macs", "count_macs", "encoded_tokens", "fake_macs",
           "linear_macs", "mlp_macs", "module_device", "module_macs", "step_flops", "step_macs"]
