"""VideoMAE's pre-training step as its users run it: the reference of ``tools/bench_pretrain.py --baseline videomae``.

MCG-NJU/VideoMAE (``modeling_pretrain.py``, ``modeling_finetune.py``, ``engine_for_pretraining.py``,
``optim_factory.py``, ``utils.NativeScalerWithGradNormCount``) rebuilt from timm's ``Block`` rather than copied, with
every choice that decides its speed kept as the reference makes it:

* attention written out (``q * scale @ k^T``, softmax, ``@ v``): timm's ``Attention`` with ``fused_attn = False``.
  The reference has q and v biases and no k bias; timm's qkv bias adds a k bias, the same cost.
* the encoder gathers the visible tokens (``x[~mask].reshape``) after the patch embedding and the fixed sin-cos
  table (VideoMAE's ``get_sinusoid_encoding_table``), runs its blocks and a LayerNorm;
* ``encoder_to_decoder`` (no bias), the visible tokens plus one mask token per masked position, each with its
  position: the decoder runs over all N tokens, then LayerNorm and head on the last M (the masked ones);
* targets: the loader's normalized clip un-normalized, cut into tubelets, each channel normalized over its tubelet
  (unbiased variance) for every token, then the masked ones picked, without grad, in fp32;
* MSE under autocast (fp16 in the reference; bf16 here when the run is bf16), backward, the gradient norm computed
  every step (the reference's loss scaler does so when no clipping is set), ``torch.optim.AdamW`` with its default
  implementation (a per-parameter loop on CPU, ``foreach`` on CUDA) and MAE's weight-decay groups.

The input is what the reference's loader hands the model: a float32 normalized clip and a bool mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def sinusoid_table(n: int, dim: int) -> torch.Tensor:
    """VideoMAE's table: (1, n, dim), position p and channel j -> p / 10000^(2 (j // 2) / dim), sin on even j, cos on
    odd j."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    rate = 10000 ** (2 * (torch.arange(dim) // 2) / dim).to(torch.float64)
    angles = pos / rate
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table.float().unsqueeze(0)


def _blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
    blocks = nn.ModuleList(Block(dim, heads, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth))
    for block in blocks:
        block.attn.fused_attn = False  # the reference writes attention out
        block.norm1.eps = block.norm2.eps = 1e-6
    return blocks


class ReferenceVideoMAE(nn.Module):
    """VideoMAE's ``PretrainVisionTransformer``: (B, 3, T, H, W) float clip, (B, N) bool mask -> (B, M, out) for the
    masked tokens."""

    def __init__(self, img_size: int = 224, num_frames: int = 16, patch_size: int = 16, tubelet_size: int = 2,
                 embed_dim: int = 768, depth: int = 12, heads: int = 12, decoder_dim: int = 384,
                 decoder_depth: int = 4, decoder_heads: int = 6, in_chans: int = 3):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        n = (num_frames // tubelet_size) * (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv3d(in_chans, embed_dim, (tubelet_size, patch_size, patch_size),
                                     stride=(tubelet_size, patch_size, patch_size))
        self.register_buffer("pos_embed", sinusoid_table(n, embed_dim), persistent=False)
        self.encoder_blocks = _blocks(embed_dim, depth, heads)
        self.encoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.encoder_to_decoder = nn.Linear(embed_dim, decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sinusoid_table(n, decoder_dim), persistent=False)
        self.decoder_blocks = _blocks(decoder_dim, decoder_depth, decoder_heads)
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.head = nn.Linear(decoder_dim, tubelet_size * patch_size ** 2 * in_chans)
        self.apply(self._init)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = x + self.pos_embed.type_as(x).clone().detach()
        b, _, c = x.shape
        x = x[~mask].reshape(b, -1, c)
        for block in self.encoder_blocks:
            x = block(x)
        x = self.encoder_to_decoder(self.encoder_norm(x))
        b, _, c = x.shape
        pos = self.decoder_pos_embed.expand(b, -1, -1).type_as(x).clone().detach()
        pos_visible, pos_masked = pos[~mask].reshape(b, -1, c), pos[mask].reshape(b, -1, c)
        x = torch.cat([x + pos_visible, self.mask_token + pos_masked], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.head(self.decoder_norm(x[:, -pos_masked.shape[1]:]))


def optimizer(model: nn.Module, lr: float = 1.5e-4, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """``optim_factory.create_optimizer``: no weight decay on 1-D parameters and biases, ``torch.optim.AdamW``."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim == 1 or name.endswith(".bias") or name == "mask_token" else decay).append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def targets(videos: torch.Tensor, mask: torch.Tensor, patch_size: int, tubelet_size: int) -> torch.Tensor:
    """``engine_for_pretraining``: normalized clip (B, 3, T, H, W) -> per-tubelet per-channel normalized pixels of the
    masked tokens (B, M, t*p*p*3)."""
    with torch.no_grad():
        mean = torch.as_tensor(MEAN, device=videos.device)[None, :, None, None, None]
        std = torch.as_tensor(STD, device=videos.device)[None, :, None, None, None]
        unnorm = videos * std + mean
        squeezed = rearrange(unnorm, "b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c", p0=tubelet_size,
                             p1=patch_size, p2=patch_size)
        normed = (squeezed - squeezed.mean(dim=-2, keepdim=True)) / (
            squeezed.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        patches = rearrange(normed, "b n p c -> b n (p c)")
        b, _, c = patches.shape
        return patches[mask].reshape(b, -1, c)


class ReferenceStep:
    """One reference training step on a fixed batch: ``step()`` runs forward, loss, backward, grad norm, AdamW."""

    def __init__(self, model: ReferenceVideoMAE, videos: torch.Tensor, mask: torch.Tensor, precision: str):
        self.model, self.videos, self.mask, self.precision = model, videos, mask, precision
        self.optimizer = optimizer(model)
        self.device = videos.device
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def forward_loss(self) -> torch.Tensor:
        labels = targets(self.videos, self.mask, self.model.patch_size, self.model.tubelet_size)
        with self.autocast():
            return F.mse_loss(self.model(self.videos, self.mask), labels)

    def step(self) -> float:
        """One training step; returns the loss."""
        return self.backward_and_update(self.forward_loss())

    def backward_and_update(self, loss: torch.Tensor) -> float:
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.norm(torch.stack([torch.norm(p.grad.detach(), 2.0) for p in params]), 2.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.grad_norm = float(norm)
        return loss.item()  # the reference logs it every step
