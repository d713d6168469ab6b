"""Backbones, decoders and the masked-pretraining model."""

from .decoder import MaskedDecoder
from .pretrainer import MaskedPretrainer
from .vit import VIT_SIZES, VisionTransformer, create_backbone, image_to_clip

__all__ = ["MaskedDecoder", "MaskedPretrainer", "VIT_SIZES", "VisionTransformer", "create_backbone", "image_to_clip",
           "build_pretrainer"]


def build_pretrainer(cfg) -> MaskedPretrainer:
    """Backbone, targets and decoders from a :class:`vmim.config.Config`."""
    from ..targets import build_target

    m = cfg.model
    backbone = create_backbone(m.backbone, m.patch_size, m.tubelet_size, m.in_chans, m.drop_path,
                               m.grad_checkpointing)
    targets, decoders = {}, {}
    for name, t in cfg.targets.items():
        targets[name] = build_target(t.kind, t, backbone.patch_size, m.in_chans)
        decoders[name] = MaskedDecoder(backbone.embed_dim, targets[name].dim, t.decoder_depth, t.decoder_dim,
                                       t.decoder_heads)
    return MaskedPretrainer(
        backbone, targets, decoders,
        weights={n: t.weight for n, t in cfg.targets.items()},
        token_sets={n: t.token_set for n, t in cfg.targets.items()},
        mean=cfg.data.mean, std=cfg.data.std,
    )
