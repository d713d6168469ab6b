"""One rank's pretraining data: the loader, its sampler, the bad-file memory, and the end of its worker processes.

The trainer sees one object with a plain contract (:class:`PretrainData`): ``set_epoch``, iterate, ``len``,
``scalars``, ``state_dict`` / ``load_state_dict``, ``close``. The data side keeps its own books, so the training step
does not: each batch's failures reach the :class:`~vmim.data.bad_files.BadFileMonitor` (logged once, counted, the run
stopped past ``data.max_bad_fraction``) before the batch is yielded, and the monitor's set of known bad samples rides
to the workers with every later batch (the sampler attaches it), so no worker opens a known bad file again.

Exits: the workers end with the trainer whatever the exit path (:mod:`vmim.data.lifetime`); :meth:`PretrainData.close`
ends them now, and runs for every open PretrainData at interpreter exit, before torch's and multiprocessing's own
exit hooks (registered earlier, so run later), which would otherwise join workers that may not answer.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from typing import Iterator

import torch
from torch.utils.data import DataLoader

from .bad_files import BadFileMonitor
from .lifetime import WorkerLoader, init_loader_worker, shutdown_loader
from .pretrain_dataset import MaskedClipDataset, collate, describe_sample
from .sampler import MixedBatchSampler

PREFETCH_BATCHES = 4  # per worker
log = logging.getLogger("vmim")

_open: weakref.WeakSet = weakref.WeakSet()  # PretrainData objects whose workers may be alive


def build_loader(dataset: MaskedClipDataset, sampler: MixedBatchSampler, num_workers: int, pin_memory: bool = False
                 ) -> DataLoader:
    """The DataLoader of pretraining: batches from ``sampler``, persistent workers that survive the job's stop signals
    and end with their parent (started with Ctrl-C deferred: :class:`~vmim.data.lifetime.WorkerLoader`), read-ahead
    hints for the worker that fetches each batch."""
    sampler.loader_workers = num_workers  # next_key hints: the batch this worker gets after the current one
    return WorkerLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                        pin_memory=pin_memory and torch.cuda.is_available(), persistent_workers=num_workers > 0,
                        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
                        worker_init_fn=init_loader_worker if num_workers > 0 else None,
                        generator=torch.Generator())  # keep the global RNG untouched (exact resume)


class PretrainData:
    """Iterable over one epoch's collated batches of this rank, after the bad-file bookkeeping.

    Args:
        loader: from :func:`build_loader`.
        sampler: the loader's batch sampler.
        names: dataset names by id.
        monitor: bad-file bookkeeping; its known bad samples are handed to the workers through ``sampler``.

    ``loader``, ``sampler``, ``names`` and ``monitor`` stay public attributes.
    """

    def __init__(self, loader: DataLoader, sampler: MixedBatchSampler, names: list[str], monitor: BadFileMonitor):
        self.loader, self.sampler, self.names, self.monitor = loader, sampler, list(names), monitor
        self._img_size: int | None = None  # the current progressive-resolution stage's size (logged as it changes)
        sampler.known_bad = monitor.known_bad
        _open.add(self)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """The next iteration yields epoch ``epoch`` from micro-batch ``start_batch`` on (a resumed run); logs the
        epoch's clip size when a progressive-resolution stage begins (or a run resumes into one)."""
        self.sampler.set_epoch(epoch, start_batch)
        size = None if self.sampler.img_size_at is None else self.sampler.img_size_at(epoch)
        if size is not None and size != self._img_size:
            log.info(f"epoch {epoch}: clips resized to {size}x{size} (data.img_size_schedule)")
        self._img_size = size

    def __len__(self) -> int:
        """Micro-batches in a whole epoch (also when iteration starts at ``start_batch``)."""
        return len(self.sampler)

    def __iter__(self) -> Iterator[dict]:
        """Collated batches (see :func:`~vmim.data.pretrain_dataset.collate`); each batch's ``"bad"`` failures are
        logged and counted first. Raises TooManyBadFiles past ``data.max_bad_fraction``."""
        for batch in self.loader:
            self.monitor.update(batch["bad"])
            yield batch

    def scalars(self) -> dict[str, float]:
        """Bad-file counts for the logs: ``data/bad_files`` and ``data/bad_files/<name>`` (missing + undecodable)."""
        return self.monitor.scalars()

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the bad samples known so far (plain types)."""
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; an entry whose index now names another file (the list changed) is dropped."""
        sources = self.loader.dataset.sources

        def describe(dataset: int, index: int) -> str | None:
            return describe_sample(sources[dataset], index) if 0 <= index < len(sources[dataset]) else None

        self.monitor.load_state_dict(state, describe)

    def close(self) -> None:
        """End the loader's worker processes (and so their decode children) now; iterating again starts new ones."""
        shutdown_loader(self.loader)
        isolated = getattr(self.loader.dataset, "isolated", None)
        if isolated is not None:  # the decode child of the trainer itself (0 workers)
            isolated.close()

    def __enter__(self) -> "PretrainData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for data in list(_open):
        data.close()
