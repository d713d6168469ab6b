"""Map-style dataset that turns a :data:`SampleKey` into a training sample with its mask."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch

from ..masking import MaskGenerator
from .sampler import SampleKey


class ClipSource(Protocol):
    """What a dataset provides: uint8 (C, T, H, W) clips with a label, augmented from ``rng``."""

    modality: str
    clip_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]: ...


class MaskedClipDataset:
    """``dataset[(d, i, seed)]`` -> {"clip": uint8 (C,T,H,W), "mask": bool (N,), "label", "dataset"}.

    The same seed drives augmentation and the mask, so a sample is a pure function of its key.
    """

    def __init__(self, sources: Sequence[ClipSource], mask_generator: MaskGenerator, patch_size: tuple[int, int, int]):
        self.sources = list(sources)
        self.mask_generator = mask_generator
        self.patch_size = patch_size

    def token_grid(self, clip_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        t, h, w = clip_shape
        pt, ph, pw = self.patch_size
        return max(t // pt, 1), h // ph, w // pw

    def __getitem__(self, key: SampleKey) -> dict:
        dataset, index, seed = key
        source = self.sources[dataset]
        rng = np.random.default_rng(seed)
        clip, label = source.load(index, rng)
        mask = self.mask_generator(self.token_grid(tuple(clip.shape[1:])), rng)
        return {"clip": clip, "mask": torch.from_numpy(mask), "label": label, "dataset": dataset}
