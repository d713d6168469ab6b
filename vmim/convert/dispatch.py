"""Source format -> its module (:data:`vmim.convert.FORMATS`), and the steps around it: read the file, find the
weights, convert, save.

The functions here know no format: a format module says, with ``TAKES_CHECKPOINT``, whether it wants the whole
loaded checkpoint or the state dict found in it, and supplies ``convert`` and ``summary_line``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..errors import InputError
from . import FORMATS
from .common import load_reference, read_state_dict, save_converted


def format_module(source_format: str) -> ModuleType:
    """The module that converts ``source_format``.

    Raises:
        ValueError: not a registered format, naming them all.
    """
    if source_format not in FORMATS:
        raise ValueError(f"unknown source format '{source_format}'; one of {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[source_format])


def convert_state_dict(source_format: str, sd: dict[str, torch.Tensor] | Any, *, num_frames: int | None = None,
                       img_size: int | None = None, tubelet_size: int | None = None,
                       backbone: str | None = None, q_pool_blocks: list[int] | None = None) -> dict:
    """Convert a reference encoder's weights (already read out of their container; slowfast also takes the whole
    checkpoint) to our backbone.

    Args:
        source_format: a key of :data:`vmim.convert.FORMATS` (videomae, mae, mvd, timm, slowfast).
        sd: the reference state dict.
        num_frames: frames of the video clip the result is for (the grid of a learned table; for a saved 3-D
            table, the frames it was made for); default 16 (slowfast: the checkpoint's cfg, else the size's).
        img_size: crop side; default: from the position table, else 224. A learned table is interpolated to it.
        tubelet_size: frames per token; default: the patch weight's for 3-D sources, 2 (inflation) for 2-D ones.
        backbone: expected registered name (checked against the weights).
        q_pool_blocks: slowfast only: the blocks whose q was pooled (default: inferred).
    Returns:
        the ``vmim-backbone`` dict (see :func:`convert_checkpoint`), ``source.path`` unset.
    Raises:
        ValueError: unknown format, an architecture vmim cannot express, or keys that do not fit (all listed).
    """
    return format_module(source_format).convert(sd, num_frames=num_frames, img_size=img_size,
                                                tubelet_size=tubelet_size, backbone=backbone,
                                                q_pool_blocks=q_pool_blocks)


def convert_checkpoint(source_format: str, src_path: str | Path, *, num_frames: int | None = None,
                       img_size: int | None = None, tubelet_size: int | None = None,
                       backbone: str | None = None, q_pool_blocks: list[int] | None = None) -> dict:
    """Read a reference checkpoint file and convert it (see :func:`convert_state_dict` for the options).

    Returns:
        ``{"format": "vmim-backbone", "version": 1, "model": ViTConfig (MViTConfig for slowfast) as a dict, "data":
        {img_size, num_frames, mean, std}, "video_grid": [t, h, w], "state_dict": ours, "source": {format, path,
        dropped, notes}}``.
    """
    obj = load_reference(src_path)
    if source_format in FORMATS and format_module(source_format).TAKES_CHECKPOINT:
        weights = obj  # slowfast also reads the checkpoint's cfg
    else:
        try:
            weights = read_state_dict(obj)
        except ValueError as err:
            raise InputError(f"{src_path}: {err}") from None
    out = convert_state_dict(source_format, weights, num_frames=num_frames, img_size=img_size,
                             tubelet_size=tubelet_size, backbone=backbone, q_pool_blocks=q_pool_blocks)
    out["source"]["path"] = str(src_path)
    return out


def convert_file(source_format: str, src: str | Path, dst: str | Path, **opts: Any) -> dict:
    """:func:`convert_checkpoint` then :func:`~vmim.convert.common.save_converted`; returns the converted dict."""
    converted = convert_checkpoint(source_format, src, **opts)
    save_converted(converted, dst)
    return converted


def summary_line(converted: dict, dst: str | Path) -> str:
    """The line ``vmim convert`` prints, by the format that made ``converted``."""
    return format_module(converted["source"]["format"]).summary_line(converted, dst)


__all__ = ["convert_checkpoint", "convert_file", "convert_state_dict", "format_module", "summary_line"]
