"""MVD (``vmim convert --from mvd``): the distilled student's files, VideoMAE's layout plus one decoder per teacher.

A 3-D ViT like VideoMAE's (``q_bias`` / ``v_bias``) whose saved position table is a fixed 3-D sin-cos: it is
compared with our tables on its grid and becomes ``pos_embed: sincos_3d`` (:mod:`vmim.convert.vit`). Dropped and
listed: the decoders, ``encoder_to_decoder``, the decoder's ``mask_token``, the classifier ``head`` and every
per-teacher part (``*_img`` / ``*_vid``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .vit import ViTLayout, convert_vit, summary_line

LAYOUT = ViTLayout(
    name="mvd", encoder_prefixes=("encoder.", "backbone."),
    dropped=re.compile(r"^(decoder\.|encoder_to_decoder\.|mask_token$|head\.|[A-Za-z0-9_]+_(img|vid)(\.|$))"),
    two_d=False)
TAKES_CHECKPOINT = False


def convert(sd: dict[str, torch.Tensor], **opts: Any) -> dict:
    """An MVD state dict -> the ``vmim-backbone`` dict (options: :func:`vmim.convert.vit.convert_vit`)."""
    return convert_vit(LAYOUT, sd, **opts)


__all__ = ["LAYOUT", "TAKES_CHECKPOINT", "convert", "summary_line"]
