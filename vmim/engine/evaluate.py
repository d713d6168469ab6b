"""Multi-view evaluation: K temporal clips x C spatial crops per video, scores merged per video, gathered over ranks.

Decisions:

* **Softmax per view, then the mean over the views of a video**, as VideoMAE's ``merge`` does (SlowFast sums
  softmaxes: the same ranking). Averaging logits instead lets one over-confident view outvote the others.
  ``loss`` is the cross-entropy of that merged distribution, ``-log mean_v p_v(label)``, averaged over the
  videos that loaded: well defined, unlike a cross-entropy of averaged logits.
* **A video that fails to load is a miss**, not a skipped sample: it stays in the denominator of top-1 / top-5, has
  its row (with the reason) in the predictions file, and :meth:`EvalResult.failed_lines` gives one line per file
  (a single joined line was unreadable past a few files). Dropping it would report accuracy on an easier subset;
  replacing it (as pretraining does) would count another video twice. The callers (validation, ``vmim eval``) hand
  the merged failures to a :class:`~vmim.data.bad_files.BadFileMonitor` (:func:`report_failures`): each file is
  reported once, remembered (the next pass does not open it again) and counted against ``data.max_bad_fraction``,
  as in training. From the merged records, so every rank holds the same memory and stops together.
* **No padding, so no de-duplication.** Each rank evaluates indices ``rank, rank + world, ...``
  (:func:`vmim.data.eval_views.shard`) and the per-video records, with their dataset index, are gathered with
  ``all_gather_object``. VideoMAE pads the last batch through DistributedSampler and drops duplicates by the key
  ``str(chunk_nb) + str(split_nb)``, which collides from 10 clips up ("1" + "11" == "11" + "1"). Here nothing is
  dropped, and coverage is checked, not assumed: :func:`merge_records` raises unless the indices of loaded and
  failed videos together are exactly 0..N-1, each once.
* A loader batch names its failed files with their dataset index (``failed_index``), so a failed video is recorded
  under its own index whatever order the loader yields.
* **Stop signals within a batch.** Given the run's :class:`~vmim.engine.preemption.StopSignals`, the pass asks
  :meth:`~vmim.engine.preemption.StopSignals.agreed` before every batch and raises
  :class:`~vmim.engine.preemption.Interrupted` when a stop was requested on any rank; nothing is merged or written.
  A rank's shard may have one batch fewer than another's, so each rank joins the agreement for as many batches as
  the largest shard has (the collective calls match) and the stop lands on every rank at the same batch.
* Every rank gets the merged result (the decision to keep a checkpoint can be taken on any rank); only rank 0
  writes the predictions file, through a temporary file renamed into place.
* **The result knows its modality.** :func:`evaluate` reads it from the loader's source (``source.modality``:
  ``video`` or ``image``), so the callers (validation, ``vmim eval``) pass nothing new and an image set is not
  called videos: ``(2000 images, 1 view)`` against ``(359 videos, 2 x 3 views)`` (an image has one temporal view;
  its C crops are ``C views``). The field names (``num_videos``, :class:`VideoRecord`) stay, as do the keys that
  other code reads; ``EvalResult.modality`` defaults to ``video`` for results built without it.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.distributed
from torch.utils.data import DataLoader, Subset

from ..data.eval_views import MultiViewDataset
from ..signals import WaitAbandoned, abandon_waits
from .distributed import DistInfo
from .precision import autocast
from .preemption import Interrupted, StopSignals

TOP_K = 5
PREDICTIONS_HEADER = ("path", "label", "top5", "scores", "correct", "error")
MIN_PROB = torch.finfo(torch.float32).tiny  # floor of a merged probability in the loss: -log stays finite


@dataclass(frozen=True)
class VideoRecord:
    """What evaluation keeps of one video: ``top5`` class ids (min(5, K) of them, best first) and their merged
    scores, ``label_score`` the merged probability of the label; a failed video has ``error`` and no prediction."""

    index: int
    path: str
    label: int
    top5: tuple[int, ...] = ()
    scores: tuple[float, ...] = ()
    label_score: float | None = None
    error: str | None = None

    @property
    def loaded(self) -> bool:
        return self.error is None

    @property
    def correct(self) -> bool:
        """Top-1 hit (a failed video never is)."""
        return bool(self.top5) and self.top5[0] == self.label

    @property
    def in_top5(self) -> bool:
        return self.label in self.top5


def sample_noun(modality: str, count: int | None = None) -> str:
    """``videos`` / ``images`` (``video`` / ``image`` for a count of 1) for a source's ``modality``."""
    noun = "image" if modality == "image" else "video"
    return noun if count == 1 else noun + "s"


