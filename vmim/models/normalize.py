"""Input normalisation, in one place for pretraining, probing and fine-tuning.

Clips arrive as uint8 ``(B, C, T, H, W)`` (the loaders never normalize, so they ship a quarter of the bytes) and
become float on the device: :meth:`InputNormalizer.pixels` gives [0, 1] values with images repeated to the tubelet
length (what pixel and HOG targets read), and calling the module gives ``(pixels - mean) / std`` (what the
backbone reads).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .vit import image_to_clip


class InputNormalizer(nn.Module):
    """Args:
        mean, std: per-channel statistics of [0, 1] pixels (``data.mean`` / ``data.std``).
        tubelet_size: frames an image is repeated to.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], tubelet_size: int = 1):
        super().__init__()
        self.tubelet_size = tubelet_size
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1, 1), persistent=False)

    def pixels(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float (B, C, T, H, W) -> float32 [0, 1], an image (T = 1) repeated to the tubelet."""
        x = clip.float() / 255.0 if clip.dtype == torch.uint8 else clip.float()
        return image_to_clip(x, self.tubelet_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (B, C, T, H, W) -> (pixels - mean) / std."""
        return (pixels - self.mean) / self.std
