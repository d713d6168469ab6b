"""Backbones, heads, position embeddings and input normalisation; each kind's torch-free schema and registration in
:mod:`vmim.models.schemas`.

The package face is lazy (PEP 562): a name is imported from its module on first use, so importing
``vmim.models.schemas`` (config validation) does not import torch."""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "BACKBONES": "registry", "create_backbone": "registry", "EncoderOutput": "base", "token_grid": "grid",
    "HEADS": "heads", "DecoderHead": "heads", "LinearHead": "heads", "build_head": "heads",
    "load_backbone": "loading", "load_init": "loading", "MVIT_SIZES": "schemas", "VIT_SIZES": "schemas",
    "MViT": "mvit", "InputNormalizer": "normalize", "VisionTransformer": "vit", "image_to_clip": "vit",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