@dataclass
class EvalResult:
    """Merged evaluation of all N videos (or images: ``modality``): records sorted by index; ``top1`` / ``top5`` are
    fractions of N (a failed video is a miss); ``loss`` is the mean over loaded videos of ``-log`` (merged probability
    of the label)."""

    records: list[VideoRecord]
    top1: float
    top5: float
    loss: float
    num_videos: int
    num_failed: int
    num_views: int
    num_crops: int
    rank: int = field(default=0, compare=False)  # only rank 0 writes files
    modality: str = "video"  # the source's: "video" or "image" (module docstring)

    @classmethod
    def from_records(cls, records: Sequence[VideoRecord], num_views: int, num_crops: int,
                     rank: int = 0, modality: str = "video") -> EvalResult:
        records = sorted(records, key=lambda r: r.index)
        n = len(records)
        loaded = [r for r in records if r.loaded]
        losses = [-math.log(max(r.label_score, MIN_PROB)) for r in loaded]
        return cls(records=records,
                   top1=sum(r.correct for r in records) / n if n else math.nan,
                   top5=sum(r.in_top5 for r in records) / n if n else math.nan,
                   loss=sum(losses) / len(losses) if losses else math.nan,
                   num_videos=n, num_failed=n - len(loaded), num_views=num_views, num_crops=num_crops, rank=rank,
                   modality=modality)

    def summary_line(self) -> str:
        """``top1 81.25% top5 100.00% (16 videos, 5 x 3 views)``; with failures ``(16 videos, 2 failed to load and
        count as misses, 5 x 3 views)``; an image set ``(2000 images, 1 view)`` (its crops are its views)."""
        failed = f", {self.num_failed} failed to load and count as misses" if self.num_failed else ""
        if self.modality == "image":
            views = f"{self.num_crops} view{'s' if self.num_crops != 1 else ''}"
        else:
            views = f"{self.num_views} x {self.num_crops} views"
        return (f"top1 {100 * self.top1:.2f}% top5 {100 * self.top5:.2f}% "
                f"({self.num_videos} {sample_noun(self.modality, self.num_videos)}{failed}, {views})")

    def failed_lines(self) -> list[str]:
        """One line per video that failed to load: ``a.mp4: reason (failed to load: a miss)``, in index order."""
        return [f"{r.path}: {' '.join(r.error.split())} (failed to load: a miss)" for r in self.records if not r.loaded]

    def metrics(self) -> dict[str, float]:
        """Scalars for logs: top1 / top5 (fractions), loss, failed (count)."""
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "failed": float(self.num_failed)}

    def write_predictions(self, path: str | os.PathLike) -> Path | None:
        """Write a TSV, one row per video in index order, on rank 0 (other ranks: no-op, None): ``path``, ``label``,
        ``top5`` (comma-separated class ids, best first), ``scores`` (their merged probabilities), ``correct``
        (top-1 hit, 1/0) and ``error`` (why a failed video did not load; its top5 and scores are empty).
        Written to a temporary name, then renamed."""
        if self.rank != 0:
            return None
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(PREDICTIONS_HEADER)
            for r in self.records:
                writer.writerow([r.path, r.label, ",".join(map(str, r.top5)), ",".join(f"{s:.6f}" for s in r.scores),
                                 int(r.correct), " ".join((r.error or "").split())])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path


def eval_dataset(loader: DataLoader) -> MultiViewDataset:
    """The MultiViewDataset under this rank's loader (a Subset of it when sharded)."""
    data = loader.dataset
    dataset = data.dataset if isinstance(data, Subset) else data
    if not isinstance(dataset, MultiViewDataset):
        raise TypeError(f"evaluate needs a loader over a MultiViewDataset (build_test_loader), got {type(dataset)}")
    return dataset


