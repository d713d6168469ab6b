"""Labels of supervised datasets: how many classes a list declares, and a check of every label before any training.

Decision: a label outside ``0..num_classes-1`` is a config or list error, found at start-up from the index alone (no
file opened) and reported with the list file and line, instead of a CUDA device-side assert (or a silently wrong
one-hot) hours into the run. Formats that declare their classes (SSv2 labels JSON, UCF101 classInd, HMDB51 split
files, image folders, the built-in digits) must agree with ``head.num_classes``; plain lists declare nothing, and
``head.num_classes: 0`` takes the largest label + 1 of the training lists.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..config import ConfigError
from ..config.finetune import builtin_classes  # one table (the registration info): validation checks it too
from .subset import source_labels


def declared_classes(ds_cfg: Any) -> tuple[int, str] | None:
    """(class count, the file or folder that declares it) for formats that list their classes; None otherwise."""
    builtin = builtin_classes()
    if ds_cfg.kind in builtin:
        return builtin[ds_cfg.kind], f"the built-in {ds_cfg.kind}"
    fmt = getattr(ds_cfg, "format", "")
    if fmt == "ssv2":
        with open(ds_cfg.labels, encoding="utf-8") as f:
            return len(json.load(f)), ds_cfg.labels
    if fmt == "ucf101":
        with open(ds_cfg.labels, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip()), ds_cfg.labels
    if fmt == "hmdb51":
        suffix = f"_test_split{ds_cfg.split_number}.txt"
        return sum(1 for name in os.listdir(ds_cfg.path) if name.endswith(suffix)), ds_cfg.path
    if fmt == "image_folder":
        folder = os.path.expanduser(ds_cfg.path)
        return sum(1 for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")), folder
    return None


def _where(source: Any, index: int) -> str:
    entries = getattr(getattr(source, "source", source), "entries", None)
    if entries is not None:
        base = int(source.indices[index]) if hasattr(source, "indices") else index
        return entries[base].where()
    return f"sample {index}"


def check_labels(key: str, source: Any, num_classes: int) -> None:
    """Raise ConfigError (naming ``key`` = ``data.datasets.<name>`` and the list file and line) for a sample without a
    label or with one outside ``0..num_classes-1``."""
    labels = source_labels(source)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        first = int(bad[0])
        label = int(labels[first])
        problem = "has no label" if label < 0 else f"has label {label}, outside 0..{num_classes - 1}"
        raise ConfigError(key, f"{_where(source, first)} {problem} (head.num_classes={num_classes}); "
                               f"{len(bad)} such sample(s) in all")


def resolve_num_classes(cfg: Any, built: list[tuple[str, Any, int, int]]) -> int:
    """``head.num_classes``, or (when 0) the training lists' declared count, else their largest label + 1; every
    declared count must agree with it."""
    declared = {name: declared_classes(cfg.data.datasets[name]) for name, *_ in built}
    num_classes = cfg.head.num_classes
    if num_classes == 0:
        counts = [d[0] for d in declared.values() if d is not None]
        num_classes = max(counts) if counts else int(max(source_labels(s).max() for _, s, *_ in built)) + 1
    for name, found in declared.items():
        if found is not None and found[0] != num_classes:
            raise ConfigError(f"data.datasets.{name}", f"{found[1]} declares {found[0]} classes, and the head has "
                                                       f"{num_classes} (head.num_classes)")
    return num_classes
