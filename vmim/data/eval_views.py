"""Evaluation data: every sample of a video or image source as V = views x crops fixed clips, sharded over ranks.

A file that fails to load is skipped and reported (``"failed": [(path, reason)]`` and ``"failed_index"`` in its
batch), never replaced by
another sample as in pretraining: a substitute would bias accuracy. Each sample is seen exactly once over all ranks
(rank r takes indices r, r + world_size, ...; no padding), so per-video predictions can be gathered and counted.

``short_side`` 0 means the source's default: ``size`` for videos (VideoMAE / SlowFast 3-crop testing),
``round(size / 0.875)`` for images (resize 256, centre crop 224).

Known bad files (``known_bad``: {index: reason}, from the caller's
:class:`~vmim.data.bad_files.BadFileMonitor`) fail again at once with their first reason, without opening the file:
a validation pass every epoch (twice with an EMA) and the probe's two feature passes decode a broken file once and
report it once. The loader is a :class:`~vmim.data.lifetime.WorkerLoader` like every vmim loader, and
:meth:`MultiViewDataset.close` ends an isolated decode child of the calling process (0 workers) when the pass ends,
stopped or not, so none outlives it.

Named ``eval_views``, not ``test_views``: pytest collects modules and functions named ``test_*``.
"""

from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .bad_files import failure_reason
from .isolation import IsolatedWorker
from .lifetime import WorkerLoader, init_loader_worker
from .time_limit import time_limit
from .transforms import TEST_CROP_POSITIONS

CHANNELS = 3  # video and image sources decode RGB


class MultiViewDataset(Dataset):
    """Map-style over source indices: ``{"clips": uint8 (V, C, T, S, S), "label": int, "index": i}``, V =
    ``num_views * num_crops`` view-major, or ``{"failed": (path, reason), "index": i}`` when loading raises (or times
    out, or is in ``known_bad``: then with the reason it failed with before, and the file is not opened)."""

    def __init__(self, source, num_views: int, num_crops: int, short_side: int = 0, decode_timeout_s: float = 0.0,
                 isolate: bool = False, known_bad: Mapping[int, str] | None = None):
        check_views(source, num_views, num_crops, short_side)
        self.source, self.num_views, self.num_crops = source, num_views, num_crops
        self.short_side, self.decode_timeout_s = short_side, decode_timeout_s
        self.known_bad = dict(known_bad or {})
        self.isolated = IsolatedWorker(self._load_arrays, decode_timeout_s) if isolate else None  # see isolation.py

    def _load_arrays(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        clips, label = self.source.test_views(index, self.num_views, self.num_crops, self.short_side)
        return clips.numpy(), label

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        if self.isolated is not None:
            clips, label = self.isolated(index, rng=np.random.default_rng(0))  # views are fixed: rng unused
            return torch.from_numpy(clips), label
        with time_limit(self.decode_timeout_s):
            return self.source.test_views(index, self.num_views, self.num_crops, self.short_side)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def clip_shape(self) -> tuple[int, int, int, int, int]:
        """(V, C, T, S, S) of one sample's clips."""
        return (self.num_views * self.num_crops, CHANNELS, *self.source.clip_shape)

    def close(self) -> None:
        """End this process's isolated decode child, if any (a later load forks a fresh one)."""
        if self.isolated is not None:
            self.isolated.close()

    def __getitem__(self, index: int) -> dict:
        if index in self.known_bad:
            return {"failed": (self.source.describe(index), self.known_bad[index]), "index": index}
        try:
            clips, label = self._load(index)
        except Exception as err:  # one bad file must not stop the evaluation: it is skipped and counted instead
            return {"failed": (self.source.describe(index), failure_reason(err)), "index": index}
        return {"clips": clips, "label": label, "index": index}


def check_views(source, num_views: int, num_crops: int, short_side: int) -> None:
    """Raise ValueError for settings that would fail every sample (they must not be counted as bad files)."""
    if num_crops not in TEST_CROP_POSITIONS:
        raise ValueError(f"num_crops must be one of {tuple(TEST_CROP_POSITIONS)}, got {num_crops}")
    if num_views < 1 or (source.modality == "image" and num_views != 1):
        raise ValueError(f"num_views must be >= 1 for videos and 1 for images, got {num_views} ({source.modality})")
    if short_side and short_side < source.size:
        raise ValueError(f"short_side must be 0 (default) or >= the crop size {source.size}, got {short_side}")


def collate_views(samples: Sequence[dict], clip_shape: Sequence[int] | None = None) -> dict:
    """Batch of the loaded samples: ``clips`` uint8 (B, V, C, T, S, S), ``label`` and ``index`` int64 (B,), and
    ``failed``: [(path, reason)] of the others. With every sample failed, B = 0: clips has shape (0, *clip_shape),
    or (0,) when ``clip_shape`` is not given (the loader of :func:`build_test_loader` gives it)."""
    loaded = [s for s in samples if "failed" not in s]
    if loaded:
        clips = torch.stack([s["clips"] for s in loaded])
    else:
        clips = torch.empty((0, *(clip_shape or ())), dtype=torch.uint8)
    return {"clips": clips,
            "label": torch.tensor([s["label"] for s in loaded], dtype=torch.int64),
            "index": torch.tensor([s["index"] for s in loaded], dtype=torch.int64),
            "failed": [s["failed"] for s in samples if "failed" in s],
            "failed_index": torch.tensor([s["index"] for s in samples if "failed" in s], dtype=torch.int64)}


def shard(num_samples: int, world_size: int, rank: int) -> range:
    """Indices of ``rank``: rank, rank + world_size, ... (no padding: every index on exactly one rank)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got rank={rank}")
    return range(rank, num_samples, world_size)


def build_test_loader(source, num_views: int, num_crops: int, short_side: int, batch_size: int, num_workers: int = 0,
                      world_size: int = 1, rank: int = 0, decode_timeout_s: float = 0.0,
                      isolate: bool = True, known_bad: Mapping[int, str] | None = None) -> DataLoader:
    """In-order loader over this rank's shard of ``source``, batches as :func:`collate_views` makes them;
    ``isolate`` decodes in a killable child process (``data.decode_isolation``); ``known_bad`` ({index: reason})
    fail at once without being opened."""
    dataset = MultiViewDataset(source, num_views, num_crops, short_side, decode_timeout_s, isolate, known_bad)
    return WorkerLoader(Subset(dataset, shard(len(dataset), world_size, rank)), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=partial(collate_views, clip_shape=dataset.clip_shape),
                        pin_memory=torch.cuda.is_available(), worker_init_fn=init_loader_worker)
