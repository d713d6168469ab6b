"""timm ViTs (``vmim convert --from timm``): ``VisionTransformer`` state dicts as timm names them.

A 2-D ViT: the patch weight is inflated to the tubelet, the learned table (with a class row folded into
``cls_token``, or none for ``no_embed_class``) is repeated over time (:mod:`vmim.convert.vit`). Dropped and listed:
the classifier ``head``. ``data.mean`` / ``std`` are recorded as ImageNet's; models trained with other statistics
(0.5 / 0.5 for augreg) need them set in the fine-tuning config.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .vit import ViTLayout, convert_vit, summary_line

LAYOUT = ViTLayout(name="timm", encoder_prefixes=(), dropped=re.compile(r"^head\."), two_d=True)
TAKES_CHECKPOINT = False


def convert(sd: dict[str, torch.Tensor], **opts: Any) -> dict:
    """A timm ViT state dict -> the ``vmim-backbone`` dict (options: :func:`vmim.convert.vit.convert_vit`)."""
    return convert_vit(LAYOUT, sd, **opts)


__all__ = ["LAYOUT", "TAKES_CHECKPOINT", "convert", "summary_line"]
