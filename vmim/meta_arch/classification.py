"""The supervised method: a backbone, a pooling, dropout and a linear head, trained with Mixup / CutMix and the
soft-target cross-entropy (VideoMAE / MAE fine-tuning), dinov2 / detectron2 style: the method owns one micro-batch's
loss, so the fine-tuning task (:mod:`vmim.engine.finetune`) is as small as the pretraining one.

Calls:

* ``method(batch)`` with a training batch ``{"clip": uint8 (B, C, T, H, W), "label": (B,)}`` on the device ->
  ``{"loss": scalar, "logits": (B, K)}``: [0, 1] pixels, random erasing (one box on every frame), Mixup / CutMix
  with label smoothing (:mod:`vmim.meta_arch.batch_augment`), logits, soft-target cross-entropy in float32;
* ``method(clip)`` with a tensor, or :meth:`Classification.logits` -> logits ``(B, K)``: evaluation
  (:func:`vmim.engine.evaluate.evaluate` calls the model on clips), FLOP counts; :meth:`features` -> pooled
  ``(B, D)`` (the linear and k-NN probes), :meth:`tokens` -> grid tokens ``(B, N, D)`` (the attentive probe).

Why one ``forward`` for both: the trainer calls the (DDP-wrapped) model with the batch, and evaluation, the
multi-view test and ``count_macs`` call it with a clip, as they always have; the input's type says which is meant
(detectron2's models switch on the mode instead, which would make a validation pass in train mode return losses).

Pooling (``head.pooling``): empty = the backbone's own (``forward_features``: ``model.global_pool`` then
``model.fc_norm``), the exact path of every earlier run and of converted reference checkpoints. A registered kind
(:mod:`vmim.meta_arch.pooling_schema`: mean, cls, attentive) pools the tokens of ``backbone(x)``, then the backbone's
``fc_norm`` (a ViT's; Identity when off), so ``model.fc_norm`` keeps its meaning, "normalize the pooled features":
``mean`` and ``cls`` then equal a ViT's ``avg`` and ``token`` pooling exactly.

The class token: ``backbone(x)`` drops it from :class:`~vmim.models.base.EncoderOutput`. The method reads
``EncoderOutput.prefix`` (``(B, P, D)`` after the final norm) when a backbone provides it; until every backbone does,
:meth:`_prefix_of` takes the last block's prefix rows through a forward hook and applies the final norm, as
``forward_features`` does for ``global_pool: token``. Only a ``cls`` pooling asks for it.

Checkpoints: the parameter names are those of the earlier ``vmim.models.classifier.Classifier`` (``backbone.*``,
``head.*``; the normalizer's statistics are not persistent), so its ``last.pt`` / ``best.pt`` and fine-tuning
``init`` files load unchanged; a registry pooling adds ``pool.*``. Head init follows VideoMAE
(``modeling_finetune.py``): trunc-normal(std 0.02) x ``init_scale`` (0.001), bias 0, drawn right after the backbone
(the random-init probe relies on that order).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Sequence

import torch
from torch import nn

from ..models.flops import linear_macs, module_macs
from ..models.normalize import InputNormalizer
from ..models.pooling import create_pooling
from .batch_augment import ClipMixup, ClipRandomErasing, soft_target_cross_entropy


class Classification(nn.Module):
    """Args:
        backbone: keeps the contract of :mod:`vmim.models.base`; ``forward_features`` gives pooled ``(B, D)``.
        num_classes: K.
        mean, std: input statistics of [0, 1] pixels (``data.mean`` / ``data.std``).
        dropout: before the linear layer.
        init_scale: the linear layer starts at trunc_normal(0.02) x this.
        pooling: a registered pooling kind; "" = the backbone's own.
        mixup: Mixup / CutMix and label smoothing of the training forward; None = plain one-hot targets.
        erasing: random erasing of the training forward; None = off.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 dropout: float = 0.0, init_scale: float = 0.001, pooling: str = "",
                 mixup: ClipMixup | None = None, erasing: ClipRandomErasing | None = None):
        super().__init__()
        self.backbone = backbone
        self.normalizer = InputNormalizer(mean, std)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(init_scale)
        self.pooling = pooling
        self.pool = create_pooling(pooling, backbone.embed_dim) if pooling else None
        if self.pool is not None and self.pool.reads_prefix and not getattr(backbone, "num_prefix_tokens", 0):
            raise ValueError(f"{pooling} pooling reads the class token, and the backbone has none "
                             "(model.cls_token=true)")
        self.mixup = mixup or ClipMixup(0.0, 0.0, 0.0, 0.0, 0.0, num_classes)
        self.erasing = erasing

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    # ------------------------------------------------------------------------------------------------
    # Evaluation: clips -> tokens, features, logits
    # ------------------------------------------------------------------------------------------------

    def _normalized(self, clip: torch.Tensor) -> torch.Tensor:
        return self.normalizer(self.normalizer.pixels(clip))

    def tokens(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(B, C, T, H, W)`` -> ``(B, N, D)`` grid tokens after the backbone's final norm."""
        return self.backbone(self._normalized(clip)).tokens

    def _prefix_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized clip -> (grid tokens ``(B, N, D)``, prefix tokens ``(B, P, D)``), both after the final norm."""
        seen: dict[str, torch.Tensor] = {}

        def keep(module: nn.Module, args: Any, output: Any) -> None:
            seen["last"] = output[0] if isinstance(output, tuple) else output  # MViT blocks return (x, thw)

        handle = self.backbone.blocks[-1].register_forward_hook(keep)
        try:
            out = self.backbone(x)
        finally:
            handle.remove()
        prefix = getattr(out, "prefix", None)
        if prefix is None:
            prefix = self.backbone.norm(seen["last"][:, :self.backbone.num_prefix_tokens])
        return out.tokens, prefix

    def features(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(B, C, T, H, W)`` -> pooled ``(B, D)`` features (before dropout and the head)."""
        x = self._normalized(clip)
        if self.pool is None:
            return self.backbone.forward_features(x)
        if self.pool.reads_prefix:
            tokens, prefix = self._prefix_of(x)
        else:
            tokens, prefix = self.backbone(x).tokens, None
        pooled = self.pool(tokens, prefix)
        fc_norm = getattr(self.backbone, "fc_norm", None)
        return fc_norm(pooled) if fc_norm is not None else pooled

    def logits(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float ``(B, C, T, H, W)`` -> logits ``(B, K)``."""
        return self.head(self.dropout(self.features(clip)))

    # ------------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------------

    def losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A training batch on the device (``clip`` uint8 ``(B, C, T, H, W)``, ``label`` ``(B,)``) ->
        ``{"loss": soft-target cross-entropy, "logits": (B, K)}`` after erasing and Mixup / CutMix."""
        pixels = self.normalizer.pixels(batch["clip"])
        if self.erasing is not None:
            pixels = self.erasing(pixels)
        pixels, targets = self.mixup(pixels, batch["label"])
        logits = self.logits(pixels)
        return {"loss": soft_target_cross_entropy(logits.float(), targets), "logits": logits}

    def forward(self, inputs: torch.Tensor | Mapping[str, torch.Tensor]) -> Any:
        """A clip tensor -> logits ``(B, K)``; a training batch (a mapping) -> :meth:`losses`."""
        if isinstance(inputs, Mapping):
            return self.losses(inputs)
        return self.logits(inputs)

    # ------------------------------------------------------------------------------------------------
    # Multiply-adds (vmim.models.flops protocol)
    # ------------------------------------------------------------------------------------------------

    def macs(self, shape: Sequence[int]) -> int:
        """Multiply-adds of one forward on a clip of ``shape``: the backbone, the pooling, the linear layer."""
        macs = module_macs(self.backbone, shape) + linear_macs(self.head, shape[0])
        if self.pool is not None:
            macs += module_macs(self.pool, shape[0], math.prod(self.backbone.grid(shape)))
        return macs

    def step_macs(self, batch: dict) -> tuple[int, int]:
        """(trained, frozen) multiply-adds of one micro-batch: nothing frozen."""
        return self.macs(tuple(batch["clip"].shape)), 0


def build_classification(cfg: Any, num_classes: int) -> Classification:
    """The method of a :class:`~vmim.config.FinetuneConfig` at random init (``init`` is loaded by the caller:
    :func:`vmim.models.loading.load_init`), with the config's erasing and Mixup / CutMix."""
    from ..config import video_grid
    from ..models.registry import create_backbone

    a, d = cfg.augment, cfg.data
    backbone = create_backbone(cfg.model, video_grid(cfg))
    erasing = ClipRandomErasing(a.random_erasing, d.mean, d.std) if a.random_erasing > 0 else None
    mixup = ClipMixup(a.mixup, a.cutmix, a.mixup_prob, a.switch_prob, a.label_smoothing, num_classes)
    return Classification(backbone, num_classes, d.mean, d.std, cfg.head.dropout, cfg.head.init_scale,
                          cfg.head.pooling, mixup, erasing)
