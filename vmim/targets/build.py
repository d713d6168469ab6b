"""Building a registered target from its config."""

from __future__ import annotations

from typing import Any, Mapping

from ..config.registry import LazyRegistry
from .base import Target

TARGETS: Mapping[str, type[Target]] = LazyRegistry("targets")
"""Kind -> target class, from the registration table (``vmim/targets/schemas.py``)."""


def build_target(kind: str, cfg: Any, patch_size: tuple[int, int, int], in_chans: int) -> Target:
    """Builds a registered target.

    Args:
        kind: Key of ``TARGETS``.
        cfg: the kind's config dataclass; ``norm`` is read by ``pixel``, ``nbins`` and ``cell_size`` by ``hog``.
        patch_size: Tubelet size ``(t, p, p)``.
        in_chans: Channels of the clips.

    Raises:
        KeyError: ``kind`` is not registered.
    """
    return TARGETS[kind].from_config(cfg, patch_size, in_chans)
