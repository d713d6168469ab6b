"""Map-style dataset that turns a :data:`SampleKey` into a training sample with its mask."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from ..masking import MaskGenerator
from .isolation import IsolatedWorker
from .robust import DecodeTimeout, failure_reason, time_limit
from .sampler import SampleKey

MAX_REPLACEMENTS = 20


class ClipSource(Protocol):
    """What a dataset provides: uint8 (C, T, H, W) clips with a label, augmented from ``rng``."""

    modality: str
    clip_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]: ...


def load_repeated(source: ClipSource, index: int, rng: np.random.Generator, repeat: int) -> list[tuple[torch.Tensor, int]]:
    """``repeat`` augmented clips of one sample: decoded once when the source supports it."""
    if repeat > 1 and hasattr(source, "load_repeated"):
        return source.load_repeated(index, rng, repeat)
    return [source.load(index, rng) for _ in range(repeat)]


class MaskedClipDataset:
    """``dataset[(d, i, seed)]`` -> {"clip": uint8 (C,T,H,W), "mask": bool (N,), "label", "dataset", "bad"}.

    The same seed drives augmentation and the mask, so a sample is a pure function of its key. A sample
    that fails to load (corrupt file, decoder error, timeout) is replaced by another index of the same
    dataset drawn from the same seed; the failures travel with the sample in ``"bad"`` as
    ``(dataset, path, reason)`` for the main process to report and count.
    """

    def __init__(self, sources: Sequence[ClipSource], mask_generator: MaskGenerator, patch_size: tuple[int, int, int],
                 decode_timeout_s: float = 0.0, repeat: int = 1, isolate: bool = False):
        self.sources = list(sources)
        self.repeat = repeat
        self.mask_generator = mask_generator
        self.patch_size = patch_size
        self.decode_timeout_s = decode_timeout_s
        # file-reading sources decode in a killable child process (hangs inside C, segfaults); see isolation.py
        self.isolated = IsolatedWorker(self._load_arrays, decode_timeout_s) if isolate else None
        self.timed_out: set[tuple[int, int]] = set()  # per process: samples that hung once fail at once next time

    def token_grid(self, clip_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        t, h, w = clip_shape
        pt, ph, pw = self.patch_size
        return max(t // pt, 1), h // ph, w // pw

    def _load_arrays(self, dataset: int, index: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
        """What the isolated child computes: the clips as numpy arrays (cheap to pickle)."""
        return [(clip.numpy(), label) for clip, label in load_repeated(self.sources[dataset], index, rng, self.repeat)]

    def _load_once(self, dataset: int, index: int, rng: np.random.Generator) -> list[tuple[torch.Tensor, int]]:
        if self.isolated is not None and getattr(self.sources[dataset], "reads_files", False):
            return [(torch.from_numpy(clip), label) for clip, label in self.isolated(dataset, index, rng=rng)]
        with time_limit(self.decode_timeout_s):
            return load_repeated(self.sources[dataset], index, rng, self.repeat)

    def _load(self, dataset: int, index: int, rng: np.random.Generator) -> tuple[list, list]:
        source, failures = self.sources[dataset], []
        for _ in range(MAX_REPLACEMENTS):
            try:
                if (dataset, index) in self.timed_out:
                    raise DecodeTimeout("timed out before in this worker; not retried")
                return self._load_once(dataset, index, rng), failures
            except Exception as err:  # any failure of one file must not stop the run; it is reported instead
                if isinstance(err, DecodeTimeout):
                    self.timed_out.add((dataset, index))
                path = source.describe(index) if hasattr(source, "describe") else f"index {index}"
                failures.append((dataset, path, failure_reason(err)))
                index = int(rng.integers(len(source)))
        raise RuntimeError(f"{MAX_REPLACEMENTS} samples in a row failed to load; last: {failures[-1]}")

    def __getitem__(self, key: SampleKey) -> dict:
        """One sample; with ``repeat > 1`` clip, mask and label gain a leading repeat dimension."""
        dataset, index, seed = key
        rng = np.random.default_rng(seed)
        clips, failures = self._load(dataset, index, rng)
        grid = self.token_grid(tuple(clips[0][0].shape[1:]))
        masks = [torch.from_numpy(self.mask_generator(grid, rng)) for _ in clips]
        if self.repeat == 1:
            (clip, label), = clips
            return {"clip": clip, "mask": masks[0], "label": label, "dataset": dataset, "bad": failures}
        return {"clip": torch.stack([c for c, _ in clips]), "mask": torch.stack(masks),
                "label": torch.tensor([label for _, label in clips]), "dataset": dataset, "bad": failures}


def collate(samples: list[dict]) -> dict:
    """default_collate (repeated samples are flattened into the batch); ``"bad"`` failures become one list."""
    failures = [f for s in samples for f in s["bad"]]
    if samples[0]["clip"].ndim == 5:  # repeated sampling: (repeat, C, T, H, W) per sample
        repeat = samples[0]["clip"].shape[0]
        batch = {k: torch.cat([s[k] for s in samples]) for k in ("clip", "mask", "label")}
        batch["dataset"] = torch.tensor([s["dataset"] for s in samples]).repeat_interleave(repeat)
    else:
        batch = default_collate([{k: v for k, v in s.items() if k != "bad"} for s in samples])
    batch["bad"] = failures
    return batch
