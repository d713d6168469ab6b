"""Datasets, the mixing sampler and the pretraining loader."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..masking import build_mask_generator
from .digits import DigitClips, DigitImages
from .pretrain_dataset import ClipSource, MaskedClipDataset, collate
from .robust import BadFileMonitor, ignore_stop_signals
from .sampler import MixedBatchSampler

__all__ = ["DigitClips", "DigitImages", "ClipSource", "MaskedClipDataset", "MixedBatchSampler", "BadFileMonitor",
           "PretrainData", "build_source", "build_pretrain_data"]

log = logging.getLogger("vmim")


def _read_entries(name: str, ds_cfg):
    """The dataset's index with missing files handled per ``ds_cfg.missing``: (entries, listed, missing)."""
    from . import indexes

    root = ds_cfg.root or None
    if ds_cfg.format == "ssv2":
        entries = indexes.read_ssv2(ds_cfg.path, ds_cfg.labels, root)
    elif ds_cfg.format == "ucf101":
        entries = indexes.read_ucf101_split(ds_cfg.path, ds_cfg.labels, root)
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


def build_source(name: str, ds_cfg, data_cfg, in_chans: int) -> tuple[ClipSource, int, int]:
    """One dataset from a :class:`vmim.config.DatasetConfig`: (source, files listed, files missing)."""
    if ds_cfg.kind == "digits_images":
        source = DigitImages(ds_cfg.split, data_cfg.img_size, in_chans)
        return source, len(source), 0
    if ds_cfg.kind == "digits_clips":
        source = DigitClips(ds_cfg.split, data_cfg.img_size, data_cfg.num_frames, in_chans)
        return source, len(source), 0
    from .sources import ImageSource, VideoSource

    entries, listed, missing = _read_entries(name, ds_cfg)
    if ds_cfg.kind == "video":
        flip = False if ds_cfg.flip is None else ds_cfg.flip
        source = VideoSource(entries, data_cfg.num_frames, ds_cfg.stride, data_cfg.img_size, ds_cfg.decoder,
                             ds_cfg.crop or "multi_scale", flip, ds_cfg.target_fps or None, ds_cfg.overflow,
                             ds_cfg.sampling)
    elif ds_cfg.kind == "image":
        flip = True if ds_cfg.flip is None else ds_cfg.flip
        source = ImageSource(entries, data_cfg.img_size, ds_cfg.crop or "random_resized", flip)
    else:
        raise KeyError(f"unknown dataset kind '{ds_cfg.kind}'")
    return source, listed, missing


@dataclass
class PretrainData:
    loader: DataLoader
    sampler: MixedBatchSampler
    names: list[str]
    monitor: BadFileMonitor


def build_pretrain_data(cfg, patch_size: tuple[int, int, int], world_size: int = 1, rank: int = 0) -> PretrainData:
    """Loader over the configured mix; call ``sampler.set_epoch(epoch, start_batch)`` before iterating."""
    names = list(cfg.data.datasets)
    built = [build_source(n, cfg.data.datasets[n], cfg.data, cfg.model.in_chans) for n in names]
    sources = [b[0] for b in built]
    steps = cfg.train.steps_per_epoch * cfg.optim.accum_steps or None
    sampler = MixedBatchSampler([len(s) for s in sources], [cfg.data.datasets[n].weight for n in names],
                                cfg.data.batch_size, world_size, rank, cfg.train.seed, steps)
    masks = {"encoder": build_mask_generator(cfg.masking)}
    dataset = MaskedClipDataset(sources, masks, patch_size, cfg.data.decode_timeout_s,
                                cfg.data.repeat, isolate=cfg.data.decode_isolation)
    workers = cfg.data.num_workers
    sampler.loader_workers = workers  # next_key hints: the batch this worker gets after the current one
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                        pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                        worker_init_fn=ignore_stop_signals,
                        generator=torch.Generator())  # keep the global RNG untouched (exact resume)
    monitor = BadFileMonitor(names, [b[1] for b in built], [b[2] for b in built], cfg.data.max_bad_fraction)
    for i, name in enumerate(names):
        if monitor.fraction(i) > cfg.data.max_bad_fraction:
            raise RuntimeError(f"dataset '{name}': {built[i][2]} of {built[i][1]} listed files are missing, more than "
                               f"data.max_bad_fraction={cfg.data.max_bad_fraction:g}")
    return PretrainData(loader, sampler, names, monitor)
