"""Backbone registry: a name -> the function building that backbone, from the registration table.

A backbone function takes its config's keys as keyword arguments plus ``video_grid``, the training clip's token grid
(for learned position tables). Registering is one ``register("backbones", name, schema, "module:function")`` line in
``vmim/models/schemas.py``; ``vmim list`` and the contract tests pick every registered name up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from torch import nn

from ..config.registry import LazyRegistry

BACKBONES: Mapping[str, Callable[..., nn.Module]] = LazyRegistry("backbones")


def create_backbone(cfg: Any, video_grid: tuple[int, int, int] | None = None) -> nn.Module:
    """The backbone named by ``cfg.backbone``, built from the rest of ``cfg`` (a backbone config dataclass).

    Raises:
        KeyError: the name is not registered.
    """
    if cfg.backbone not in BACKBONES:
        raise KeyError(f"unknown backbone '{cfg.backbone}'; registered: {', '.join(BACKBONES)}")
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "backbone"}
    return BACKBONES[cfg.backbone](video_grid=video_grid, **kwargs)
