"""Map-style dataset that turns a :data:`SampleKey` into a training sample with its mask."""

from __future__ import annotations

import os
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

from ..masking import MaskGenerator, Masks, draw_masks
from ..models.grid import token_grid
from .bad_files import Failure, failure_reason
from .isolation import IsolatedWorker
from .sampler import SampleKey
from .stderr_capture import StderrCapture, with_decoder_output
from .time_limit import time_limit
from .transforms import resize_clip

MAX_ATTEMPTS = 20  # the key's own index, then up to 19 replacements


def attempt_rng(seed: int, attempt: int) -> np.random.Generator:
    """The generator of a sample's ``attempt``: attempt 0 reads the key's own index with ``default_rng(seed)``; attempt
    k > 0 first draws its replacement index from ``default_rng((seed, k))``, then reads with what remains of it. So
    the sample is a function of its key and of which files fail, not of how far a failed read got."""
    return np.random.default_rng(seed if attempt == 0 else (seed, attempt))


class ClipSource(Protocol):
    """What a dataset provides: uint8 (C, T, H, W) clips with a label, augmented from ``rng``.

    Sources that read files (``reads_files = True``) also split ``load`` into ``read(index, rng) -> (pixels,
    label)``, all of the file reading, and ``augment(pixels, rng, repeat) -> [clip, ...]``; with isolation the
    first runs in a killable child process and the second here.
    """

    modality: str
    clip_shape: tuple[int, int, int]

    def __len__(self) -> int: ...

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]: ...


def describe_sample(source: ClipSource, index: int) -> str:
    """How reports name sample ``index`` of ``source``: its file, else its index."""
    return source.describe(index) if hasattr(source, "describe") else f"index {index}"


def load_repeated(source: ClipSource, index: int, rng: np.random.Generator, repeat: int
                  ) -> list[tuple[torch.Tensor, int]]:
    """``repeat`` augmented clips of one sample: decoded once when the source supports it."""
    if repeat > 1 and hasattr(source, "load_repeated"):
        return source.load_repeated(index, rng, repeat)
    return [source.load(index, rng) for _ in range(repeat)]


