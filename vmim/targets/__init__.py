"""Reconstruction targets: per-token features of the clean clip that a head predicts.

Registry: ``TARGETS`` maps a config ``kind`` to its class (from the registration table, ``vmim/targets/schemas.py``);
:func:`~vmim.targets.build.build_target` builds one from its config. The package face is lazy (PEP 562), so the
torch-free schema module imports without torch."""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "TARGETS": "build", "build_target": "build", "Target": "base", "HOGTarget": "hog", "hog_histograms": "hog",
    "MomentumTarget": "momentum", "PixelTarget": "pixel", "TeacherTarget": "teacher",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
