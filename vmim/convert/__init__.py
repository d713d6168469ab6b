"""Reference checkpoints in: ``vmim convert --from FORMAT SRC DST`` writes one ``vmim-backbone`` file.

:data:`FORMATS` is the registry: a source format's name and the module that converts it. Adding a format is one
module and one line here. Every format module offers the same three names:

* ``convert(weights, *, num_frames, img_size, tubelet_size, backbone, q_pool_blocks) -> dict``: the
  ``vmim-backbone`` dict (:func:`vmim.convert.common.backbone_file`), ``source.path`` unset;
* ``summary_line(converted, dst) -> str``: the line ``vmim convert`` prints;
* ``TAKES_CHECKPOINT``: True when ``convert`` wants the whole loaded checkpoint (SlowFast reads its ``cfg``), False
  when it wants the state dict :func:`vmim.convert.common.read_state_dict` finds in it.

Decisions, and why:

* **Module paths, not modules, in the registry; public functions re-exported lazily.** ``vmim.cli`` builds its
  parser and :mod:`vmim.models.loading` names the formats in a hint without importing torch or any converter; a
  format's module is imported when it is used (:func:`vmim.convert.dispatch.format_module`).
* **Layering.** This package sits at the models layer: formats import :mod:`vmim.convert.common` and
  :mod:`vmim.models` (a ViT format also the shared :mod:`vmim.convert.vit`), never another format, and nothing above
  models. :mod:`vmim.models.loading` and the backbones' init loaders read what this package writes, so they import
  :mod:`~vmim.convert.common`, which imports nothing from :mod:`vmim.models`.
"""

from __future__ import annotations

import importlib
from typing import Any

FORMATS: dict[str, str] = {
    "videomae": "vmim.convert.videomae",
    "mae": "vmim.convert.mae",
    "mvd": "vmim.convert.mvd",
    "timm": "vmim.convert.timm",
    "slowfast": "vmim.convert.slowfast",
}
"""Source format -> the module that converts it (imported on use)."""

_PUBLIC = {
    "convert_state_dict": "dispatch", "convert_checkpoint": "dispatch", "convert_file": "dispatch",
    "format_module": "dispatch", "summary_line": "dispatch", "convert_command": "cli",
    "FILE_FORMAT": "common", "FILE_VERSION": "common", "SAFE_GLOBALS": "common", "check_and_load": "common",
    "inflate_patch_weight": "common", "load_reference": "common", "read_state_dict": "common",
    "save_converted": "common",
}
"""Public name -> the submodule of this package that defines it."""


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vmim.convert' has no attribute '{name}'")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)


__all__ = ["FORMATS", *_PUBLIC]
