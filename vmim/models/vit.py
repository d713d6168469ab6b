"""Vision Transformer backbone for clips and images (an image is a clip of one frame).

Images: a ``(B, C, 1, H, W)`` input is repeated to ``tubelet_size`` frames before the tubelet patch
embedding (OmniMAE's ``PadIm2Video``), so images and videos share every weight, and its tokens take the
t=0 slice of the position table. By default the encoder processes only the visible tokens (MAE / VideoMAE);
``dense=True`` keeps every token and replaces the masked ones by a learned mask token right after the patch
embedding, before the position embedding (SimMIM, MaskFeat with a ViT), so that linear heads can read them.

Relative positions (SimMIM, BEiT): ``rel_pos_bias`` adds a learned per-head bias for each token offset to every
block's attention logits (:mod:`vmim.models.rel_pos`), either one table ``shared`` by all blocks (SimMIM
pretraining, ``rel_pos.table``) or one ``per_block`` (fine-tuning, ``blocks.<i>.rel_pos.table``), usually with
``pos_embed: none``. The visible-only encoder gathers each sample's rows and columns of present tokens from the grid
bias, so both encoder modes take it.

Token layouts (:mod:`vmim.models.layouts`): the ViT is patch embedding + blocks + norm over a layout, picked from
``dense`` and ``mask_in`` (and per call, whether ``windows`` are given): the layout says which tubelets are embedded,
how masked ones are filled in, their positions, the relative position bias among them, and how the blocks' sequences
map back to the grid. The layouts hold no parameters: ``mask_token`` and the tables stay this module's, so the
state-dict keys are those of checkpoints written before layouts existed.

Local windows (LoMaR): given ``windows`` (B, K, wt, wh, ww) grid indices (:func:`vmim.masking.window_mask`) and a
mask over those K x w window tokens, the dense encoder embeds only the window tokens and runs each window as its own
sequence, B x K sequences of w tokens (plus the class token, if any), with the relative position bias of the window
grid: attention stays inside the window, so the cost does not grow with the image. Outputs come back window-major,
(B, K x w, D), with ``EncoderOutput.index`` saying where each token sits on the grid. A window reads the bias
table's offsets unchanged (an offset means the same at any grid size), so fine-tuning on the whole image uses the
same tables: offsets beyond a window's were never trained there and start at their zero init.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import EncoderOutput
from .flops import block_macs, conv_macs
from .grid import token_grid
from .layers import Block, init_weights
from .layouts import Laid, TokenLayout, mask_ins, select_layout
from .pos_embed import PositionEmbedding
from .rel_pos import RelativePositionBias
from .schemas import VIT_SIZES, ViTSize  # noqa: F401  (ViTSize: re-exported)

REL_POS_BIASES = ("none", "shared", "per_block")


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
        return token_grid(shape, self.patch_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, T'*H'*W', D); with ``keep`` only some tokens, (B, M, D): bool (B, N) (the same count
        per sample) keeps those, int (B, M) grid indices gathers those (repeats allowed: LoMaR's windows). Kept
        tubelets go through the conv's weights as one linear layer (kernel = stride, so the conv is exactly that),
        skipping the others' work (90 % of it under VideoMAE's masking)."""
        x = image_to_clip(x, self.patch_size[0])
        if keep is None:
            return self.proj(x).flatten(2).transpose(1, 2)
        t, p, _ = self.patch_size
        patches = rearrange(x, "b c (n t) (h p) (w q) -> b (n h w) (c t p q)", t=t, p=p, q=p)
        if keep.dtype == torch.bool:
            patches = patches[keep].reshape(x.shape[0], -1, patches.shape[-1])
        else:
            patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


