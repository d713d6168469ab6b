"""Reconstruction targets: per-token features of the clean clip that a head predicts.

Registry: ``TARGETS`` maps a config ``kind`` to its class (from the registration table, ``vmim/targets/schemas.py``);
:func:`~vmim.targets.build.build_target` builds one from its config. The package face is lazy (PEP 562), so the
torch-free schema module imports without torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TARGETS": "build", "build_target": "build", "Target": "base", "HOGTarget": "hog", "hog_histograms": "hog",
    "MomentumTarget": "momentum", "PixelTarget": "pixel", "TeacherTarget": "teacher",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
