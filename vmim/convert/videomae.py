"""VideoMAE (``vmim convert --from videomae``): pre-training (``encoder.*`` beside a decoder) and fine-tuning files.

A 3-D patch embedding (tubelet 2), separate ``q_bias`` / ``v_bias`` (merged into ``qkv.bias``, exact) and, in most
files, no saved position table: its 1-D sin-cos over the flattened token index becomes ``pos_embed: sincos_1d``
(:mod:`vmim.convert.vit` has the reasons). Dropped and listed: the decoder, ``encoder_to_decoder``, the decoder's
``mask_token`` and the classifier ``head``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .vit import ViTLayout, convert_vit, summary_line

LAYOUT = ViTLayout(name="videomae", encoder_prefixes=("encoder.", "backbone."),
                   dropped=re.compile(r"^(decoder\.|encoder_to_decoder\.|mask_token$|head\.)"), two_d=False)
TAKES_CHECKPOINT = False


def convert(sd: dict[str, torch.Tensor], **opts: Any) -> dict:
    """A VideoMAE state dict -> the ``vmim-backbone`` dict (options: :func:`vmim.convert.vit.convert_vit`)."""
    return convert_vit(LAYOUT, sd, **opts)


__all__ = ["LAYOUT", "TAKES_CHECKPOINT", "convert", "summary_line"]
