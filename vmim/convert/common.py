"""What every source format shares: reading a reference file, finding its weights, loading strictly, the
``vmim-backbone`` file that comes out, and writing it.

Decisions, and why:

* **Read safely.** Reference checkpoints are pickles (they hold ``args`` namespaces). They are read with
  ``weights_only=True`` (:func:`vmim.safe_load.load`, ``argparse.Namespace`` the only class allowed besides
  tensors, containers and numpy arrays): a file that would run code is refused with
  :class:`~vmim.errors.UnsafeFileError` naming it and what it holds; random bytes, an empty file or a dict without a
  state dict with :class:`~vmim.errors.InputError` naming the file (both exit 2, one ``vmim convert:`` line).
* **Written atomically** (:func:`vmim.safe_load.save`): a failed write (disk full) removes its ``.tmp`` and exits 1
  with one line naming the file and the OS error.
* **Strict.** The converted weights load into the inferred model with ``strict=True``; missing, unexpected and
  mis-shaped keys raise one ``ValueError`` listing all of them (:func:`check_and_load`). Keys known to be unused by
  the encoder (decoders, mask tokens of decoders, classification heads) are dropped by each format and listed in the
  file's ``source.dropped``, not treated as errors.
* **No import of vmim.models.** :mod:`vmim.models.loading` reads the files this module describes and shares
  :func:`check_and_load` and :func:`inflate_patch_weight`, so this module depends on torch and :mod:`vmim.safe_load`
  only (see :mod:`vmim.convert`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import torch

from ..safe_load import load, save

FILE_FORMAT, FILE_VERSION = "vmim-backbone", 1
"""The ``format`` / ``version`` of a converted file (read by :func:`vmim.models.loading.read_weights`)."""

SAFE_GLOBALS = (argparse.Namespace,)
"""Non-tensor objects reference checkpoints pickle (VideoMAE / MAE save their ``args``), allowed when loading."""

_CONTAINER_KEYS = ("model", "module", "state_dict", "model_state")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


# ----------------------------------------------------------------------------------------------------
# Reading a reference file
# ----------------------------------------------------------------------------------------------------


def load_reference(path: str | Path) -> Any:
    """A downloaded checkpoint, read with ``weights_only=True`` (:func:`vmim.safe_load.load`): tensors, containers,
    numpy arrays and :data:`SAFE_GLOBALS` only, so a tampered file cannot run code on unpickling.

    Raises:
        UnsafeFileError: the file pickles other objects (named); re-save its state dict with ``torch.save``.
        InputError: not a torch file (random bytes, empty).
        FileNotFoundError: nothing at ``path``.
    """
    return load(path, extra_globals=SAFE_GLOBALS)


def read_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The weights inside a loaded checkpoint: the dict of tensors, looked for at the top level and under
    ``model`` / ``module`` / ``state_dict`` / ``model_state`` (nested containers are followed)."""
    for _ in range(4):
        if not isinstance(obj, dict):
            raise ValueError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            others = sorted(k for k, v in obj.items() if not isinstance(v, torch.Tensor))
            raise ValueError(f"no state dict found: the checkpoint has none of {', '.join(_CONTAINER_KEYS)} and "
                             f"holds non-tensor entries {others[:10]}")
        obj = inner
    raise ValueError("no state dict found: containers nested too deep")


def strip_prefixes(sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Remove ``_orig_mod.`` / ``module.`` wrappers everywhere, then one encoder prefix (``encoder.``, ...)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = key
        while name.startswith(_WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        for prefix in prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name in out:
            raise ValueError(f"two source keys map to '{name}' after removing prefixes (one is '{key}')")
        out[name] = value
    return out


def block_order(key: str) -> tuple[int, str]:
    """Sort key: the block index of ``blocks.{i}.*`` keys (-1 for others), then the key."""
    m = re.match(r"blocks\.(\d+)\.", key)
    return (int(m.group(1)) if m else -1, key)


# ----------------------------------------------------------------------------------------------------
# Tensor adaptation and strict loading (shared with vmim.models.loading)
# ----------------------------------------------------------------------------------------------------


def inflate_patch_weight(weight: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """(D, C, p, p) or (D, C, 1, p, p) -> (D, C, t, p, p): repeated over t and divided by t, so that t identical
    frames give the 2-D embedding exactly."""
    if weight.ndim == 5:
        weight = weight[:, :, 0]
    return weight.unsqueeze(2).repeat(1, 1, tubelet_size, 1, 1) / tubelet_size


def check_and_load(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(sd, strict=True)``, after checking keys and shapes so that the error lists every
    missing, unexpected and mis-shaped key at once.

    Raises:
        ValueError: naming all of them, with both shapes for a mismatch.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: weights {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(sd) & set(expected)) if sd[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
    if problems:
        raise ValueError(f"{what} does not fit the model: " + " | ".join(problems))
    model.load_state_dict(sd, strict=True)


# ----------------------------------------------------------------------------------------------------
# The converted file
# ----------------------------------------------------------------------------------------------------


def backbone_file(source_format: str, cfg: Any, model: torch.nn.Module, data: dict, grid: tuple[int, int, int],
                  dropped: list[str], notes: list[str]) -> dict:
    """The ``vmim-backbone`` dict: ``{"format", "version", "model": cfg (a ViTConfig / MViTConfig) as a dict,
    "data": {img_size, num_frames, mean, std}, "video_grid": [t, h, w], "state_dict": model's (cloned, contiguous),
    "source": {format, path (None until a file is read), dropped, notes}}``."""
    return {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "model": dataclasses.asdict(cfg),
        "data": data,
        "video_grid": list(grid),
        "state_dict": {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
        "source": {"format": source_format, "path": None, "dropped": dropped, "notes": notes},
    }


def save_converted(converted: dict, dst: str | Path) -> Path:
    """Write a converted dict to ``dst`` (through ``dst.tmp``, then renamed).

    Raises:
        vmim.safe_load.SaveError: the write failed (disk full ...), naming ``dst`` and the OS error; no ``.tmp``
            is left and a previous ``dst`` is unchanged.
    """
    return save(converted, dst)


__all__ = ["FILE_FORMAT", "FILE_VERSION", "SAFE_GLOBALS", "backbone_file", "block_order", "check_and_load",
           "inflate_patch_weight", "load_reference", "read_state_dict", "save_converted", "strip_prefixes"]
