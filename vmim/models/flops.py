"""Multiply-adds of a forward pass, in the convention papers report as "GFLOPs".

SlowFast, MViTv2 and MaskFeat report fvcore counts, which count one fused multiply-add as one flop: they are
multiply-adds (MACs). ``torch.utils.flop_counter.FlopCounterMode`` counts two FLOPs per multiply-add (``2 m n k`` per
matmul, convolutions and attention likewise), so :func:`count_macs` halves its total. Counted: linear / matmul /
conv / attention products (including relative-position einsums); not counted: norms, activations, softmax, pooling
by max (1-3 % below a count that includes LayerNorm).

Run it on the ``meta`` device to count a large model without computing it::

    with torch.device("meta"):
        model, x = create_backbone(cfg).eval(), torch.empty(1, 3, 16, 224, 224)
    gmacs = count_macs(model.forward_features, x) / 1e9
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Multiply-adds of ``fn(*args, **kwargs)`` under ``torch.no_grad`` (FlopCounterMode total / 2)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)
    return counter.get_total_flops() // 2


__all__ = ["count_macs"]
