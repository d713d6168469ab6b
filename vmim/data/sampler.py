"""Deterministic, resumable batch sampler over a weighted mix of datasets.

Every batch comes from one dataset (so all its clips share a shape and a masked-token count); the
datasets are interleaved in a seeded random order. Everything derives from ``(seed, epoch)``:
the order of batches, the indices in each, and a per-sample seed for augmentation and masking. Ranks
take disjoint slices of the same global batch, and ``start_batch`` skips what a resumed run already
consumed, so a restarted run sees exactly the batches an uninterrupted one would.

Batches also carry what the main process knows for the worker that fetches them (:class:`KeyBatch`): the key that
worker will fetch next (read ahead), the samples known to fail (skipped unopened), and the size to resize the batch's
clips to (progressive resolution: a function of the epoch, so a resumed run gets the same). The batch is the only
message that goes from the main process to a data-loader worker (persistent workers keep their own copy of the
dataset, which the main process cannot reach), so these ride along with it.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

SampleKey = tuple[int, int, int]  # (dataset id, index in that dataset, per-sample seed)


class KeyBatch(list):
    """A batch of :data:`SampleKey` with hints for the dataset.

    ``next_key``: the first key of the batch that the same data-loader worker gets next (the loader hands batches to
    its workers in turn), or None. The dataset may start reading it early; a wrong guess costs only that read.
    ``known_bad``: the ``(dataset, index)`` pairs known to fail when the batch was handed out (from the main
    process's :class:`~vmim.data.bad_files.BadFileMonitor`). ``img_size``: the epoch's stage size, or None.
    """

    next_key: SampleKey | None = None
    known_bad: frozenset[tuple[int, int]] = frozenset()
    img_size: int | None = None
    """Resize this batch's clips to this side (progressive resolution); None: as the sources crop them."""


def batches_per_dataset(sizes: Sequence[int], weights: Sequence[float], global_batch: int,
                        total: int | None = None) -> list[int]:
    """Batches each dataset contributes per epoch: size x weight / global batch (at least 1), or, with
    ``total``, that mix rescaled by largest remainders to sum to ``total``."""
    share = np.array([s * w for s, w in zip(sizes, weights)], dtype=np.float64) / global_batch
    if total is None:
        return [max(1, int(x)) for x in share]
    exact = share / share.sum() * total
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: total - counts.sum()]] += 1
    return counts.tolist()


class MixedBatchSampler:
    """Yields lists of :data:`SampleKey` for this rank.

    Args:
        sizes: length of each dataset.
        weights: passes per epoch over each dataset (repeat factors).
        batch_size: samples per rank per batch.
        world_size, rank: data-parallel layout.
        seed: run seed.
        batches_per_epoch: fixed epoch length in batches, or None for one weighted pass.
        img_size_at: epoch -> the size every batch of that epoch is resized to (:func:`stage_size`), or None.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, world_size: int = 1,
                 rank: int = 0, seed: int = 0, batches_per_epoch: int | None = None,
                 img_size_at: Callable[[int], int | None] | None = None):
        self.sizes, self.weights = list(sizes), list(weights)
        self.img_size_at = img_size_at
        self.batch_size, self.world_size, self.rank, self.seed = batch_size, world_size, rank, seed
        self.counts = batches_per_dataset(sizes, weights, batch_size * world_size, batches_per_epoch)
        self.epoch = 0
        self.start_batch = 0
        self.loader_workers = 0  # set by the loader's builder: the stride of next_key hints (0 workers: 1)
        self.known_bad: Callable[[], frozenset[tuple[int, int]]] | None = None  # read as each batch is handed out

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return sum(self.counts)

    def _epoch_plan(self) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        global_batch = self.batch_size * self.world_size
        indices, seeds = [], []
        for size, count in zip(self.sizes, self.counts):
            needed = count * global_batch
            perms = [rng.permutation(size) for _ in range(-(-needed // size))]
            indices.append(np.concatenate(perms)[:needed].reshape(count, global_batch))
            seeds.append(rng.integers(0, 2**31, size=(count, global_batch)))
        order = rng.permutation(np.repeat(np.arange(len(self.sizes)), self.counts))
        return order, indices, seeds

    def __iter__(self) -> Iterator[KeyBatch]:
        order, indices, seeds = self._epoch_plan()
        position = np.zeros(len(self.sizes), dtype=int)
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        batches = []
        for step, dataset in enumerate(order):
            j = position[dataset]
            position[dataset] += 1
            if step >= self.start_batch:
                batches.append([(int(dataset), int(i), int(s))
                                for i, s in zip(indices[dataset][j, lo:hi], seeds[dataset][j, lo:hi])])
        batches = with_next_keys(batches, self.loader_workers)
        size = None if self.img_size_at is None else self.img_size_at(self.epoch)
        for batch in batches:
            batch.img_size = size
        return self._hand_out(batches)

    def _hand_out(self, batches: list[KeyBatch]) -> Iterator[KeyBatch]:
        for batch in batches:
            if self.known_bad is not None:
                batch.known_bad = self.known_bad()  # as of now: the loader asks for batches as it needs them
            yield batch


def stage_size(schedule: Sequence[tuple[int, int]], epoch: int) -> int | None:
    """The size of the last ``(first epoch, size)`` stage that has begun by ``epoch`` (None before any, or none)."""
    started = [size for first, size in schedule if first <= epoch]
    return started[-1] if started else None


def with_next_keys(batches: Sequence[Sequence[SampleKey]], loader_workers: int) -> list[KeyBatch]:
    """The batches as :class:`KeyBatch`, each hinting the first key of the batch ``max(1, loader_workers)`` later:
    the next one its DataLoader worker (or, with 0 workers, the main process) will fetch."""
    stride = max(1, loader_workers)
    out = [KeyBatch(batch) for batch in batches]
    for batch, later in zip(out, out[stride:]):
        batch.next_key = later[0] if later else None
    return out
