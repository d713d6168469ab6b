"""Building the training data from a config: each dataset kind's source, the mixing sampler and the loader."""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Mapping

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


def build_source(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    """One dataset from its config entry: (source, files listed, files missing)."""
    if ds_cfg.kind not in DATASET_KINDS:
        raise KeyError(f"unknown dataset kind '{ds_cfg.kind}'; registered: {', '.join(DATASET_KINDS)}")
    source, listed, missing = DATASET_KINDS[ds_cfg.kind](name, ds_cfg, data_cfg, in_chans)
    if ds_cfg.fraction < 1:
        from .subset import SubsetSource, source_labels, stratified_subset

        source = SubsetSource(source, stratified_subset(source_labels(source), ds_cfg.fraction, ds_cfg.subset_seed))
        log.info(f"dataset '{name}': {len(source)} samples ({ds_cfg.fraction:g} of each class, seed "
                 f"{ds_cfg.subset_seed})")
        listed = len(source) + missing
    return source, listed, missing


def build_sources(datasets: dict, data_cfg, in_chans: int) -> list[tuple[str, ClipSource, int, int]]:
    """(name, source, files listed, files missing) of every entry of a ``datasets`` mapping, in order."""
    return [(name, *build_source(name, ds_cfg, data_cfg, in_chans)) for name, ds_cfg in datasets.items()]


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


def build_pretrain_data(cfg, patch_size: tuple[int, int, int], world_size: int = 1, rank: int = 0) -> PretrainData:
    """This rank's data over the configured mix; call ``set_epoch(epoch, start_batch)`` before iterating."""
    built = build_sources(cfg.data.datasets, cfg.data, cfg.model.in_chans)
    masks = build_mask_generators(cfg)  # {"encoder": ..., "decoder": ... when decoder_masking is set}
    return build_train_data(cfg, built, patch_size, world_size, rank, masks)
