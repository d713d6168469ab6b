"""MAE (``vmim convert --from mae``): image pre-training and fine-tuning files.

A 2-D ViT: its patch weight is inflated to the tubelet and its position table (a fixed 2-D sin-cos in MAE's own
channel order, saved as a parameter, with a class row folded into ``cls_token``) is imported as a ``learned`` table
repeated over time (:mod:`vmim.convert.vit` has the reasons). Dropped and listed: the ``decoder_*`` layers, the
decoder's ``mask_token`` and the classifier ``head``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .vit import ViTLayout, convert_vit, summary_line

LAYOUT = ViTLayout(name="mae", encoder_prefixes=(), dropped=re.compile(r"^(decoder_|mask_token$|head\.)"),
                   two_d=True)
TAKES_CHECKPOINT = False


def convert(sd: dict[str, torch.Tensor], **opts: Any) -> dict:
    """An MAE state dict -> the ``vmim-backbone`` dict (options: :func:`vmim.convert.vit.convert_vit`)."""
    return convert_vit(LAYOUT, sd, **opts)


__all__ = ["LAYOUT", "TAKES_CHECKPOINT", "convert", "summary_line"]
