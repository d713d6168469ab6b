"""The layout of a run's ``checkpoints/`` folder, and reading one checkpoint whole: what the trainer resumes from
(:mod:`vmim.engine.checkpoint`) and what ``init=``, ``vmim probe`` and ``vmim eval`` read weights from
(:mod:`vmim.models.loading`).

Decision: one module below both. The models layer may not import the engine, and it had its own copy of "the newest
checkpoint of a run" that knew only files (``last.pt``, ``step_*.pt``): a run of ``train.parallel=fsdp`` checkpoints
into folders (``last/``, ``step_XXXXXXXX/``) until its end, so ``vmim probe RUN`` (or ``init=RUN``, or a teacher's
``path``) of a running or preempted sharded run, or of one of its kept steps, found nothing. Both now take their
candidates and their reader from here.

* A **checkpoint** is a file (``last.pt``, ``step_XXXXXXXX.pt``) or a **sharded folder** (``last/``, ``last.old/``,
  ``step_XXXXXXXX/``): DCP's ``.metadata`` index and ``*.distcp`` shards, plus :data:`SHARDED_STATE` with everything
  but the model's and optimizer's tensors.
* **Newest first** (:func:`candidates`): ``last.pt`` / ``last/`` / ``last.old/`` by modification time (a run may
  switch between ddp and fsdp; ``last.old/`` is a save interrupted between its two renames), then the kept steps
  by step, a file before a folder of the same step. A ``.tmp`` (unfinished) never counts.
* **Read whole** (:func:`load`): a file through :func:`vmim.safe_load.load_dict`; a folder's ``state.pt`` the same
  way and its ``.metadata`` through :func:`vmim.safe_load.check_dcp_metadata` before DCP reads a byte, then every
  shard into plain tensors on this one process (no process group).
"""

from __future__ import annotations

import re
from pathlib import Path

from .safe_load import check_dcp_metadata, load_dict

SHARDED_STATE = "state.pt"
"""The file of a sharded checkpoint folder holding everything but the model's and optimizer's tensors."""


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A complete sharded checkpoint folder: its DCP index and its state file are both there."""
    path = Path(path)
    return path.is_dir() and (path / ".metadata").is_file() and (path / SHARDED_STATE).is_file()


def _complete(path: Path) -> bool:
    return path.is_file() or is_sharded_checkpoint(path)


def candidates(folder: str | Path) -> list[Path]:
    """The complete checkpoints in a ``checkpoints/`` folder, newest first (module docstring); [] if none."""
    folder = Path(folder)
    lasts = [p for p in (folder / "last.pt", folder / "last", folder / "last.old") if _complete(p)]
    lasts.sort(key=lambda p: (p / SHARDED_STATE if p.is_dir() else p).stat().st_mtime, reverse=True)
    keeps = [p for p in folder.glob("step_*") if re.fullmatch(r"step_\d{8}(\.pt)?", p.name) and _complete(p)]
    keeps.sort(key=lambda p: (p.name[5:13], p.suffix == ".pt"), reverse=True)
    return lasts + keeps


def load(path: str | Path, sharded: bool = False) -> dict:
    """A checkpoint file, or a sharded checkpoint folder: whole (its ``model`` and ``optimizer`` read on this one
    process, the optimizer keyed by parameter name), or with ``sharded`` its ``state.pt`` only, plus ``"sharded":
    <folder>`` for :func:`vmim.engine.fsdp.load_sharded`.

    Raises:
        UnsafeFileError: the file (or ``state.pt``, or the folder's ``.metadata``) holds more than tensors and plain
            data; nothing of it was built.
        InputError: not a torch file, or not a dict.
        FileNotFoundError: nothing there, or a folder without ``.metadata`` / ``state.pt``.
    """
    path = Path(path)
    if not path.is_dir():
        return load_dict(path)
    if not is_sharded_checkpoint(path):
        raise FileNotFoundError(f"{path} is a folder but not a sharded checkpoint (no .metadata or {SHARDED_STATE})")
    state = load_dict(path / SHARDED_STATE)
    check_dcp_metadata(path)
    if sharded:
        return {**state, "sharded": str(path)}
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    tensors: dict = {}  # filled from the metadata, on this process alone: what format_utils.dcp_to_torch_save does
    _load_state_dict(tensors, storage_reader=FileSystemReader(str(path)), planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    return {**state, **tensors}


__all__ = ["SHARDED_STATE", "candidates", "is_sharded_checkpoint", "load"]