class MaskedClipDataset:
    """``dataset[(d, i, seed)]`` -> {"clip": uint8 (C,T,H,W), "masks": :class:`~vmim.masking.masks.SampleMasks` of
    tensors (None without generators), "label", "dataset", "bad"}.

    ``mask_generators`` maps each mask role the method needs (``encoder``, and e.g. ``decoder`` for VideoMAE V2's
    dual masking; none for fine-tuning) to its generator; masks are drawn in that order, after ``clip_transform``
    (fine-tuning's RandAugment) if given. The same seed drives augmentation and the masks, so a sample is a pure
    function of its key. A sample
    that fails to load (corrupt file, decoder error, timeout) is replaced by another index of the same
    dataset drawn from the same seed (:func:`attempt_rng`); the failures travel with the sample in ``"bad"`` as
    :class:`~vmim.data.bad_files.Failure` records for the main process to report and count.

    ``known_bad`` holds the ``(dataset, index)`` pairs that failed in this process or that the main process reported
    with a batch (:attr:`KeyBatch.known_bad`); they are skipped without being opened again, which yields the same
    sample as a read that fails again.
    """

    def __init__(self, sources: Sequence[ClipSource], mask_generators: dict[str, MaskGenerator],
                 patch_size: tuple[int, int, int],
                 decode_timeout_s: float = 0.0, repeat: int = 1, isolate: bool = False,
                 clip_transform: Callable[[torch.Tensor, np.random.Generator], torch.Tensor] | None = None):
        self.sources = list(sources)
        self.clip_transform = clip_transform
        self.repeat = repeat
        self.mask_generators = dict(mask_generators)
        self.patch_size = patch_size
        self.decode_timeout_s = decode_timeout_s
        # file-reading sources decode in a killable child process (hangs inside C, segfaults); see isolation.py
        self.isolated = IsolatedWorker(self._read_arrays, decode_timeout_s) if isolate else None
        self.known_bad: set[tuple[int, int]] = set()  # per process: failed here, or reported by the main process
        self._ahead: tuple | None = None  # (pid, key, ticket, rng): a next batch's first sample, read ahead

    def _isolates(self, dataset: int) -> bool:
        return self.isolated is not None and getattr(self.sources[dataset], "reads_files", False)

    def _read_arrays(self, dataset: int, index: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """What the isolated child computes: the source's decoded pixels as a numpy array (cheap to pickle)."""
        pixels, label = self.sources[dataset].read(index, rng)
        return pixels.numpy(), label

    def _load_once(self, dataset: int, index: int, rng: np.random.Generator, ticket: int | None = None
                   ) -> list[tuple[torch.Tensor, int]]:
        """The ``repeat`` clips of one index: read in the child (``ticket``: already submitted) then augmented
        here, or all in this process under the SIGALRM time limit (in a loader worker with decoder messages kept off
        the terminal: they join the failure's reason)."""
        source = self.sources[dataset]
        if self._isolates(dataset):
            pixels, label = self.isolated.result(self.isolated.submit(dataset, index, rng=rng) if ticket is None
                                                 else ticket)
            return [(clip, label) for clip in source.augment(torch.from_numpy(pixels), rng, self.repeat)]
        if get_worker_info() is None or not getattr(source, "reads_files", False):
            with time_limit(self.decode_timeout_s):
                return load_repeated(source, index, rng, self.repeat)
        with StderrCapture() as capture, time_limit(self.decode_timeout_s):
            try:
                return load_repeated(source, index, rng, self.repeat)
            except Exception as err:
                err.decoder_output = capture.take()
                raise

    def _load(self, dataset: int, index: int, seed: int, rng: np.random.Generator, ticket: int | None = None
              ) -> tuple[list, list[Failure], np.random.Generator]:
        """(clips, failures, the generator of the attempt that loaded). ``rng``: attempt 0's; ``ticket``: its read, if
        already submitted."""
        source, failures = self.sources[dataset], []
        for attempt in range(MAX_ATTEMPTS):
            if attempt > 0:
                rng = attempt_rng(seed, attempt)
                index = int(rng.integers(len(source)))
            try:
                if (dataset, index) in self.known_bad:
                    continue  # not opened again: the same replacement follows as after a failed read
                return self._load_once(dataset, index, rng, ticket), failures, rng
            except Exception as err:  # any failure of one file must not stop the run; it is reported instead
                self.known_bad.add((dataset, index))
                path = describe_sample(source, index)
                reason = with_decoder_output(failure_reason(err), getattr(err, "decoder_output", ""))
                failures.append(Failure(dataset, index, path, reason))
            finally:
                if ticket is not None and (dataset, index) in self.known_bad:
                    self.isolated.abandon([ticket])  # queued before the file was known to be bad: never read
                ticket = None  # a replacement is read afresh
        last = f"; last: {failures[-1]}" if failures else " (all known to be bad)"
        raise RuntimeError(f"{MAX_ATTEMPTS} samples in a row failed to load{last}")

    def _sample(self, key: SampleKey, rng: np.random.Generator, ticket: int | None = None,
                img_size: int | None = None) -> dict:
        dataset, index, seed = key
        clips, failures, rng = self._load(dataset, index, seed, rng, ticket)
        if self.clip_transform is not None:  # e.g. fine-tuning's RandAugment, from the same per-sample generator
            clips = [(self.clip_transform(clip, rng), label) for clip, label in clips]
        if img_size is not None:  # progressive resolution: the batch's stage size (KeyBatch.img_size)
            clips = [(resize_clip(clip, img_size), label) for clip, label in clips]
        grid = token_grid(clips[0][0].shape, self.patch_size)
        masks = [draw_masks(self.mask_generators, grid, rng).torch() if self.mask_generators else None
                 for _ in clips]
        if self.repeat == 1:
            (clip, label), = clips
            return {"clip": clip, "masks": masks[0], "label": label, "dataset": dataset, "bad": failures}
        return {"clip": torch.stack([c for c, _ in clips]), "masks": None if masks[0] is None else Masks.stack(masks),
                "label": torch.tensor([label for _, label in clips]), "dataset": dataset, "bad": failures}

    def __getitem__(self, key: SampleKey) -> dict:
        """One sample; with ``repeat > 1`` clip and label gain a leading repeat dimension, and the masks are the
        repeats' :class:`~vmim.masking.masks.Masks`."""
        return self._sample(key, attempt_rng(key[2], 0))

    def _submit(self, key: SampleKey, rng: np.random.Generator) -> int | None:
        """Start reading ``key`` in the isolated child; None when it is read here (or known to be bad)."""
        dataset, index, _ = key
        if not self._isolates(dataset) or (dataset, index) in self.known_bad:
            return None
        return self.isolated.submit(dataset, index, rng=rng)

    def __getitems__(self, keys: list[SampleKey]) -> list[dict]:
        """A batch (the DataLoader's batched fetch). With isolation, the child reads sample i + 1 while this process
        augments and masks sample i, and, given a :class:`KeyBatch` hint, the first sample of this worker's next
        batch while this process finishes the batch. Each sample is the same as ``self[key]``, resized to the batch's
        ``img_size`` if it has one (progressive resolution: before its masks are drawn, on its grid)."""
        self.known_bad.update(getattr(keys, "known_bad", ()))
        size = getattr(keys, "img_size", None)
        if self.isolated is None:
            return [self._sample(tuple(key), attempt_rng(key[2], 0), img_size=size) for key in keys]
        hint = getattr(keys, "next_key", None)
        keys = [tuple(key) for key in keys]
        rngs = [attempt_rng(seed, 0) for _, _, seed in keys]
        tickets: list[int | None] = [None] * len(keys)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == os.getpid():  # read ahead by the previous batch in this process
            if keys and ahead[1] == keys[0]:
                tickets[0], rngs[0] = ahead[2], ahead[3]
            else:
                self.isolated.abandon([ahead[2]])
        try:
            if keys and tickets[0] is None:
                tickets[0] = self._submit(keys[0], rngs[0])
            samples = []
            for i, key in enumerate(keys):
                if i + 1 < len(keys):
                    tickets[i + 1] = self._submit(keys[i + 1], rngs[i + 1])
                elif hint is not None:
                    rng = attempt_rng(hint[2], 0)
                    if (ticket := self._submit(tuple(hint), rng)) is not None:
                        self._ahead = (os.getpid(), tuple(hint), ticket, rng)
                samples.append(self._sample(key, rngs[i], tickets[i], size))
                tickets[i] = None
            return samples
        finally:  # after an error: answers still on their way are dropped
            self.isolated.abandon([t for t in tickets if t is not None])


def collate(samples: list[dict]) -> dict:
    """default_collate (repeated samples are flattened into the batch); the samples' masks become one
    :class:`~vmim.masking.masks.Masks` (None without masks: fine-tuning); ``"bad"`` failures become one list."""
    failures = [f for s in samples for f in s["bad"]]
    masks = [s["masks"] for s in samples]
    if samples[0]["clip"].ndim == 5:  # repeated sampling: (repeat, C, T, H, W) per sample
        repeat = samples[0]["clip"].shape[0]
        batch = {k: torch.cat([s[k] for s in samples]) for k in ("clip", "label")}
        batch["dataset"] = torch.tensor([s["dataset"] for s in samples]).repeat_interleave(repeat)
        batch["masks"] = None if masks[0] is None else Masks.cat(masks)
    else:
        batch = default_collate([{k: v for k, v in s.items() if k not in ("bad", "masks")} for s in samples])
        batch["masks"] = None if masks[0] is None else Masks.stack(masks)
    batch["bad"] = failures
    return batch