class VisionTransformer(nn.Module):
    """ViT encoder over space-time tubelets; keeps the contract of :mod:`vmim.models.base`.

    Args:
        embed_dim, depth, num_heads: transformer size.
        patch_size: spatial patch in pixels.
        tubelet_size: frames per token.
        drop_path: stochastic-depth rate of the last block (linear ramp from 0).
        grad_checkpointing: recompute block activations in backward.
        pos_embed: sincos_3d, sincos_1d, learned or none (see :class:`~vmim.models.pos_embed.PositionEmbedding`).
        dense: encode every token, masked ones as a learned mask token (else only the visible ones).
        video_grid: the training clip's token grid (needed by a learned position table).
        cls_token: prepend a learned class token (MAE, timm); its position embedding is folded into it.
        global_pool: ``avg`` (mean of the grid tokens) or ``token`` (the class token) for :meth:`forward_features`.
        fc_norm: normalize the pooled features instead of every token (VideoMAE / MAE fine-tuning); ``norm`` is then
            an identity.
        rel_pos_bias: none, shared (one table for all blocks) or per_block (module docstring); needs ``video_grid``.
        layer_scale: initial value of each block's LayerScale (0 = none).
        mask_in: where a dense encoder puts its mask token: ``tokens`` (a learned (D,) token replaces a masked token
            after the patch embedding: SimMIM, MaskFeat) or ``pixels`` (a learned (C,) colour replaces a masked
            tubelet's pixels before it: FastMIM).
    """

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int = 16, tubelet_size: int = 2,
                 in_chans: int = 3, mlp_ratio: float = 4.0, drop_path: float = 0.0, grad_checkpointing: bool = False,
                 pos_embed: str = "sincos_3d", dense: bool = False, video_grid: tuple[int, int, int] | None = None,
                 cls_token: bool = False, global_pool: str = "avg", fc_norm: bool = False, rel_pos_bias: str = "none",
                 layer_scale: float = 0.0, mask_in: str = "tokens"):
        super().__init__()
        if mask_in not in mask_ins():
            raise ValueError(f"mask_in must be {' or '.join(mask_ins())}; got {mask_in!r}")
        if global_pool not in ("avg", "token") or (global_pool == "token" and not cls_token):
            raise ValueError(f"global_pool must be avg, or token with cls_token=True; got {global_pool!r}")
        if rel_pos_bias not in REL_POS_BIASES:
            raise ValueError(f"rel_pos_bias must be one of {REL_POS_BIASES}; got {rel_pos_bias!r}")
        if rel_pos_bias != "none" and video_grid is None:
            raise ValueError("a relative position bias needs the training clip's token grid (video_grid)")
        self.rel_pos_bias = rel_pos_bias
        self.embed_dim, self.depth, self.dense, self.global_pool = embed_dim, depth, dense, global_pool
        self.num_prefix_tokens = int(cls_token)
        self.patch_embed = PatchEmbed3d(patch_size, tubelet_size, in_chans, embed_dim)
        self.pos_embed = PositionEmbedding(pos_embed, embed_dim, video_grid)
        self.mask_in = mask_in
        self.layout: TokenLayout = select_layout(dense, mask_in)  # a plain object: no parameters, no state
        token_shape = self.layout.mask_token_shape(embed_dim, in_chans)
        self.mask_token = nn.Parameter(torch.zeros(token_shape)) if token_shape is not None else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]  # linear ramp, no tensor (meta-safe)
        block_grid = video_grid if rel_pos_bias == "per_block" else None
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, drop_path=r, layer_scale=layer_scale,
                                          rel_pos_grid=block_grid) for r in rates)
        self.rel_pos = RelativePositionBias(num_heads, video_grid) if rel_pos_bias == "shared" else None
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(embed_dim, eps=1e-6)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if fc_norm else nn.Identity()
        self.grad_checkpointing = grad_checkpointing
        self.apply(init_weights)
        for token in (self.mask_token, self.cls_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)

    stem_overlap = 0
    """Tubelets do not overlap: a masked token's pixels reach nothing."""

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return self.patch_embed.patch_size

    @property
    def dims(self) -> list[int]:
        """Width after each block (constant in a ViT)."""
        return [self.embed_dim] * self.depth

    @property
    def decoder_pos_embed(self) -> str:
        """Decoder heads use the encoder's own position-embedding kind (a decoder takes sincos_3d for learned and
        none: :class:`~vmim.models.heads.DecoderHead`)."""
        return self.pos_embed.kind

    def grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        return self.patch_embed.grid(shape)

    def no_weight_decay(self) -> set[str]:
        """Position, mask and class tokens, where present (norms and biases are excluded by rank in the optimizer)."""
        names = {name for name in ("mask_token", "cls_token") if getattr(self, name) is not None}
        names |= {name for name, _ in self.named_parameters() if name.endswith("rel_pos.table")}  # as BEiT / SimMIM
        return names | ({"pos_embed.table"} if self.pos_embed.kind == "learned" else set())

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style groups: the stem is group 0, block i is group i + 1, and the final norm comes after the blocks
        (timm's ``(99999,)`` marker; layer-wise lr decay gives it, like the unmatched fc_norm, the full lr as MAE), and
        so does a shared relative position table (BEiT's layer id for its shared ``rel_pos_bias``)."""
        return {"stem": r"^patch_embed|^pos_embed|^mask_token|^cls_token",
                "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,)), (r"^rel_pos", (99999,))]}

    def layout_for(self, windowed: bool) -> TokenLayout:
        """This backbone's layout, or the local-window one for a batch with windows (ValueError if it cannot run
        them)."""
        return select_layout(self.dense, self.mask_in, True) if windowed else self.layout

    def lay_out(self, x: torch.Tensor, mask: torch.Tensor | None, windows: torch.Tensor | None = None) -> Laid:
        """Patch + position embedding of the tokens this call's layout keeps, as sequences without the class token."""
        return self.layout_for(windows is not None).embed(self, x, mask, windows)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None, windows: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Patch + position embedding; visible-only: the visible tokens; the class token first, if any. Returns (tokens
        (B, prefix + N_present, D), present or None); with ``windows``, (B*K, prefix + w, D) and None."""
        laid = self.lay_out(x, mask, windows)
        return self._with_prefix(laid.tokens), laid.present

    def _with_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """(S, L, D) sequences -> (S, prefix + L, D): the class token first, if any."""
        if self.cls_token is None:
            return tokens
        return torch.cat([self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)

    def _biases(self, laid: Laid) -> Iterator[torch.Tensor | None]:
        """Each block's additive attention logits in block order (None without a relative position bias), among the
        tokens the layout keeps: a shared table is mapped once, per-block tables one at a time (a clip's 12 (h, N, N)
        biases at once would be GBs)."""
        prefix = self.num_prefix_tokens
        shared = None if self.rel_pos is None else laid.fit_bias(self.rel_pos(laid.grid), prefix)
        for block in self.blocks:
            yield (laid.fit_bias(block.rel_pos(laid.grid), prefix) if self.rel_pos_bias == "per_block" else shared)

    def _run_block(self, index: int, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        block = self.blocks[index]
        if self.grad_checkpointing and self.training:
            return checkpoint(block, tokens, None, bias, use_reentrant=False)
        return block(tokens, None, bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, blocks: Sequence[int] = (),
                windows: torch.Tensor | None = None) -> EncoderOutput:
        """Encode a clip.

        Args:
            x: (B, C, T, H, W) normalized clip (T = 1 for images).
            mask: (B, N) bool, True = masked, the same count per sample; None keeps every token. With ``windows``:
                (B, K*w) over the window tokens.
            blocks: block indices (negative from the end) whose outputs to return as well.
            windows: (B, K, wt, wh, ww) int grid indices of K local windows (LoMaR; module docstring), or None.
        Returns:
            EncoderOutput with tokens (B, N_present, D) after the final LayerNorm (windows: (B, K*w, D) and
            ``index``), and ``blocks``.
        """
        wanted = {b % self.depth: b for b in blocks}
        laid = self.lay_out(x, mask, windows)
        tokens, kept = self._with_prefix(laid.tokens), {}
        for i, bias in enumerate(self._biases(laid)):
            tokens = self._run_block(i, tokens, bias)
            if i in wanted:
                kept[wanted[i]] = laid.merge(tokens[:, self.num_prefix_tokens:])
        out = self.norm(laid.merge(tokens[:, self.num_prefix_tokens:]))
        return EncoderOutput(out, laid.present, self.grid(x.shape), kept, laid.index)

    def forward_intermediates(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                              indices: int | list[int] | None = None, norm: bool = False
                              ) -> tuple[EncoderOutput, list[torch.Tensor]]:
        """The final output and the outputs of chosen blocks.

        Args:
            indices: block indices (negative counts from the end), or an int n for the last n blocks; None = all.
            norm: apply the final norm to the intermediates too.
        Returns:
            (final EncoderOutput, [(B, N_present, D) per chosen block, in block order]; no class token).
        """
        if indices is None:
            wanted = set(range(self.depth))
        elif isinstance(indices, int):
            wanted = set(range(self.depth - indices, self.depth))
        else:
            wanted = {i % self.depth for i in indices}
        laid = self.lay_out(x, mask)
        tokens, outputs = self._with_prefix(laid.tokens), []
        for i, bias in enumerate(self._biases(laid)):
            tokens = self._run_block(i, tokens, bias)
            if i in wanted:
                out = tokens[:, self.num_prefix_tokens:]
                outputs.append(self.norm(out) if norm else out)
        return EncoderOutput(self.norm(tokens[:, self.num_prefix_tokens:]), laid.present, self.grid(x.shape)), outputs

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, T, H, W) -> (B, D) pooled features, as timm's ViT: the final norm on every token (unless fc_norm),
        then the class token or the mean of the grid tokens, then fc_norm (if on)."""
        laid = self.lay_out(x, mask)
        tokens = self._with_prefix(laid.tokens)
        for i, bias in enumerate(self._biases(laid)):
            tokens = self._run_block(i, tokens, bias)
        tokens = self.norm(tokens)
        pooled = tokens[:, 0] if self.global_pool == "token" else tokens[:, self.num_prefix_tokens:].mean(dim=1)
        return self.fc_norm(pooled)

    def macs(self, shape: Sequence[int], n_masked: int = 0, windows: Sequence[int] | None = None) -> int:
        """Multiply-adds of one forward on an input of ``shape`` (B, C, T, H, W) with ``n_masked`` masked tokens per
        sample (:mod:`vmim.models.flops`): the patch embedding of the encoded tokens (visible-only: the visible ones;
        an image is repeated to the tubelet), then the blocks over the class token and the encoded tokens; with
        ``windows`` (K, w) (LoMaR), the blocks over B x K sequences of the class token and w window tokens."""
        n = math.prod(self.grid(tuple(shape)))
        embedded, sequences, length = self.layout_for(windows is not None).counts(shape[0], n, n_masked, windows)
        return conv_macs(self.patch_embed.proj, embedded) + sum(
            block_macs(blk, sequences, self.num_prefix_tokens + length) for blk in self.blocks)


def _vit(size: str, **kwargs) -> VisionTransformer:
    s = VIT_SIZES[size]
    return VisionTransformer(s.embed_dim, s.depth, s.num_heads, mlp_ratio=s.mlp_ratio, **kwargs)


def vit_test(**kwargs) -> VisionTransformer:
    """64 wide, 2 blocks: for tests."""
    return _vit("vit_test", **kwargs)


def vit_tiny(**kwargs) -> VisionTransformer:
    return _vit("vit_tiny", **kwargs)


def vit_small(**kwargs) -> VisionTransformer:
    return _vit("vit_small", **kwargs)


def vit_base(**kwargs) -> VisionTransformer:
    return _vit("vit_base", **kwargs)


def vit_large(**kwargs) -> VisionTransformer:
    return _vit("vit_large", **kwargs)


def vit_huge(**kwargs) -> VisionTransformer:
    return _vit("vit_huge", **kwargs)


def vit_giant(**kwargs) -> VisionTransformer:
    """VideoMAE V2's ViT-g: 1408 wide, 40 blocks, 16 heads, MLP 6144 (about 1.0B parameters); shard it
    (``train.parallel: fsdp``)."""
    return _vit("vit_giant", **kwargs)
