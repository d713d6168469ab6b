"""A fixed, label-stratified fraction of a dataset (low-label fine-tuning: ``data.datasets.<name>.fraction``).

Decision: the subset is chosen per class (``round(fraction x count)``, at least one sample of every class) from a
generator seeded by ``subset_seed`` alone, so every rank, every resume and every later run with the same seed trains
on the same labeled samples, and a 10 % run keeps the class balance of the list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def source_labels(source: Any) -> np.ndarray:
    """(n,) int labels of every sample of a source, without opening a file (-1 = unlabeled)."""
    if isinstance(source, SubsetSource):  # it forwards ``entries`` (the whole list's): its own labels come first
        return source.labels
    if hasattr(source, "entries"):
        return np.array([entry.label for entry in source.entries], dtype=np.int64)
    return np.asarray(source.labels, dtype=np.int64)


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``fraction`` of each label's samples (at least one each)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = max(1, int(round(fraction * len(members))))
        chosen.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(chosen))


class SubsetSource:
    """The samples ``indices`` of ``source``, re-indexed 0..len-1; every other attribute is the source's."""

    def __init__(self, source: Any, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.labels = source_labels(source)[self.indices]

    def __getattr__(self, name: str) -> Any:
        if name in ("source", "indices", "labels"):  # not set yet (unpickling): never recurse
            raise AttributeError(name)
        return getattr(self.source, name)

    def __len__(self) -> int:
        return len(self.indices)

    def describe(self, index: int) -> str:
        source = self.source
        return source.describe(int(self.indices[index])) if hasattr(source, "describe") else f"index {index}"

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        return self.source.load(int(self.indices[index]), rng)

    def load_repeated(self, index: int, rng: np.random.Generator, repeat: int) -> list[tuple[torch.Tensor, int]]:
        return self.source.load_repeated(int(self.indices[index]), rng, repeat)

    def read(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        return self.source.read(int(self.indices[index]), rng)

    def test_views(self, index: int, *args, **kwargs) -> tuple[torch.Tensor, int]:
        return self.source.test_views(int(self.indices[index]), *args, **kwargs)
