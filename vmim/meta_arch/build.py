"""Building the pretraining method of a config."""

from __future__ import annotations

from typing import Any

from .masked_modeling import MaskedModeling


def build_method(cfg: Any) -> MaskedModeling:
    """The pretraining method of a :class:`vmim.config.Config`."""
    return MaskedModeling.from_config(cfg)