def listed_label(source, index: int) -> int:
    """The label a source lists for ``index`` without loading it (-1 when it cannot say)."""
    entries = getattr(source, "entries", None)
    return int(entries[index].label) if entries is not None else -1


def merge_records(per_rank: Sequence[Sequence[VideoRecord]], num_videos: int) -> list[VideoRecord]:
    """Records of every rank, sorted by index. Raises RuntimeError unless their indices are exactly
    0..num_videos-1, each once: no video counted twice or dropped."""
    records = sorted((r for part in per_rank for r in part), key=lambda r: r.index)
    counts = Counter(r.index for r in records)
    twice = sorted(i for i, c in counts.items() if c > 1)
    outside = sorted(i for i in counts if not 0 <= i < num_videos)
    missing = [i for i in range(num_videos) if i not in counts]
    problems = []
    if twice:
        problems.append(f"{len(twice)} counted more than once (indices {_few(twice)})")
    if missing:
        problems.append(f"{len(missing)} never evaluated (indices {_few(missing)})")
    if outside:
        problems.append(f"{len(outside)} outside 0..{num_videos - 1} (indices {_few(outside)})")
    if problems:
        raise RuntimeError(f"evaluation over {len(per_rank)} rank(s) does not cover the {num_videos} videos exactly "
                           f"once: " + "; ".join(problems))
    return records


def _few(indices: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, indices[:limit]))
    return shown + (", ..." if len(indices) > limit else "")


def gather_records(records: list[VideoRecord], dist: DistInfo | None) -> list[list[VideoRecord]]:
    """Every rank's records, on every rank (``all_gather_object``); just ``[records]`` in a single process."""
    if dist is None or dist.world_size == 1:
        return [records]
    if not torch.distributed.is_initialized():
        raise RuntimeError(f"evaluate was given world_size={dist.world_size} but no process group is initialized")
    per_rank: list = [None] * dist.world_size
    torch.distributed.all_gather_object(per_rank, records)
    return per_rank


def view_scores(model: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor, num_classes: int,
                device: torch.device, precision: str = "fp32", chunk_size: int | None = None) -> torch.Tensor:
    """uint8 clips (B, V, C, T, S, S) -> merged scores float32 (B, K) on the CPU: the model on all B * V views (at most
    ``chunk_size`` per call), softmax per view, mean over the V views of each video."""
    b, v = clips.shape[:2]
    flat = clips.flatten(0, 1)
    step = chunk_size or len(flat)
    probs = []
    for start in range(0, len(flat), step):
        x = flat[start:start + step].to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(x)
        if tuple(logits.shape) != (len(x), num_classes):
            raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for {len(x)} views, "
                             f"expected ({len(x)}, {num_classes}) (num_classes)")
        probs.append(logits.float().softmax(dim=-1).cpu())
    return torch.cat(probs).view(b, v, num_classes).mean(dim=1)


def report_failures(monitor, dataset: int, result: EvalResult) -> None:
    """Hand ``result``'s failed videos to ``monitor`` (a :class:`~vmim.data.bad_files.BadFileMonitor`) as dataset
    ``dataset``: new files get their line, all are remembered; raises TooManyBadFiles past its threshold."""
    from ..data.bad_files import Failure

    monitor.update([Failure(dataset, r.index, r.path, r.error) for r in result.records if not r.loaded])


def next_batch(batches, loader: DataLoader, stop: StopSignals | None) -> dict | None:
    """``next(batches, None)``; with ``stop`` (one process, a pass whose work may be dropped) and no loader workers,
    a stop signal does not wait for a decode that hangs (a stalled file system, a FIFO): the isolated decode is given
    up (:class:`vmim.signals.abandon_waits`, which raises ``WaitAbandoned`` from our own wait loop: a BaseException,
    so the sample's ``except Exception`` does not count it as a bad file).

    Decision: with loader workers the stop waits for the batch in progress (at most ``data.decode_timeout_s`` for a
    hung file, as in training). Interrupting that wait means raising from a signal handler inside the DataLoader's
    queue and lock code, an asynchronous exception that can leave a lock held; a bounded wait is the safer trade."""
    if stop is None or loader.num_workers:
        return next(batches, None)
    with abandon_waits(lambda: stop.requested is not None):
        return next(batches, None)


