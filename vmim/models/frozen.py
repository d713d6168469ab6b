"""A frozen module that its owner carries without owning: out of ``parameters()``, ``state_dict()`` and ``apply()``.

Teacher targets hold whole networks (a ViT-B teacher is 86M parameters) that must never train, never be saved with
the student and never be re-initialised by the student's ``apply(init_fn)``. Registering such a network as a
submodule would put it in all of these (the optimizer, DDP's gradient buckets and broadcast, parameter counts, an
EMA copy of the model, the checkpoint, ``vmim convert``). :class:`Frozen` therefore keeps the network outside
``_modules`` (a plain attribute) and forwards only what must reach it:

* ``_apply`` (``.to()``, ``.cuda()``, ``.float()``, ``.to_empty()``): device and dtype moves follow the owner, so
  ``method.to(device)`` moves the teacher too;
* ``train()``: ignored, the network stays in eval mode (no dropout, no stochastic depth, no recomputation);
* the network's parameters are set ``requires_grad=False`` once, at wrapping.

Why not buffers or ``requires_grad=False`` parameters: both stay in ``state_dict()`` (checkpoint size, and fine-tuning
/ probing / convert would have to filter them), and frozen parameters still count in ``parameters()``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class Frozen(nn.Module):
    """Carries ``net`` frozen and in eval mode, invisible to ``parameters()``, ``state_dict()`` and ``modules()``.

    Args:
        net: the network; its parameters get ``requires_grad=False``.

    Attributes:
        net: the network (a plain attribute, not a submodule).
    """

    net: nn.Module

    def __init__(self, net: nn.Module):
        super().__init__()
        net.requires_grad_(False)
        net.eval()
        object.__setattr__(self, "net", net)  # nn.Module.__setattr__ would register it as a submodule

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "Frozen":
        super()._apply(fn, recurse)
        self.net._apply(fn)
        return self

    def train(self, mode: bool = True) -> "Frozen":
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.net.training:  # someone called net.train() directly
            self.net.eval()
        return self.net(*args, **kwargs)

    def num_params(self) -> int:
        """Parameters of the network."""
        return sum(p.numel() for p in self.net.parameters())

    def nbytes(self) -> int:
        """Bytes of the network's parameters and buffers (0 on the meta device)."""
        tensors = [*self.net.parameters(), *self.net.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors if not t.is_meta)

    def extra_repr(self) -> str:
        return f"net={type(self.net).__name__} (frozen, {self.num_params() / 1e6:.2f}M parameters, not a submodule)"
