"""The validation set carved from the training data (``eval.val_fraction``: :mod:`vmim.data.splits`) and early
stopping (``eval.patience``, the trainer's ``request_finish``).

Carving: per class round(fraction x count) samples, at least one, none of a class of one and never a whole class;
disjoint from what trains (the ``fraction`` subset is taken from the rest); the same seed carves the same samples.
Early stopping, through the real CLI: the run stops after the validation the rule names (read back from the logged
scores), records it, and a resumed run trains no further; a resume that would carve another split is refused
(before the run folder is touched while ``val_split.tsv`` is there, from the checkpoint's fingerprint otherwise).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmim.data.splits import carve, carve_indices, write_split
from vmim.engine.checkpoint import load
from vmim.engine.metrics import read_metrics

from tests.cli_harness import assert_refused

REPO = Path(__file__).resolve().parents[1]


def test_carve_takes_a_stratified_fraction_of_each_class():
    labels = np.repeat([0, 1, 2, 3, 4], [10, 20, 1, 2, 7])
    val, rest = carve_indices(labels, 0.1, seed=0)
    # 10 -> 1, 20 -> 2, a class of one stays whole in training, 2 -> 1 (at least one), 7 -> 1 (round(0.7))
    assert np.bincount(labels[val], minlength=5).tolist() == [1, 2, 0, 1, 1]
    assert not set(val) & set(rest) and sorted([*val, *rest]) == list(range(len(labels)))
    assert np.array_equal(val, np.sort(val)) and np.array_equal(rest, np.sort(rest))
    again, _ = carve_indices(labels, 0.1, seed=0)
    other = [carve_indices(labels, 0.1, seed=s)[0] for s in range(1, 6)]
    assert np.array_equal(val, again) and any(not np.array_equal(val, o) for o in other)
    val, _ = carve_indices(np.repeat([0, 1], [3, 3]), 0.9, seed=0)  # never a whole class: one of each stays
    assert np.bincount(np.repeat([0, 1], [3, 3])[val]).tolist() == [2, 2]


class Listed:
    """A labeled source without files: what a carve reads (labels, length, descriptions)."""

    modality = "video"

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        return f"clip{index:03d}.mp4"


def test_the_training_subset_comes_from_what_the_carve_leaves(tmp_path):
    labels = np.repeat([0, 1, 2], [40, 30, 20])
    split = carve("clips", Listed(labels), 0.2, 3, fraction=0.5, subset_seed=7)
    rest = np.setdiff1d(np.arange(90), split.val)
    assert split.rest == len(rest) == 90 - 18
    assert np.bincount(labels[split.val]).tolist() == [8, 6, 4]
    assert set(split.train) <= set(rest) and not set(split.train) & set(split.val)
    assert np.bincount(labels[split.train]).tolist() == [16, 12, 8]  # half of 32, 24, 16
    assert np.array_equal(split.val_source().indices, split.val) and len(split.train_source()) == 36
    assert split.digest() == carve("clips", Listed(labels), 0.2, 3, 0.5, 0).digest()  # the subset seed: not the carve
    assert split.digest() != carve("clips", Listed(labels), 0.2, 4, 0.5, 7).digest()
    write_split([split], tmp_path / "val_split.tsv")
    rows = [line.split("\t") for line in (tmp_path / "val_split.tsv").read_text().splitlines()]
    assert rows[0] == ["dataset", "index", "sample", "label"] and len(rows) == 1 + 18
    assert rows[1:] == [["clips", str(i), f"clip{i:03d}.mp4", str(labels[i])] for i in split.val]


TINY = [
    "model.backbone=vit_test", "model.patch_size=4", "model.tubelet_size=2", "data.img_size=16", "data.num_frames=4",
    "data.batch_size=8", "data.num_workers=0", "train.precision=fp32", "log.progress_bar=false", "init=",
    "~eval.datasets.motion_test", "train.steps_per_epoch=2", "train.epochs=6", "eval.every_epochs=1",
    "eval.val_fraction=0.05", "eval.patience=2", "optim.warmup_epochs=0", "optim.lr=1e-9", "optim.min_lr=0",
]
"""The motion demo shrunk to 2 steps per epoch, validated every epoch on 5 % carved from its training clips (72), at
an lr so small that the validation top-1 cannot improve: the patience runs out after the third validation."""


def finetune(run: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmim.cli", "finetune", "--config",
                           str(REPO / "configs/demo/motion_finetune.yaml"), f"output_dir={run}", *TINY, *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("early_stop") / "run"
    proc = finetune(run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_early_stopping_stops_where_the_rule_says_and_a_resume_does_not_train_on(stopped):
    scores = [(r["step"], r["val/motion_val/top1"]) for r in read_metrics(stopped / "metrics.jsonl")
              if "val/motion_val/top1" in r]
    # the rule, from the logged scores: stop at the first validation with 2 in a row not above the best before them
    best, since, stop = -1.0, 0, None
    for i, (_, top1) in enumerate(scores):
        best, since = (top1, 0) if top1 > best else (best, since + 1)
        if since == 2:
            stop = i
            break
    assert stop is not None and stop == len(scores) - 1 < 5, scores  # it stopped, before train.epochs
    state = load(stopped / "checkpoints" / "last.pt")
    epoch = stop + 1
    assert (state["step"], state["train_state"]["epoch"]) == (2 * epoch, epoch)
    assert state["train_state"]["finished"].startswith("early stopping: no better val/motion_val top-1 in 2 "
                                                       "validations in a row (eval.patience=2")
    assert state["hooks"]["Validation"]["since_best"] == 2
    log = (stopped / "log.txt").read_text()
    assert f"training ends early after epoch {epoch} of 6 (step {2 * epoch}): early stopping" in log
    steps = [r["step"] for r in read_metrics(stopped / "metrics.jsonl") if "loss" in r]

    again = finetune(stopped)  # resume=auto on the stopped run
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["step"] for r in read_metrics(stopped / "metrics.jsonl") if "loss" in r] == steps
    assert load(stopped / "checkpoints" / "last.pt")["step"] == 2 * epoch
    after = (stopped / "log.txt").read_text()[len(log):]
    assert f"training ended early at epoch {epoch} of 6 (step {2 * epoch}): early stopping" in after
    assert "nothing left to train" in after and "validating epoch" not in after


def test_a_resume_that_would_carve_another_split_is_refused(stopped, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    config = (run / "config.yaml").read_text()
    proc = finetune(run, "eval.val_seed=1")  # val_split.tsv is there: refused before the run folder is touched
    assert_refused(proc, "eval.val_fraction", str(run / "val_split.tsv"), "eval.val_seed=1", code=2)
    assert (run / "config.yaml").read_text() == config
    (run / "val_split.tsv").unlink()  # gone: the fingerprint in the checkpoint's hook state still tells
    proc = finetune(run, "eval.val_seed=1")
    assert_refused(proc, "eval.val_fraction", "differs from the one this run trained with", code=2)


def test_labels_of_a_fraction_subset_of_a_list_are_its_own(tmp_path):
    """``source_labels`` of a ``fraction`` subset of a file list: the subset's labels, not the whole list's (the
    subset forwards ``entries``, which once made label checks and class counts read the full list)."""
    from vmim.config import load_config
    from vmim.data.build import build_source
    from vmim.data.subset import source_labels

    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"v{i}.mp4 {i % 4}\n" for i in range(40)))
    for i in range(40):
        (tmp_path / f"v{i}.mp4").write_bytes(b"")
    cfg = load_config(REPO / "configs/demo/motion_finetune.yaml",
                      ["init=", f"data.datasets.motion={{kind: video, path: {lst}, fraction: 0.3}}"], task="finetune")
    source, listed, missing = build_source("motion", cfg.data.datasets["motion"], cfg.data, 3)
    labels = source_labels(source)
    assert len(labels) == len(source) == 12 and np.bincount(labels).tolist() == [3, 3, 3, 3]
    assert labels.tolist() == [int(source.describe(i).split("v")[-1].split(".")[0]) % 4 for i in range(len(source))]
