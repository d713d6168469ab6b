"""Reconstruction targets: per-token features of the clean clip that the decoder predicts.

Registry: ``TARGETS`` maps a config ``kind`` to its class; :func:`build_target` builds one from its config.
"""

from __future__ import annotations

from typing import Any

from vmim.targets.base import Target
from vmim.targets.hog import HOGTarget, hog_histograms
from vmim.targets.momentum import MomentumTarget
from vmim.targets.pixel import PixelTarget
from vmim.targets.teacher import TeacherTarget

TARGETS: dict[str, type[Target]] = {"pixel": PixelTarget, "hog": HOGTarget, "momentum": MomentumTarget,
                                   "teacher": TeacherTarget}

__all__ = ["TARGETS", "HOGTarget", "MomentumTarget", "PixelTarget", "Target", "TeacherTarget", "build_target",
           "hog_histograms"]


def build_target(kind: str, cfg: Any, patch_size: tuple[int, int, int], in_chans: int) -> Target:
    """Builds a registered target.

    Args:
        kind: Key of ``TARGETS``.
        cfg: ``TargetConfig``-like dataclass; ``norm`` is read by ``pixel``, ``nbins`` and ``cell_size`` by ``hog``.
        patch_size: Tubelet size ``(t, p, p)``.
        in_chans: Channels of the clips.

    Raises:
        KeyError: ``kind`` is not registered.
    """
    if kind not in TARGETS:
        raise KeyError(f"unknown target kind {kind!r}; registered: {sorted(TARGETS)}")
    return TARGETS[kind].from_config(cfg, patch_size, in_chans)
