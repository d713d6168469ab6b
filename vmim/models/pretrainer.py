"""Masked pretraining model: backbone on the masked clip, one decoder per target, weighted losses.

The backbone knows nothing of targets, the targets nothing of the model; this module joins them and
returns losses, so the engine only sees ``model(clip, mask) -> {"loss": ..., "loss/<target>": ...}``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..targets import Target
from .decoder import MaskedDecoder
from .vit import VisionTransformer, image_to_clip


class MaskedPretrainer(nn.Module):
    """Args:
        backbone: encoder over visible tokens.
        targets: name -> target module (no parameters).
        decoders: name -> decoder predicting that target for every token.
        weights: name -> loss weight.
        token_sets: name -> "masked" or "visible", the tokens the loss is taken over.
        mean, std: per-channel input normalization applied on the device.
    """

    def __init__(self, backbone: VisionTransformer, targets: dict[str, Target], decoders: dict[str, MaskedDecoder],
                 weights: dict[str, float], token_sets: dict[str, str], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.backbone = backbone
        self.targets = nn.ModuleDict(targets)
        self.decoders = nn.ModuleDict(decoders)
        self.weights = dict(weights)
        self.token_sets = dict(token_sets)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1, 1), persistent=False)

    def pixels(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float (B, C, T, H, W) -> float [0, 1], images repeated to the tubelet length."""
        x = clip.float() / 255.0 if clip.dtype == torch.uint8 else clip.float()
        return image_to_clip(x, self.backbone.patch_size[0])

    def predict(self, clip: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns the [0, 1] pixels and each decoder's (B, N, D_target) prediction."""
        pixels = self.pixels(clip)
        latent = self.backbone((pixels - self.mean) / self.std, mask)
        grid = self.backbone.grid(pixels.shape)
        return pixels, {name: decoder(latent, mask, grid) for name, decoder in self.decoders.items()}

    def forward(self, clip: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """clip (B, C, T, H, W), mask (B, N) bool True = masked -> {"loss", "loss/<name>"} scalars."""
        pixels, predictions = self.predict(clip, mask)
        losses: dict[str, torch.Tensor] = {}
        total = pixels.new_zeros(())
        for name, pred in predictions.items():
            target = self.targets[name](pixels)
            keep = mask if self.token_sets[name] == "masked" else ~mask
            loss = (pred[keep].float() - target[keep]).pow(2).mean()
            losses[f"loss/{name}"] = loss
            total = total + self.weights[name] * loss
        losses["loss"] = total
        return losses

    @torch.no_grad()
    def preview(self, clip: torch.Tensor, mask: torch.Tensor, max_items: int = 8) -> torch.Tensor | None:
        """Image grid rows: input, masked input, reconstruction (first frame), from the first pixel-space
        target; (3, rows*H, cols*W) in [0, 1], or None when no target maps back to pixels."""
        clip, mask = clip[:max_items], mask[:max_items]
        pixels, predictions = self.predict(clip, mask)
        for name, pred in predictions.items():
            recon = self.targets[name].to_pixels(pred.float(), pixels)
            if recon is None:
                continue
            t, p, _ = self.backbone.patch_size
            grid = self.backbone.grid(pixels.shape)
            keep = (~mask).float().view(-1, 1, *grid)
            keep = keep.repeat_interleave(t, 2).repeat_interleave(p, 3).repeat_interleave(p, 4)
            frames = [x[:, :3, 0].expand(-1, 3, -1, -1).clamp(0, 1) if x.shape[1] == 1 else x[:, :3, 0].clamp(0, 1)
                      for x in (pixels, pixels * keep, recon * (1 - keep) + pixels * keep)]
            rows = [torch.cat(list(f), dim=-1) for f in frames]  # each (C, H, B*W)
            return torch.cat(rows, dim=-2)
        return None
