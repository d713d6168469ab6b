"""The fine-tuning model: a backbone's pooled features, dropout and a linear head (VideoMAE / MAE fine-tuning).

Pooling and its norm belong to the backbone (``model.global_pool``, ``model.fc_norm``: ``forward_features`` returns
``(B, D)`` as timm's ViT does), so the classifier is the same for every backbone and a converted reference model
gives its own features. The classifier normalizes its input itself, like the pretraining method: loaders and
evaluation hand it uint8 clips (or [0, 1] float pixels after on-device augmentation), and a checkpoint is a complete
function from pixels to logits.

Head init follows VideoMAE (``modeling_finetune.py``): trunc-normal(std 0.02) scaled by ``init_scale`` (0.001), bias 0,
so the first steps barely move the pretrained features.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .flops import linear_macs, module_macs
from .normalize import InputNormalizer


class Classifier(nn.Module):
    """Args:
        backbone: keeps the contract of :mod:`vmim.models.base` and returns pooled ``(B, D)`` from
            ``forward_features``.
        num_classes: K.
        mean, std: input statistics of [0, 1] pixels (``data.mean`` / ``data.std``).
        dropout: before the linear layer.
        init_scale: the linear layer starts at trunc_normal(0.02) x this.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 dropout: float = 0.0, init_scale: float = 0.001):
        super().__init__()
        self.backbone = backbone
        self.normalizer = InputNormalizer(mean, std)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def features(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(B, C, T, H, W)`` -> pooled ``(B, D)`` backbone features."""
        return self.backbone.forward_features(self.normalizer(self.normalizer.pixels(clip)))

    def macs(self, shape: Sequence[int]) -> int:
        """Multiply-adds of one forward on a clip of ``shape``: pooled backbone features, then the linear layer."""
        return module_macs(self.backbone, shape) + linear_macs(self.head, shape[0])

    def step_macs(self, batch: dict) -> tuple[int, int]:
        """(trained, frozen) multiply-adds of one micro-batch (``vmim.models.flops`` protocol): nothing frozen."""
        return self.macs(tuple(batch["clip"].shape)), 0

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(B, C, T, H, W)`` -> logits ``(B, K)``."""
        return self.head(self.dropout(self.features(clip)))


def build_classifier(cfg, num_classes: int) -> Classifier:
    """The classifier of a :class:`~vmim.config.FinetuneConfig` at random init (``init`` is loaded by the
    caller: :func:`vmim.models.loading.load_init`)."""
    from ..config import video_grid
    from .registry import create_backbone

    backbone = create_backbone(cfg.model, video_grid(cfg))
    return Classifier(backbone, num_classes, cfg.data.mean, cfg.data.std, cfg.head.dropout, cfg.head.init_scale)
