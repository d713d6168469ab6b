"""Token sets: which positions a target's head predicts, and which of them its loss counts.

A token set maps the batch's :class:`~vmim.masking.masks.Masks` (bool ``(B, N)``, True = masked) to
``(query, weight)``: ``query`` bool ``(B, N)`` with the same count M per sample (what the head builds) and
``weight`` float ``(B, M)`` (1 where the loss counts).

* ``masked``: the encoder-masked tokens (MAE, VideoMAE, MaskFeat).
* ``visible``: the encoder's visible tokens (MR-MAE's feature mimicking on the encoder output).
* ``decoder_kept``: VideoMAE V2. The decoder builds every position its running-cell mask keeps (also encoder-visible
  ones, as the reference does), and the loss counts those that the encoder masked. That count may differ between
  samples, which the weights absorb.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..config.registry import LazyRegistry
from ..masking.masks import Masks


def _ones(query: torch.Tensor) -> torch.Tensor:
    b = query.shape[0]
    return torch.ones(b, int(query[0].sum()), device=query.device)


def masked(masks: Masks) -> tuple[torch.Tensor, torch.Tensor]:
    query = masks.encoder
    return query, _ones(query)


def visible(masks: Masks) -> tuple[torch.Tensor, torch.Tensor]:
    query = ~masks.encoder
    return query, _ones(query)


def decoder_kept(masks: Masks) -> tuple[torch.Tensor, torch.Tensor]:
    if masks.decoder is None:
        raise KeyError("token set decoder_kept needs a decoder mask in the batch (config decoder_masking)")
    query = ~masks.decoder
    b = query.shape[0]
    return query, masks.encoder[query].reshape(b, -1).float()


TOKEN_SETS: Mapping[str, Callable[[Masks], tuple[torch.Tensor, torch.Tensor]]] = LazyRegistry("token_sets")
"""Token set -> function, from the registration table (``vmim/meta_arch/schemas.py``)."""
