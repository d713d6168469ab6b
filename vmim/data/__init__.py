"""Datasets, the mixing sampler and the pretraining loader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..masking import build_mask_generator
from .digits import DigitClips, DigitImages
from .pretrain_dataset import ClipSource, MaskedClipDataset
from .sampler import MixedBatchSampler

__all__ = ["DigitClips", "DigitImages", "ClipSource", "MaskedClipDataset", "MixedBatchSampler", "build_source",
           "build_pretrain_loader"]


def build_source(ds_cfg, data_cfg, in_chans: int) -> ClipSource:
    """One dataset from a :class:`vmim.config.DatasetConfig`."""
    if ds_cfg.kind == "digits_images":
        return DigitImages(ds_cfg.split, data_cfg.img_size, in_chans)
    if ds_cfg.kind == "digits_clips":
        return DigitClips(ds_cfg.split, data_cfg.img_size, data_cfg.num_frames, in_chans)
    raise KeyError(f"unknown dataset kind '{ds_cfg.kind}'")


def build_pretrain_loader(cfg, patch_size: tuple[int, int, int], world_size: int = 1,
                          rank: int = 0) -> tuple[DataLoader, MixedBatchSampler, list[str]]:
    """DataLoader over the configured mix; call ``sampler.set_epoch(epoch, start_batch)`` before iterating."""
    names = list(cfg.data.datasets)
    sources = [build_source(cfg.data.datasets[n], cfg.data, cfg.model.in_chans) for n in names]
    steps = cfg.train.steps_per_epoch * cfg.optim.accum_steps or None
    sampler = MixedBatchSampler([len(s) for s in sources], [cfg.data.datasets[n].weight for n in names],
                                cfg.data.batch_size, world_size, rank, cfg.train.seed, steps)
    dataset = MaskedClipDataset(sources, build_mask_generator(cfg.masking), patch_size)
    workers = cfg.data.num_workers
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                        pin_memory=cfg.data.pin_memory and torch.cuda.is_available(),
                        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                        generator=torch.Generator())  # keep the global RNG untouched (exact resume)
    return loader, sampler, names
