"""Building the training data from a config: each dataset kind's source, the mixing sampler and the loader; a
validation set carved from the training sources (:func:`build_carved_sources`); one-line descriptions of built
sources for the run's log (:func:`describe_source`).

Decision: building a source logs nothing about its ``fraction`` subset. A fine-tuning task builds its sources
before the trainer sets up the 'vmim' logger (the lists are checked before the run folder exists), so such a line
reached neither ``log.txt`` nor the console; the task describes its data instead (``Task.summary_lines``), and the
trainer logs that after its own set-up lines."""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Mapping

import numpy as np

from ..config.registry import LazyRegistry
from ..masking import build_mask_generators
from .bad_files import BadFileMonitor
from .digits import DigitClips, DigitImages, DigitMotion
from .pretrain_data import PretrainData, build_loader
from .pretrain_dataset import ClipSource, MaskedClipDataset
from .sampler import MixedBatchSampler, stage_size

log = logging.getLogger("vmim")


def _read_entries(name: str, ds_cfg):
    """The dataset's index with missing files handled per ``ds_cfg.missing``: (entries, listed, missing)."""
    from . import indexes

    root = ds_cfg.root or None
    if ds_cfg.format == "ssv2":
        entries = indexes.read_ssv2(ds_cfg.path, ds_cfg.labels, root)
    elif ds_cfg.format == "ucf101":
        entries = indexes.read_ucf101_split(ds_cfg.path, ds_cfg.labels, root)
    elif ds_cfg.format == "hmdb51":
        entries = indexes.read_hmdb51_split(ds_cfg.path, ds_cfg.split_number, ds_cfg.partition == "train", root)
    elif ds_cfg.format == "image_folder":
        entries = indexes.read_image_folder(ds_cfg.path)
    else:
        entries = indexes.read_index(ds_cfg.format, ds_cfg.path, root)
    kept, missing = indexes.check_missing(entries, ds_cfg.missing, name)
    if missing:
        log.warning(indexes.missing_summary(name, missing, len(entries)) + " (dropped: data.datasets."
                    f"{name}.missing=drop)")
    if not kept:
        raise FileNotFoundError(f"dataset '{name}': none of the {len(entries)} listed files exist")
    return kept, len(entries), len(missing)


