"""Backbone registry (timm's ``register_model`` pattern): a name -> a function building the backbone.

A backbone function takes its config's keys as keyword arguments (``vmim.config.BACKBONES`` maps each name to its
dataclass) plus ``video_grid``, the training clip's token grid (for learned position tables). Registering is
decorating the function; ``vmim list`` and the contract tests pick every registered name up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn

BACKBONES: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: registers ``fn`` under its own name."""
    if fn.__name__ in BACKBONES:
        raise ValueError(f"backbone '{fn.__name__}' is registered twice")
    BACKBONES[fn.__name__] = fn
    return fn


def create_backbone(cfg: Any, video_grid: tuple[int, int, int] | None = None) -> nn.Module:
    """The backbone named by ``cfg.backbone``, built from the rest of ``cfg`` (a backbone config dataclass).

    Raises:
        KeyError: the name is not registered.
    """
    if cfg.backbone not in BACKBONES:
        raise KeyError(f"unknown backbone '{cfg.backbone}'; registered: {', '.join(BACKBONES)}")
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "backbone"}
    return BACKBONES[cfg.backbone](video_grid=video_grid, **kwargs)
