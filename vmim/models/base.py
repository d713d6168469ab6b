"""The backbone contract, which every registered backbone keeps (``tests/test_contracts.py`` checks each one).

A backbone maps a normalized clip ``(B, C, T, H, W)`` (``T = 1``: an image) and an optional encoder mask
``(B, N)`` (True = masked, the same count per sample) to an :class:`EncoderOutput`. It declares:

* ``grid(shape) -> (T', H', W')``: its token grid (through :func:`vmim.models.grid.token_grid`);
* ``patch_size``, ``embed_dim``, ``depth`` and ``dense``: a visible-only backbone (``dense = False``) encodes only
  the visible tokens (MAE); a dense one encodes all of them, masked ones as a mask token (MaskFeat, SimMIM);
* ``decoder_pos_embed``: the position-embedding kind a decoder head over its grid should use (a ViT: its own
  ``pos_embed.kind``; MViT: ``sincos_3d``);
* ``dense`` True for a backbone that only encodes densely (MViT: pooling needs every token), and ``stem_overlap``:
  pixels by which its patch embedding reads into a neighbouring token's patch (0 for a ViT's non-overlapping
  tubelets; a masked token's pixels can then reach the output through its neighbours' edges);
* ``forward(x, mask, blocks=())``: also returns the outputs of the chosen blocks (before the final norm) in
  :attr:`EncoderOutput.blocks`, for heads that read an inner block (MR-MAE's mimic head); ``dims``: the width
  after each block;
* ``forward_intermediates(x, mask, indices)``: the outputs of chosen blocks (feature targets, probing);
* ``no_weight_decay()``: parameter names (relative to the module) the optimizer never decays;
* ``group_matcher()``: timm's block-id regexes, for layer-wise lr decay.

Heads consume an :class:`EncoderOutput`, never the backbone itself, so a dense and a visible-only backbone serve the
same heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .grid import Grid


@dataclass
class EncoderOutput:
    """Encoder tokens and where they sit on the grid.

    Attributes:
        tokens: ``(B, N_present, D)`` after the final norm.
        present: bool ``(B, N)`` marking the grid positions the tokens occupy, in row-major order (the visible ones
            of a visible-only backbone); None when all N positions are present (dense, or no mask).
        grid: ``(T', H', W')``.
        blocks: requested block index (as asked, e.g. -1) -> that block's output ``(B, N_present, D_i)`` before the
            final norm, class token dropped, at the same positions as ``tokens``.
        index: int ``(B, L)``: the grid position of each of the ``L`` tokens when the encoder ran over local windows
            (LoMaR: ``L`` = K windows x w tokens, window-major; a position in two windows appears twice), else None.
            Token sets and masks then address these ``L`` slots, not the grid.
    """

    tokens: torch.Tensor
    present: torch.Tensor | None
    grid: Grid
    blocks: dict[int, torch.Tensor] = field(default_factory=dict)
    index: torch.Tensor | None = None

    def select(self, block: int | None) -> "EncoderOutput":
        """This output with ``tokens`` replaced by block ``block``'s (None: unchanged).

        Raises:
            KeyError: the block was not requested from the backbone.
            ValueError: the block's tokens sit on another grid (an inner MViT stage).
        """
        if block is None:
            return self
        if block not in self.blocks:
            raise KeyError(f"block {block} was not requested from the backbone (have {sorted(self.blocks)})")
        tokens = self.blocks[block]
        if tokens.shape[1] != self.tokens.shape[1]:
            raise ValueError(f"block {block} has {tokens.shape[1]} tokens, the encoder output {self.tokens.shape[1]}: "
                             "a head reads only blocks on the output grid (the last stage of a multiscale backbone)")
        return replace(self, tokens=tokens, blocks={})
    def at(self, positions: torch.Tensor) -> torch.Tensor:
        """Tokens at the True positions of bool ``(B, N)`` ``positions`` (same count per sample) -> ``(B, M, D)``.

        Raises:
            ValueError: a requested position holds no token (it was masked for a visible-only backbone).
        """
        b, _, d = self.tokens.shape
        if self.present is None:
            return self.tokens[positions].reshape(b, -1, d)
        if bool((positions & ~self.present).any()):
            raise ValueError("requested tokens at positions the encoder did not encode (masked positions of a "
                             "visible-only backbone): use a decoder head or a dense backbone")
        full = self.tokens.new_zeros(b, positions.shape[1], d)
        full[self.present] = self.tokens.reshape(-1, d)
        return full[positions].reshape(b, -1, d)


def block_modules(model: nn.Module) -> list[nn.Module]:
    """Every child of every ``nn.ModuleList`` named ``blocks`` in ``model`` (the transformer blocks of backbones,
    decoder heads and EMA copies), in ``named_modules()`` order: the units FSDP shards and ``train.compile``
    compiles."""
    return [block for name, module in model.named_modules()
            if name.rsplit(".", 1)[-1] == "blocks" and isinstance(module, nn.ModuleList) for block in module]
