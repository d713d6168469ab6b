"""A validation set carved from a training dataset (``eval.val_fraction``, ``eval.val_seed``), and what the rest
trains on.

Decisions:

* **Carved before the training subset.** The validation samples are chosen from the whole list first; the entry's
  ``fraction`` subset (:func:`vmim.data.subset.stratified_subset`, its own ``subset_seed``) is then taken from what
  is left, so a validation sample is never trained on, whatever the fraction.
* **Stratified and seeded.** Per class ``round(val_fraction x count)`` samples, at least one, drawn from a
  generator seeded by ``val_seed`` alone (as the training subset): every rank, every resume and every later run
  with the same list and seed carve the same samples. A class with a single sample stays whole in training (the
  class would otherwise vanish from it); a class is never carved whole.
* **One level of indices.** The training side is one :class:`~vmim.data.subset.SubsetSource` over the original
  source with the composed indices (remainder, then subset), never a subset of a subset: attributes a subset
  forwards (a file source's ``entries``) would otherwise describe the whole list.
* **Recorded.** :meth:`Split.rows` lists every held-out sample (dataset, index in the list, description, label) for
  ``<run>/val_split.tsv``, and :meth:`Split.digest` fingerprints the carve, so a resumed run can check that it
  carved the same one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from .subset import SubsetSource, source_labels, stratified_subset


def carve_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation, rest): sorted indices of ``fraction`` of each label's samples (at least one, never all of a
    class; none of a class of one) and of the others. ``labels`` is (n,) int."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        chosen.append(rng.permutation(members)[:take])
    val = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return val, np.setdiff1d(np.arange(len(labels)), val)


@dataclass
class Split:
    """A training dataset's carve: ``val`` and ``train`` index the original ``source`` (``train`` after the entry's
    ``fraction`` subset of the rest)."""

    name: str
    source: Any
    val: np.ndarray
    train: np.ndarray
    rest: int
    """Samples left for training before the ``fraction`` subset."""

    def val_source(self) -> SubsetSource:
        return SubsetSource(self.source, self.val)

    def train_source(self) -> SubsetSource:
        return SubsetSource(self.source, self.train)

    def rows(self) -> list[tuple[str, int, str, int]]:
        """(dataset, index in the list, description, label) of every held-out sample."""
        labels = source_labels(self.source)
        describe = getattr(self.source, "describe", lambda i: f"index {i}")
        return [(self.name, int(i), describe(int(i)), int(labels[i])) for i in self.val]

    def digest(self) -> str:
        """A fingerprint of the carve: the list's length and the held-out indices."""
        h = hashlib.sha256(f"{len(self.source)}:".encode())
        h.update(np.asarray(self.val, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def carve(name: str, source: Any, val_fraction: float, val_seed: int, fraction: float = 1.0,
          subset_seed: int = 0) -> Split:
    """Carve ``val_fraction`` of each class of ``source`` for validation, then take the ``fraction`` subset
    (``subset_seed``) of the rest for training."""
    labels = source_labels(source)
    val, rest = carve_indices(labels, val_fraction, val_seed)
    train = rest if fraction >= 1 else rest[stratified_subset(labels[rest], fraction, subset_seed)]
    return Split(name, source, val, np.sort(train), len(rest))


def write_split(splits: list[Split], path) -> None:
    """``val_split.tsv``: a header, then one line per held-out sample: dataset, index, description, label."""
    lines = ["dataset\tindex\tsample\tlabel"]
    for split in splits:
        lines += [f"{name}\t{index}\t{what}\t{label}" for name, index, what, label in split.rows()]
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def recorded_split(path) -> set[tuple[str, int]] | None:
    """(dataset, index) of every held-out sample a ``val_split.tsv`` lists; None when there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return {(row[0], int(row[1])) for row in rows if len(row) >= 2 and row[1].lstrip("-").isdigit()}


def held_out(splits: list[Split]) -> set[tuple[str, int]]:
    """(dataset, index) of every held-out sample of ``splits``."""
    return {(split.name, int(i)) for split in splits for i in split.val}


__all__ = ["Split", "carve", "carve_indices", "held_out", "recorded_split", "write_split"]
