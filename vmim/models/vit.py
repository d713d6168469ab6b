"""Vision Transformer backbone for clips and images (an image is a clip of one frame).

Images: a ``(B, C, 1, H, W)`` input is repeated to ``tubelet_size`` frames before the tubelet patch
embedding (OmniMAE's ``PadIm2Video``), so images and videos share every weight, and its tokens take the
t=0 slice of the separable sin-cos position table. The encoder processes only the visible tokens
(MAE / VideoMAE); MViT-style backbones that need a dense grid take a mask token instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Block, init_weights
from .pos_embed import sincos_3d


def image_to_clip(x: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """(B, C, 1, H, W) -> (B, C, tubelet_size, H, W) by repetition; clips pass through unchanged."""
    if x.shape[2] == 1 and tubelet_size > 1:
        return x.expand(-1, -1, tubelet_size, -1, -1)
    return x


class PatchEmbed3d(nn.Module):
    """Tubelet embedding: Conv3d with kernel = stride = (t, p, p)."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        nn.init.xavier_uniform_(self.proj.weight.view(embed_dim, -1))  # as a Linear layer (MAE)
        nn.init.zeros_(self.proj.bias)

    def grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (T', H', W') for an input of shape (..., T, H, W); T = 1 counts as one tubelet."""
        t, h, w = shape[-3:]
        pt, ph, pw = self.patch_size
        if (t % pt and t != 1) or h % ph or w % pw:
            raise ValueError(f"input {tuple(shape[-3:])} is not divisible by the patch size {self.patch_size}")
        return max(t // pt, 1), h // ph, w // pw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T'*H'*W', D)."""
        x = image_to_clip(x, self.patch_size[0])
        return self.proj(x).flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int


VIT_SIZES = {
    "vit_test": ViTSize(64, 2, 2),
    "vit_tiny": ViTSize(192, 12, 3),
    "vit_small": ViTSize(384, 12, 6),
    "vit_base": ViTSize(768, 12, 12),
    "vit_large": ViTSize(1024, 24, 16),
    "vit_huge": ViTSize(1280, 32, 16),
}


class VisionTransformer(nn.Module):
    """ViT encoder over visible tokens.

    Args:
        embed_dim, depth, num_heads: transformer size.
        patch_size: spatial patch in pixels.
        tubelet_size: frames per token.
        drop_path: stochastic-depth rate of the last block (linear ramp from 0).
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, mlp_ratio: float = 4.0, drop_path: float = 0.0, grad_checkpointing: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed3d(patch_size, tubelet_size, in_chans, embed_dim)
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]  # linear ramp, no tensor (meta-safe)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.grad_checkpointing = grad_checkpointing
        self.apply(init_weights)

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.patch_embed.patch_size

    def grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        return self.patch_embed.grid(shape)

    def no_weight_decay(self) -> set[str]:
        return set()  # position embeddings are fixed buffers; norms and biases are excluded by rank

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode the visible tokens.

        Args:
            x: (B, C, T, H, W) normalized clip (T = 1 for images).
            mask: (B, N) bool, True = masked, the same count per sample; None keeps every token.
        Returns:
            (B, N_visible, D) after the final LayerNorm.
        """
        grid = self.grid(x.shape)
        tokens = self.patch_embed(x) + sincos_3d(grid, self.embed_dim, x.device).to(x.dtype)
        if mask is not None:
            b, _, d = tokens.shape
            tokens = tokens[~mask].reshape(b, -1, d)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, D) mean-pooled features of all tokens (probing, fine-tuning)."""
        return self.forward(x).mean(dim=1)


def create_backbone(name: str, patch_size: int = 16, tubelet_size: int = 2, in_chans: int = 3,
                    drop_path: float = 0.0, grad_checkpointing: bool = False) -> VisionTransformer:
    """Build a registered backbone by name (see VIT_SIZES)."""
    if name not in VIT_SIZES:
        raise KeyError(f"unknown backbone '{name}'; registered: {', '.join(VIT_SIZES)}")
    size = VIT_SIZES[name]
    return VisionTransformer(size.embed_dim, size.depth, size.num_heads, patch_size=patch_size,
                             tubelet_size=tubelet_size, in_chans=in_chans, drop_path=drop_path,
                             grad_checkpointing=grad_checkpointing)
