"""Backbones (in a registry), heads, position embeddings and input normalisation."""

from . import vit  # noqa: F401  (registers the ViT backbones)
from . import mvit  # noqa: F401, I001  (registers the MViTv2 backbones, after the ViTs: vmim list's order)
from .base import EncoderOutput
from .grid import token_grid
from .heads import HEADS, DecoderHead, LinearHead, build_head
from .loading import load_backbone, load_init
from .mvit import MVIT_SIZES, MViT
from .normalize import InputNormalizer
from .registry import BACKBONES, create_backbone, register_backbone
from .vit import VIT_SIZES, VisionTransformer, image_to_clip

__all__ = ["BACKBONES", "HEADS", "MVIT_SIZES", "MViT", "VIT_SIZES", "DecoderHead", "EncoderOutput",
           "InputNormalizer", "LinearHead", "VisionTransformer", "build_head", "create_backbone", "image_to_clip",
           "load_backbone", "load_init", "register_backbone", "token_grid"]
