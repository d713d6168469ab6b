"""Checkpoints: everything needed to continue exactly, written atomically; one file, or one folder when sharded.

Layout in the run directory: ``checkpoints/last.pt`` (overwritten) and optional ``checkpoints/step_XXXXXXXX.pt``
keeps. A save writes ``<name>.tmp`` then renames it into place, so a killed job never leaves a half-written file
under a real name; stray ``.tmp`` files are ignored.

Sharded runs (``train.parallel=fsdp``) write folders instead, ``checkpoints/last/`` and ``step_XXXXXXXX/``: every
rank writes its own shards of the model and optimizer with ``torch.distributed.checkpoint`` (DCP, ``*.distcp`` files
and a ``.metadata`` index that rank 0 writes once all ranks are done), and rank 0 adds ``state.pt`` with the rest
(step, data position, every rank's RNG, scaler, hooks, config), exactly what ``last.pt`` holds besides the two.
Atomic too: everything goes to ``last.tmp/``, then rank 0 renames ``last/`` to ``last.old/``, ``last.tmp/`` to
``last/``, and deletes ``last.old/``; a crash between the renames leaves ``last.old/`` complete, and it is read then.
DCP reshards on load, so a sharded checkpoint resumes on another number of ranks, or unsharded (:func:`load` reads
it whole, on one process). The newest of ``last.pt``, ``last/`` (and ``last.old/``) by modification time is tried
first: a run may switch between ddp and fsdp, and an fsdp run also writes a whole ``last.pt`` at its end. The layout
and the reader live in :mod:`vmim.checkpoint_files`, shared with the weights readers of the models layer.

Only tensors and plain data (numbers, strings, lists, tuples, dicts), so every file reads with ``weights_only=True``
(:mod:`vmim.safe_load`, which every read here goes through): numpy's RNG state, an ndarray of 624 words, is saved
as an int64 tensor and turned back on restore (:func:`rng_state`, :func:`set_rng_state`; checkpoints written
before that hold the ndarray, which :mod:`vmim.safe_load` still reads, safely). A file that holds anything else is
refused with :class:`~vmim.errors.UnsafeFileError` and never skipped: resuming past a tampered ``last.pt`` to an
older checkpoint would hide it. A sharded folder's DCP ``.metadata`` is checked the same way before DCP reads it.
A failed save (disk full) raises :class:`vmim.safe_load.SaveError` naming the file and the OS error, after
removing its ``.tmp``; the previous checkpoint is untouched.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from ..checkpoint_files import SHARDED_STATE, candidates, is_sharded_checkpoint, load
from ..errors import UnsafeFileError
from ..safe_load import SaveError, copy, save, save_failed


def rng_state() -> dict:
    """Python's, numpy's, torch's (and CUDA's) generator states, as tensors and plain data: numpy's
    ``('MT19937', keys, pos, has_gauss, cached_gaussian)`` with its uint32 ``keys`` as an int64 tensor."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (numpy's keys as a tensor, or as the ndarray older checkpoints hold)."""
    kind, keys, *rest = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    random.setstate(state["python"])
    np.random.set_state((kind, keys.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(state: dict, path: Path) -> None:
    """torch.save to ``path.tmp``, fsync, rename over ``path``.

    Raises:
        SaveError: the write failed (disk full ...): one line naming ``path`` and the OS error; the ``.tmp`` is
            removed and the previous file at ``path`` is unchanged.
    """
    save(state, path)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_sharded_atomic(tensors: dict, state: dict, path: Path, is_main: bool) -> None:
    """Write ``tensors`` (every rank's shards, DCP) and ``state`` (rank 0's) to the folder ``path`` through
    ``path.tmp`` (collective: every rank calls it; all return once the folder is in place)."""
    import torch.distributed.checkpoint as dcp

    tmp = path.with_name(path.name + ".tmp")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # a crash's leftover
        tmp.mkdir(parents=True)
    _barrier()
    try:
        dcp.save(tensors, checkpoint_id=str(tmp))  # returns on rank 0 after every rank wrote and .metadata is written
        if is_main:
            save_atomic(state, tmp / SHARDED_STATE)
    except (OSError, RuntimeError) as err:  # disk full: the unfinished folder goes, the previous last/ stays
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise err if isinstance(err, SaveError) else save_failed(path, err) from None
    if is_main:
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()


class CheckpointManager:
    """Saves ``last.pt`` (or ``last/``) and every ``keep_every``-th step; finds the newest loadable checkpoint."""

    def __init__(self, run_dir: Path, keep_every: int = 0):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_every = keep_every

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def last_sharded(self) -> Path:
        return self.dir / "last"

    def _keeps(self, step: int) -> bool:
        return bool(self.keep_every) and step % self.keep_every == 0

    def save(self, state: dict, step: int, keep: bool = True) -> Path:
        """``last.pt`` (and a ``step_XXXXXXXX.pt`` copy when ``keep`` and the step is a keep-every step)."""
        save_atomic(state, self.last)
        if keep and self._keeps(step):
            copy(self.last, self.dir / f"step_{step:08d}.pt")  # independent: a hard link would share any damage
        return self.last

    def save_sharded(self, tensors: dict, state: dict, step: int, is_main: bool) -> Path:
        """``last/`` (and a ``step_XXXXXXXX/`` copy at keep-every steps); collective."""
        save_sharded_atomic(tensors, state, self.last_sharded, is_main)
        if is_main and self._keeps(step):
            dst = self.dir / f"step_{step:08d}"
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(self.last_sharded, tmp)
            shutil.rmtree(dst, ignore_errors=True)
            os.replace(tmp, dst)
        _barrier()
        return self.last_sharded

    def candidates(self) -> list[Path]:
        """Complete checkpoints, newest first (:func:`vmim.checkpoint_files.candidates`)."""
        return candidates(self.dir)

    def load_latest(self, sharded: bool = False) -> dict | None:
        """The newest checkpoint that loads (last.pt is written at every save, so it is the newest unless
        damaged); unreadable files are reported and skipped. ``sharded``: a sharded folder comes without its
        tensors, which the caller reads in place (:func:`load`).

        Raises:
            UnsafeFileError: a checkpoint holds objects beyond tensors and plain data: never skipped, never read.
        """
        for path in self.candidates():
            try:
                return load(path, sharded)
            except UnsafeFileError:
                raise
            except Exception as err:  # corrupt or truncated by a crash outside our atomic writes
                print(f"[vmim] skipping unreadable checkpoint {path}: {err}")
        return None


__all__ = ["CheckpointManager", "SaveError", "is_sharded_checkpoint", "load",
           "rng_state", "save_atomic", "save_sharded_atomic", "set_rng_state"]
