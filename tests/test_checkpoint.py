"""CheckpointManager: atomic writes, keep-every-N retention, newest readable checkpoint on resume."""

from __future__ import annotations

import torch

from vmim.engine.checkpoint import CheckpointManager, load, rng_state, save_atomic, set_rng_state


def state(step: int) -> dict:
    return {"step": step, "model": {"w": torch.full((3,), float(step))}}


def test_keeps_last_and_every_nth(tmp_path):
    manager = CheckpointManager(tmp_path, keep_every=2)
    for step in range(1, 6):
        manager.save(state(step), step)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.pt", "step_00000002.pt", "step_00000004.pt"]
    assert load(tmp_path / "checkpoints" / "step_00000004.pt")["step"] == 4
    assert manager.load_latest()["step"] == 5


def test_corrupt_last_falls_back_to_newest_readable_and_ignores_tmp(tmp_path):
    manager = CheckpointManager(tmp_path, keep_every=2)
    for step in range(1, 5):
        manager.save(state(step), step)
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"truncated by a crash")
    (tmp_path / "checkpoints" / "last.pt.tmp").write_bytes(b"half-written")
    latest = manager.load_latest()
    assert latest["step"] == 4 and torch.equal(latest["model"]["w"], torch.full((3,), 4.0))


def test_no_checkpoint_gives_none(tmp_path):
    assert CheckpointManager(tmp_path).load_latest() is None


def test_atomic_save_leaves_no_tmp_and_replaces(tmp_path):
    path = tmp_path / "c" / "x.pt"
    save_atomic(state(1), path)
    save_atomic(state(2), path)
    assert load(path)["step"] == 2 and not path.with_name("x.pt.tmp").exists()


def test_rng_state_round_trip():
    saved = rng_state()
    first = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(saved)
    second = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]