def _agreed_stop(stop: StopSignals | None, dist: DistInfo | None, device: torch.device, seen: int,
                 total: int, modality: str = "video") -> None:
    """Raise Interrupted when a stop was requested on any rank (collective when distributed)."""
    if stop is None:
        return
    request = stop.agreed(dist, device)
    if request:
        name = stop.signal_name or "a stop signal"
        raise Interrupted(f"{name} received: evaluation stopped after {seen} of {total} "
                          f"{sample_noun(modality, total)}", request, stop.signal_name)


@torch.no_grad()
def evaluate(model: Callable[[torch.Tensor], torch.Tensor], loader: DataLoader, num_classes: int,
             device: torch.device | str, precision: str = "fp32", dist: DistInfo | None = None,
             chunk_size: int | None = None, stop: StopSignals | None = None) -> EvalResult:
    """Evaluate ``model`` (uint8 clips (N, C, T, S, S) on ``device`` -> logits (N, num_classes); it normalizes its
    input itself) on every video of ``loader`` (:func:`vmim.data.eval_views.build_test_loader`, this rank's shard),
    merge the views of each video, gather all ranks' records (``dist.world_size`` > 1: every rank must call) and
    check that each of the N videos was counted exactly once. ``chunk_size`` caps the views per model call.
    A ``torch.nn.Module`` runs in eval mode and gets its previous mode back.

    Raises:
        Interrupted: ``stop`` (installed :class:`~vmim.engine.preemption.StopSignals`) recorded a stop request on
            some rank; asked before every batch, on every rank alike (see the module docstring).
    """
    device = torch.device(device)
    dataset = eval_dataset(loader)
    source = dataset.source
    modality = getattr(source, "modality", "video")
    was_training = model.training if isinstance(model, torch.nn.Module) else None
    if was_training is not None:
        model.eval()
    records: list[VideoRecord] = []
    world = dist.world_size if dist is not None else 1
    rounds = math.ceil(math.ceil(len(dataset) / world) / loader.batch_size)  # batches of the largest shard
    batches = iter(loader)
    try:
        for _ in range(rounds):
            _agreed_stop(stop, dist, device, len(records), len(dataset), modality)
            try:
                batch = next_batch(batches, loader, stop if world == 1 else None)  # ranks: agreed per batch
            except WaitAbandoned:  # only once a stop was requested: said now
                _agreed_stop(stop, dist, device, len(records), len(dataset), modality)
                raise
            if batch is None:  # this rank's shard is done; it still joins the others' agreements
                continue
            loaded = batch["index"].tolist()
            for index, (path, reason) in zip(batch["failed_index"].tolist(), batch["failed"]):
                records.append(VideoRecord(index, path, listed_label(source, index), error=reason))
            if not loaded:
                continue
            scores = view_scores(model, batch["clips"], num_classes, device, precision, chunk_size)
            top_scores, top_ids = scores.topk(min(TOP_K, num_classes), dim=-1)
            for row, (index, label) in enumerate(zip(loaded, batch["label"].tolist())):
                if not 0 <= label < num_classes:
                    raise ValueError(f"{source.describe(index)}: label {label} is outside 0..{num_classes - 1} "
                                     f"(num_classes={num_classes}); evaluation needs labeled {sample_noun(modality)}")
                records.append(VideoRecord(index, source.describe(index), label, tuple(top_ids[row].tolist()),
                                           tuple(top_scores[row].tolist()), float(scores[row, label])))
        if next(batches, None) is not None:  # none: rounds covers every shard (merge_records would say otherwise)
            raise RuntimeError(f"the loader gave more than the {rounds} batches of its largest shard")
    finally:
        if was_training is not None:
            model.train(was_training)
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # now, stopped or not: no worker outlives the pass
            shutdown()
        dataset.close()
    merged = merge_records(gather_records(records, dist), len(dataset))
    return EvalResult.from_records(merged, dataset.num_views, dataset.num_crops, dist.rank if dist else 0, modality)
