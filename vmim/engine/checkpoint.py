"""Checkpoints: one file with everything needed to continue exactly, written atomically.

Layout in the run directory: ``checkpoints/last.pt`` (overwritten) and optional
``checkpoints/step_XXXXXXXX.pt`` keeps. A save writes ``<name>.tmp`` then renames it into place, so a
killed job never leaves a half-written file under a real name; stray ``.tmp`` files are ignored.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(state: dict, path: Path) -> None:
    """torch.save to ``path.tmp``, fsync, rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """Saves ``last.pt`` and every ``keep_every``-th step; finds the newest loadable checkpoint."""

    def __init__(self, run_dir: Path, keep_every: int = 0):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_every = keep_every

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    def save(self, state: dict, step: int) -> Path:
        save_atomic(state, self.last)
        if self.keep_every and step % self.keep_every == 0:
            keep = self.dir / f"step_{step:08d}.pt"
            tmp = keep.with_name(keep.name + ".tmp")
            shutil.copyfile(self.last, tmp)  # an independent copy: a hard link would share any damage to last.pt
            os.replace(tmp, keep)
        return self.last

    def candidates(self) -> list[Path]:
        """Complete checkpoints, newest step first (last.pt before a kept file of the same step)."""
        files = sorted(self.dir.glob("step_*.pt"), reverse=True)
        return ([self.last] if self.last.exists() else []) + files

    def load_latest(self) -> dict | None:
        """The newest checkpoint that loads (last.pt is written at every save, so it is the newest unless
        damaged); unreadable files are reported and skipped."""
        for path in self.candidates():
            try:
                return load(path)
            except Exception as err:  # corrupt or truncated by a crash outside our atomic writes
                print(f"[vmim] skipping unreadable checkpoint {path}: {err}")
        return None


def load(path: str | Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