def _digit_images(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    source = DigitImages(ds_cfg.split, data_cfg.img_size, in_chans)
    return source, len(source), 0


def _digit_clips(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    source = DigitClips(ds_cfg.split, data_cfg.img_size, data_cfg.num_frames, in_chans)
    return source, len(source), 0


def _digit_motion(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    source = DigitMotion(ds_cfg.split, data_cfg.img_size, data_cfg.num_frames, in_chans, ds_cfg.speed, ds_cfg.hold)
    return source, len(source), 0


def _videos(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    from .sources import VideoSource

    entries, listed, missing = _read_entries(name, ds_cfg)
    flip = False if ds_cfg.flip is None else ds_cfg.flip
    source = VideoSource(entries, data_cfg.num_frames, ds_cfg.stride, data_cfg.img_size, ds_cfg.decoder,
                         ds_cfg.crop or "multi_scale", flip, ds_cfg.target_fps or None, ds_cfg.overflow,
                         ds_cfg.sampling, tuple(ds_cfg.crop_scale))
    return source, listed, missing


def _images(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    from .sources import ImageSource

    entries, listed, missing = _read_entries(name, ds_cfg)
    flip = True if ds_cfg.flip is None else ds_cfg.flip
    source = ImageSource(entries, data_cfg.img_size, ds_cfg.crop or "random_resized", flip, tuple(ds_cfg.crop_scale))
    return source, listed, missing


DATASET_KINDS: Mapping[str, Callable[..., tuple[ClipSource, int, int]]] = LazyRegistry("datasets")
"""Dataset kind -> builder ``(name, dataset config, data config, in_chans)``, from the registration table
(``vmim/data/schemas.py``)."""


def _base_source(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    """One dataset's whole list (no ``fraction`` subset): (source, files listed, files missing)."""
    if ds_cfg.kind not in DATASET_KINDS:
        raise KeyError(f"unknown dataset kind '{ds_cfg.kind}'; registered: {', '.join(DATASET_KINDS)}")
    return DATASET_KINDS[ds_cfg.kind](name, ds_cfg, data_cfg, in_chans)


def build_source(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    """One dataset from its config entry: (source, files listed, files missing). A ``fraction`` below 1 keeps that
    stratified subset (:mod:`vmim.data.subset`); :func:`describe_source` says so in the run's log."""
    source, listed, missing = _base_source(name, ds_cfg, data_cfg, in_chans)
    if ds_cfg.fraction < 1:
        from .subset import SubsetSource, source_labels, stratified_subset

        source = SubsetSource(source, stratified_subset(source_labels(source), ds_cfg.fraction, ds_cfg.subset_seed))
        listed = len(source) + missing
    return source, listed, missing


def build_sources(datasets: dict, data_cfg, in_chans: int) -> list[tuple[str, ClipSource, int, int]]:
    """(name, source, files listed, files missing) of every entry of a ``datasets`` mapping, in order."""
    return [(name, *build_source(name, ds_cfg, data_cfg, in_chans)) for name, ds_cfg in datasets.items()]


def build_carved_sources(datasets: dict, data_cfg, in_chans: int, val_fraction: float, val_seed: int
                         ) -> tuple[list[tuple], list[tuple], list]:
    """Training sources with a validation set carved from each (:mod:`vmim.data.splits`): (training built, validation
    built, splits), the built lists as :func:`build_sources`'; validation set ``i`` is ``<name>_val`` of training set
    ``i``. The carve comes before each entry's ``fraction`` subset, so no validation sample is trained on."""
    from .splits import carve

    train, val, splits = [], [], []
    for name, ds_cfg in datasets.items():
        source, listed, missing = _base_source(name, ds_cfg, data_cfg, in_chans)
        split = carve(name, source, val_fraction, val_seed, ds_cfg.fraction, ds_cfg.subset_seed)
        splits.append(split)
        train.append((name, split.train_source(), len(split.train) + missing, missing))
        val.append((f"{name}_val", split.val_source(), len(split.val), 0))
    return train, val, splits


def sample_labels(source) -> np.ndarray:
    """(n,) int labels of a source or of a :class:`~vmim.data.subset.SubsetSource` (its own samples only)."""
    from .subset import SubsetSource, source_labels

    return source.labels if isinstance(source, SubsetSource) else source_labels(source)


def per_class(labels) -> str:
    """``36 per class`` (every class alike) or ``32-37 per class`` over the classes present."""
    counts = np.unique(np.asarray(labels), return_counts=True)[1]
    if not len(counts):
        return "no samples"
    low, high = int(counts.min()), int(counts.max())
    return f"{low} per class" if low == high else f"{low}-{high} per class"


def describe_source(name: str, source, ds_cfg=None, labeled: bool = True, of: int | None = None) -> str:
    """One log line's worth about a built dataset: ``'motion': 144 videos, 36 per class (0.1 of each class, seed 0)``;
    ``of``: how many samples the ``fraction`` was taken from when not the whole list (after a validation carve)."""
    modality = "images" if getattr(source, "modality", "video") == "image" else "videos"
    text = f"'{name}': {len(source)} {modality}"
    if labeled:
        text += f", {per_class(sample_labels(source))}"
    if ds_cfg is not None and ds_cfg.fraction < 1:
        base = f" of the {of} left after the validation carve" if of is not None else ""
        text += f" ({ds_cfg.fraction:g} of each class{base}, seed {ds_cfg.subset_seed})"
    return text


def build_train_data(cfg, built: list[tuple[str, ClipSource, int, int]], patch_size: tuple[int, int, int],
                     world_size: int, rank: int, masks: dict, clip_transform: Callable | None = None) -> PretrainData:
    """This rank's training data over ``built`` sources (weights from ``cfg.data.datasets``), with ``masks`` drawn per
    sample and ``clip_transform`` applied to each clip; call ``set_epoch(epoch, start_batch)`` before iterating."""
    names = [b[0] for b in built]
    sources = [b[1] for b in built]
    steps = cfg.train.steps_per_epoch * cfg.optim.accum_steps or None
    schedule = [(stage.epoch, stage.img_size) for stage in cfg.data.img_size_schedule]
    sampler = MixedBatchSampler([len(s) for s in sources], [cfg.data.datasets[n].weight for n in names],
                                cfg.data.batch_size, world_size, rank, cfg.train.seed, steps,
                                partial(stage_size, schedule) if schedule else None)
    dataset = MaskedClipDataset(sources, masks, patch_size, cfg.data.decode_timeout_s,
                                cfg.data.repeat, isolate=cfg.data.decode_isolation, clip_transform=clip_transform)
    loader = build_loader(dataset, sampler, cfg.data.num_workers, cfg.data.pin_memory)
    monitor = BadFileMonitor(names, [b[2] for b in built], [b[3] for b in built], cfg.data.max_bad_fraction)
    for i, name in enumerate(names):
        if monitor.fraction(i) > cfg.data.max_bad_fraction:
            raise RuntimeError(f"dataset '{name}': {built[i][3]} of {built[i][2]} listed files are missing, more than "
                               f"data.max_bad_fraction={cfg.data.max_bad_fraction:g}")
    return PretrainData(loader, sampler, names, monitor)


def build_pretrain_data(cfg, patch_size: tuple[int, int, int], world_size: int = 1, rank: int = 0,
                        built: list[tuple[str, ClipSource, int, int]] | None = None) -> PretrainData:
    """This rank's data over the configured mix (``built``: its sources, already built); call
    ``set_epoch(epoch, start_batch)`` before iterating."""
    built = built if built is not None else build_sources(cfg.data.datasets, cfg.data, cfg.model.in_chans)
    masks = build_mask_generators(cfg)  # {"encoder": ..., "decoder": ... when decoder_masking is set}
    return build_train_data(cfg, built, patch_size, world_size, rank, masks)
