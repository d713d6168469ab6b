"""``vmim eval`` over a table of hostile inputs, through the real CLI in a subprocess (:mod:`tests.cli_harness`).

Every row asserts the exit code, the one ``vmim`` line naming the key / file / line, no traceback, no ``eval``
folder where the input is refused before work, and no process left behind. Undecodable videos (real files next to
random bytes) are skipped as misses with one stdout line each, and stop the command past ``data.max_bad_fraction``;
SIGTERM while a pass is blocked on a video (a FIFO in the list: the pass cannot finish before the signal) stops it
with exit 143 and no predictions file.

One tiny fine-tuned run (the motion demo shrunk to 2 steps, without a validation set: the digits motion test split is
scored for curves only) is built once for the module; every row evaluates it with 1 x 1 views. Which checkpoint is
scored, and the first line that says so: no ``best.pt`` without a validation set (last.pt is scored), an old
``best.pt`` without ``selected_on`` is never the default, one selected on a validation set is. ``--test`` scores other
data (a list file, ``KIND:SPLIT``), named by the file stem, with every refusal of ``eval.datasets``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_harness import REPO, assert_refused, run_cli, sigterm_while_blocked_on, vmim_lines
from tests.video_fixtures import colour_videos

TINY = [
    "model.backbone=vit_test", "model.patch_size=4", "model.tubelet_size=2", "data.img_size=16", "data.num_frames=4",
    "data.batch_size=8", "data.num_workers=0", "data.datasets.motion.fraction=0.1", "~eval.datasets.motion_test",
    "eval.datasets.test.kind=digits_motion", "eval.datasets.test.split=test", "train.steps_per_epoch=2",
    "train.epochs=1", "train.precision=fp32", "log.progress_bar=false", "init=",
]
FAST = ["eval.num_views=1", "eval.num_crops=1", "data.num_workers=0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A fine-tuned run (4 classes), three real videos, a broken one, and lists over them."""
    root = tmp_path_factory.mktemp("cli_eval")
    run = root / "run"
    proc = run_cli("finetune", "--config", REPO / "configs/demo/motion_finetune.yaml", f"output_dir={run}", *TINY,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = colour_videos(root, 3)
    rng = np.random.default_rng(1)
    for name in ("broken1.mp4", "broken2.mp4"):
        (root / name).write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    lists = {"good": [f"{v} {i}" for i, v in enumerate(videos)],
             "one_bad": [f"{videos[0]} 0", f"{root / 'broken1.mp4'} 1", f"{videos[1]} 1", f"{videos[2]} 2"],
             "two_bad": [f"{root / 'broken1.mp4'} 0", f"{videos[0]} 0", f"{root / 'broken2.mp4'} 1", f"{videos[1]} 1"],
             "out_of_range": [f"{videos[0]} 0", f"{videos[1]} 7"],
             "not_integer": [f"{videos[0]} 0", f"{videos[1]} one"]}
    for name, lines in lists.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    (root / "other").mkdir()
    (root / "other" / "good.txt").write_text((root / "good.txt").read_text())
    pretrain_run = root / "pretrain_run"  # what `vmim eval` must refuse: a pretraining run's folder
    (pretrain_run / "checkpoints").mkdir(parents=True)
    (pretrain_run / "config.yaml").write_text((REPO / "configs/demo/digits.yaml").read_text())
    torch.save({"task": "pretrain", "model": {}, "config": ""}, pretrain_run / "checkpoints" / "last.pt")
    empty_run = root / "empty_run"  # a run folder whose checkpoints never got written
    empty_run.mkdir()
    (empty_run / "config.yaml").write_text((run / "config.yaml").read_text())
    return {"root": root, "run": run, "pretrain_run": pretrain_run, "empty_run": empty_run}


def clips(path: Path | str) -> list[str]:
    """Overrides that replace the run's eval datasets with one video list ``clips``."""
    return ["~eval.datasets.test", "eval.datasets.clips.kind=video", f"eval.datasets.clips.path={path}",
            "eval.datasets.clips.stride=2"]


# (id, target (a key of setup), overrides (with {root}), exit code, words of the one line (with {root}))
REFUSED = [
    ("nonexistent_target", None, [], 2, ["{root}/nothing", "neither a run directory nor a checkpoint"]),
    ("pretraining_run", "pretrain_run", [], 2, ["'pretrain' checkpoint", "vmim probe"]),
    ("no_checkpoints", "empty_run", [], 2, ["no checkpoint", "{root}/empty_run"]),
    ("missing_list", "run", clips("{root}/missing.txt"), 2, ["eval.datasets.clips.path", "{root}/missing.txt",
                                                             "does not exist"]),
    ("label_out_of_range", "run", clips("{root}/out_of_range.txt"), 2,
     ["eval.datasets.clips", "{root}/out_of_range.txt line 2", "label 7, outside 0..3"]),
    ("label_not_an_integer", "run", clips("{root}/not_integer.txt"), 2,
     ["eval.datasets.clips", "{root}/not_integer.txt line 2", "integer label"]),
    ("no_eval_dataset", "run", ["~eval.datasets.test"], 2, ["eval.datasets", "names no dataset"]),
    ("unknown_key", "run", ["eval.num_veiws=2"], 2, ["eval.num_veiws"]),
    ("too_many_bad_files", "run", [*clips("{root}/two_bad.txt"), "data.max_bad_fraction=0.3"], 1,
     ["dataset 'clips'", "2 undecodable of 4", "data.max_bad_fraction=0.3"]),
    ("test_list_missing", "run", ["--test", "{root}/missing.txt"], 2, ["--test", "{root}/missing.txt",
                                                                       "does not exist"]),
    ("test_not_a_builtin", "run", ["--test", "digits_moshun:test"], 2, ["--test", "digits_moshun:test",
                                                                         "digits_motion"]),
    ("test_same_stem_twice", "run", ["--test", "{root}/good.txt", "--test", "{root}/other/good.txt"], 2,
     ["--test", "{root}/good.txt", "{root}/other/good.txt", "'good'"]),
    ("test_label_out_of_range", "run", ["--test", "{root}/out_of_range.txt"], 2,
     ["eval.datasets.out_of_range", "{root}/out_of_range.txt line 2", "label 7, outside 0..3"]),
    ("test_split_not_a_split", "run", ["--test", "digits_motion:tset"], 2, ["eval.datasets.digits_motion_tset.split",
                                                                             "tset"]),
]


@pytest.mark.parametrize("name, target, overrides, code, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(setup, name, target, overrides, code, words):
    root, out = setup["root"], setup["root"] / f"out_{name}"
    target_path = setup[target] if target else root / "nothing"
    proc = run_cli("eval", "--output", out, target_path, *FAST, *(o.format(root=root) for o in overrides))
    line = assert_refused(proc, *(w.format(root=root) for w in words), code=code, no_dirs=(out,))
    if name == "too_many_bad_files":  # each bad file had its line on stdout before the stop
        assert [n for n in ("broken1.mp4", "broken2.mp4") if n in proc.stdout] == ["broken1.mp4", "broken2.mp4"]
        assert line.startswith("vmim: dataset 'clips'")


def test_good_videos_are_scored(setup):
    out = setup["root"] / "out_good"
    proc = run_cli("eval", "--output", out, setup["run"], *FAST, *clips(setup["root"] / "good.txt"))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].endswith("(3 videos, 1 x 1 views)")
    assert len((out / "clips.predictions.tsv").read_text().splitlines()) == 4


def test_undecodable_videos_are_misses_with_one_line_each(setup):
    root, out = setup["root"], setup["root"] / "out_one_bad"
    proc = run_cli("eval", "--output", out, setup["run"], *FAST, *clips(root / "one_bad.txt"),
                   "data.max_bad_fraction=0.5")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    bad = [line for line in lines if "broken1.mp4" in line]
    assert len(bad) == 1 and bad[0].startswith(f"bad file in dataset 'clips': {root / 'broken1.mp4'}: ")
    assert bad[0].endswith("(counted as a miss; 1 bad so far)")
    assert lines[-1].endswith("(4 videos, 1 failed to load and count as misses, 1 x 1 views)")
    rows = (out / "clips.predictions.tsv").read_text().splitlines()
    assert len(rows) == 5 and rows[2].split("\t")[0] == str(root / "broken1.mp4") and rows[2].split("\t")[5]


def test_sigterm_mid_pass_stops_without_a_predictions_file(setup):
    root = setup["root"]
    fifo = root / "block.mp4"
    os.mkfifo(fifo)
    listing = root / "blocking.txt"
    listing.write_text(f"{fifo} 0\n" + "".join(f"{root / f'v{i}.mp4'} {i}\n" for i in range(3)))
    out = root / "out_sigterm"
    done = sigterm_while_blocked_on(fifo, "eval", "--output", out, setup["run"], *FAST, *clips(listing),
                                    "eval.batch_size=1", "data.max_bad_fraction=0.5", "data.decode_timeout_s=600")
    assert_refused(done, "SIGTERM received: evaluation stopped after 0 of 4 videos of eval dataset 'clips'",
                   "predictions were not written", code=128 + signal.SIGTERM)
    assert not (out / "clips.predictions.tsv").exists() and not vmim_lines(
        subprocess.CompletedProcess([], 0, "", done.stdout))


# ----------------------------------------------------------------------------------------------------
# Which checkpoint is scored, and the first line that says so
# ----------------------------------------------------------------------------------------------------


def first_lines(proc: subprocess.CompletedProcess, n: int = 1) -> list[str]:
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stdout.splitlines()[:n]


def test_a_run_without_validation_set_keeps_no_best_and_eval_scores_last(setup):
    run = setup["run"]
    assert not (run / "checkpoints" / "best.pt").exists()
    log = (run / "log.txt").read_text()
    assert "no validation set: checkpoints/best.pt is not kept; vmim eval scores last.pt" in log
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    tags = {key for record in records for key in record}
    assert "test/test/top1" in tags and not [t for t in tags if t.startswith("val")]  # curves only, as test/...
    proc = run_cli("eval", "--output", setup["root"] / "out_last", run, *FAST, *clips(setup["root"] / "good.txt"))
    assert first_lines(proc) == [f"checkpoint {run / 'checkpoints' / 'last.pt'}: step 2, epoch 1; the last checkpoint"]


def test_an_old_best_pt_without_selected_on_is_not_the_default(setup, tmp_path):
    """A best.pt as earlier releases kept it (the best top-1 of the first eval dataset: the test set) is scored only
    when asked for, and said to be test-selected; one that records a validation set is the default."""
    run = tmp_path / "run"
    shutil.copytree(setup["run"], run, ignore=shutil.ignore_patterns("tb", "eval"))
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    old = {"model": last["model"], "config": last["config"], "task": "finetune", "step": 1, "epoch": 1,
           "weights": "model", "top1": 0.5}
    torch.save(old, run / "checkpoints" / "best.pt")
    good = clips(setup["root"] / "good.txt")
    default = first_lines(run_cli("eval", "--output", tmp_path / "a", run, *FAST, *good), 2)
    assert default[0] == f"checkpoint {run / 'checkpoints' / 'last.pt'}: step 2, epoch 1; the last checkpoint"
    assert default[1].startswith(f"note: {run / 'checkpoints' / 'best.pt'} records no selected_on") and \
        "test set" in default[1] and "--checkpoint best" in default[1], default
    asked = first_lines(run_cli("eval", "--output", tmp_path / "b", "--checkpoint", "best", run, *FAST, *good), 2)
    assert asked[0] == f"checkpoint {run / 'checkpoints' / 'best.pt'}: step 1, epoch 1; given with --checkpoint"
    assert asked[1].startswith(f"note: {run / 'checkpoints' / 'best.pt'} records no selected_on"), asked
    torch.save({**old, "selected_on": "val/motion_val top-1", "validations": 3}, run / "checkpoints" / "best.pt")
    chosen = first_lines(run_cli("eval", "--output", tmp_path / "c", run, *FAST, *good), 2)
    assert chosen[0] == (f"checkpoint {run / 'checkpoints' / 'best.pt'}: step 1, epoch 1; best validation top-1 on "
                         "val/motion_val of 3 validations (50.00%)"), chosen
    assert not chosen[1].startswith("note:")


def test_test_flag_scores_other_data_named_by_the_stem(setup):
    """--test replaces eval.datasets: a built-in split (KIND:SPLIT) and a list file, each with its predictions file,
    the overrides still tuning how the list is read."""
    root, out = setup["root"], setup["root"] / "out_test_flag"
    proc = run_cli("eval", "--output", out, setup["run"], *FAST, "eval.datasets.good.stride=2", "--test",
                   "digits_motion:test", "--test", root / "good.txt")
    lines = proc.stdout.strip().splitlines()
    assert first_lines(proc)[0].startswith(f"checkpoint {setup['run'] / 'checkpoints' / 'last.pt'}: step 2")
    assert sorted(p.name for p in out.iterdir()) == ["digits_motion_test.predictions.tsv", "good.predictions.tsv"]
    assert len((out / "digits_motion_test.predictions.tsv").read_text().splitlines()) == 1 + 359
    assert len((out / "good.predictions.tsv").read_text().splitlines()) == 1 + 3
    assert lines[-1].endswith("(3 videos, 1 x 1 views)") and "(359 videos, 1 x 1 views)" in proc.stdout


@pytest.mark.parametrize("argv", [["eval", "RUN", "--test", "a.txt", "eval.num_views=2"],
                                  ["eval", "--test", "a.txt", "RUN", "eval.num_views=2"],
                                  ["eval", "RUN", "eval.num_views=2", "--test", "a.txt"]])
def test_options_may_sit_between_the_run_and_the_overrides(argv):
    from vmim.cli import build_parser

    args = build_parser().parse_args(argv)
    assert (args.target, args.test, args.overrides) == ("RUN", ["a.txt"], ["eval.num_views=2"])
