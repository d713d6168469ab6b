"""``vmim probe`` through the real CLI in a subprocess (:mod:`tests.cli_harness`): a table of hostile inputs, and the
run forms on real data.

Every refused row asserts the exit code, the one ``vmim`` line naming the key / flag / file, no traceback, and no
process left behind. Undecodable videos are left out with one stdout line each (once, though three feature sets are
probed), the notes say how many and that the accuracies are over the files that loaded, results.json lists them, and
past ``data.max_bad_fraction`` the probe stops (exit 1); SIGTERM while feature extraction is blocked on a video (a
FIFO in the list) stops it with 143.

``vmim probe RUN --train LIST --test LIST`` takes the model from a pretraining run and from a fine-tuning run, with
no second config: the first line names the checkpoint and its step, and the results land in ``RUN/probe``.

One tiny pretraining run (2 steps on the digits) and a fine-tuning run from it (1 step on the video list) are built
once for the module; the ``--config`` rows probe the pretraining checkpoint with the motion fine-tuning config over
lists of real videos.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from tests.cli_harness import REPO, assert_refused, run_cli, sigterm_while_blocked_on
from tests.video_fixtures import colour_videos

PRETRAIN = [
    "model.backbone=vit_test", "model.patch_size=4", "model.tubelet_size=2", "targets.pixel.head.depth=1",
    "targets.pixel.head.dim=32", "targets.pixel.head.heads=2", "data.img_size=16", "data.num_frames=4",
    "data.batch_size=8", "data.num_workers=0", "train.steps_per_epoch=2", "train.epochs=1", "train.precision=fp32",
    "log.progress_bar=false", "log.image_every_steps=0",
]
PROBE = ["model.backbone=vit_test", "data.num_workers=0", "probe.methods=[knn]", "probe.knn_k=3"]
FINETUNE = [
    "model.backbone=vit_test", "model.patch_size=4", "model.tubelet_size=2", "data.img_size=16", "data.num_frames=4",
    "data.batch_size=2", "data.num_workers=0", "train.steps_per_epoch=1", "train.epochs=1", "train.precision=fp32",
    "log.progress_bar=false", "eval.num_views=1", "eval.num_crops=1",
]
ON_LISTS = ["probe.methods=[knn]", "probe.knn_k=3", "probe.labels_per_class=[1,0]"]
"""``vmim probe RUN --train fit.txt --test test.txt`` settings: 2 videos per class, so 1 per class and all."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli_probe")
    run = root / "run"
    proc = run_cli("pretrain", "--config", REPO / "configs/demo/digits.yaml", f"output_dir={run}", *PRETRAIN,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = colour_videos(root, 6)
    rng = np.random.default_rng(1)
    for name in ("broken1.mp4", "broken2.mp4"):
        (root / name).write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    lists = {"fit": [f"{v} {i % 3}" for i, v in enumerate(videos)],
             "test": [f"{v} {i % 3}" for i, v in enumerate(videos[:3])],
             "test_one_bad": [f"{videos[0]} 0", f"{root / 'broken1.mp4'} 1", f"{videos[1]} 1", f"{videos[2]} 2"],
             "test_two_bad": [f"{root / 'broken1.mp4'} 0", f"{videos[0]} 0", f"{root / 'broken2.mp4'} 1",
                              f"{videos[1]} 1"],
             "not_integer": [f"{videos[0]} 0", f"{videos[1]} one"]}
    for name, lines in lists.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    no_checkpoints = root / "no_checkpoints"
    no_checkpoints.mkdir()
    (no_checkpoints / "config.yaml").write_text((run / "config.yaml").read_text())
    finetune_run = root / "finetune_run"
    finetune_run.mkdir()
    (finetune_run / "config.yaml").write_text((REPO / "configs/demo/motion_finetune.yaml").read_text())
    finetuned = root / "finetuned"
    proc = run_cli("finetune", "--config", REPO / "configs/demo/motion_finetune.yaml", f"init={run}",
                   f"output_dir={finetuned}", *FINETUNE, "~data.datasets", "data.datasets.clips.kind=video",
                   f"data.datasets.clips.path={root}/fit.txt", "~eval.datasets", "eval.datasets.val.kind=video",
                   f"eval.datasets.val.path={root}/test.txt", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "run": run, "no_checkpoints": no_checkpoints, "finetune_run": finetune_run,
            "finetuned": finetuned}


def on_videos(root, test: str, fit: str = "fit") -> list[str]:
    """``--config`` arguments: the motion config probing the run's checkpoint on the lists ``fit`` and ``test``."""
    return ["--config", str(REPO / "configs/demo/motion_finetune.yaml"), f"init={root}/run/checkpoints/last.pt",
            *PROBE, "~data.datasets", "data.datasets.clips.kind=video", f"data.datasets.clips.path={root}/{fit}.txt",
            "data.datasets.clips.stride=2", "~eval.datasets", "eval.datasets.val.kind=video",
            f"eval.datasets.val.path={root}/{test}.txt", "eval.datasets.val.stride=2", f"output_dir={root}/by_config"]


# (id, arguments (with {root}), exit code, words of the one line)
REFUSED = [
    ("nonexistent_run", ["{root}/nothing"], 2, ["{root}/nothing", "not a run directory"]),
    ("finetuning_run_without_checkpoints", ["{root}/finetune_run"], 2, ["no checkpoint in", "{root}/finetune_run"]),
    ("no_checkpoints", ["{root}/no_checkpoints"], 2, ["no checkpoint", "{root}/no_checkpoints"]),
    ("no_best_checkpoint", ["{root}/run", "--checkpoint", "best"], 2,
     ["no checkpoint", "{root}/run/checkpoints/best.pt"]),
    ("missing_train_list", ["{root}/run", "--train", "{root}/nothing.txt", "--test", "{root}/test.txt"], 2,
     ["'--train'", "{root}/nothing.txt", "does not exist"]),
    ("missing_test_folder", ["{root}/run", "--train", "{root}/fit.txt", "--test", "{root}/no_folder/"], 2,
     ["'--test'", "{root}/no_folder/"]),
    ("train_without_test", ["{root}/run", "--train", "{root}/fit.txt"], 2, ["'--test'", "--train needs --test"]),
    ("train_label_not_an_integer", ["{root}/run", "--train", "{root}/not_integer.txt", "--test", "{root}/test.txt"], 2,
     ["'--train'", "{root}/not_integer.txt", "line 2"]),
    ("train_with_config", on_videos("{root}", "test") + ["--train", "{root}/fit.txt"], 2, ["'--train'", "with RUN"]),
    ("budget_not_an_integer", ["{root}/run", "probe.labels_per_class=[1,x]"], 2, ["probe.labels_per_class", "'x'"]),
    ("unknown_baseline", ["{root}/run", "probe.baselines=[pixels]"], 2, ["probe.baselines", "raw_pixels"]),
    ("missing_list", on_videos("{root}", "missing"), 2, ["eval.datasets.val.path", "{root}/missing.txt"]),
    ("label_not_an_integer", on_videos("{root}", "not_integer"), 2, ["{root}/not_integer.txt", "line 2"]),
    ("no_eval_dataset", on_videos("{root}", "test")[:-3] + ["~eval.datasets"], 2, ["eval.datasets"]),
    ("unknown_key", ["{root}/run", "probe.knn_kk=3"], 2, ["probe.knn_kk"]),
    ("too_many_bad_files", on_videos("{root}", "test_two_bad") + ["data.max_bad_fraction=0.3"], 1,
     ["dataset 'eval.datasets.val'", "2 undecodable of 4", "data.max_bad_fraction=0.3"]),
]


@pytest.mark.parametrize("name, args, code, words", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(setup, name, args, code, words):
    root = setup["root"]
    proc = run_cli("probe", *(a.format(root=root) for a in args))
    assert_refused(proc, *(w.format(root=root) for w in words), code=code)


def test_undecodable_videos_are_left_out_with_one_line_each(setup):
    root = setup["root"]
    proc = run_cli("probe", *on_videos(root, "test_one_bad"), "data.max_bad_fraction=0.5",
                   "probe.labels_per_class=[1,0]")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    bad = [line for line in lines if "broken1.mp4" in line]  # three feature sets probed: still one line
    assert len(bad) == 1 and bad[0].startswith(f"bad file in dataset 'eval.datasets.val': {root / 'broken1.mp4'}: ")
    assert bad[0].endswith("(left out; 1 bad so far)")
    assert "1 file failed to load and left out: accuracies over the files that loaded" in lines
    assert "all labels: 6 fit, 3 test" in lines
    results = json.loads((root / "by_config" / "probe" / "results.json").read_text())
    assert [(e["dataset"], e["index"], e["path"]) for e in results["left_out"]] == [
        ("eval.datasets.val", 1, str(root / "broken1.mp4"))]
    assert (results["data"]["fit"]["samples"], results["data"]["test"]["samples"]) == (6, 3)
    assert results["data"]["test"]["datasets"][0]["left_out"] == 1
    assert results["checkpoint"] == {"path": f"{root}/run/checkpoints/last.pt", "step": 2, "task": "pretrain"}


def test_run_with_train_and_test_lists(setup):
    """A pretraining run's encoder on video lists, no second config: the first line names the checkpoint, its step
    and both sides; the results files land in RUN/probe, one TSV row per feature set x method x budget."""
    root, run = setup["root"], setup["run"]
    proc = run_cli("probe", run, "--train", root / "fit.txt", "--test", root / "test.txt", *ON_LISTS)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == (f"probe of {run}/checkpoints/last.pt (pretrain, step 2): fit 6 ({root}/fit.txt), "
                        f"test 3 ({root}/test.txt)")
    assert lines[1:4] == ["1 label per class: 3 fit, 3 test, 3 draws",
                          "  method    pretrained     random init    raw pixels", lines[3]]
    assert lines[3].startswith("  knn       ") and lines[3].count(" ± ") == 3, lines[3]
    assert lines[-1] == f"results: {run}/probe/results.json, results.tsv"
    results = json.loads((run / "probe" / "results.json").read_text())
    assert results["checkpoint"]["step"] == 2
    assert [d["name"] for side in ("fit", "test") for d in results["data"][side]["datasets"]] == ["--train", "--test"]
    rows = (run / "probe" / "results.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["features", "method", "labels_per_class", "mean", "std", "n", "fit", "test"]
    assert sorted((r.split("\t")[0], r.split("\t")[2], r.split("\t")[5]) for r in rows[1:]) == [
        (f, b, n) for f in ("pretrained", "random_init", "raw_pixels") for b, n in (("0", "1"), ("1", "3"))]


def test_finetuning_run_probes_its_backbone(setup):
    """A fine-tuning run's folder: its backbone, its step, the model from its own config.yaml."""
    root, run = setup["root"], setup["finetuned"]
    proc = run_cli("probe", run, "--train", root / "fit.txt", "--test", root / "test.txt", *ON_LISTS,
                   "probe.baselines=[]", "--output", root / "finetuned_probe")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"probe of {run}/checkpoints/last.pt (finetune, step 1): fit 6 ")
    results = json.loads((root / "finetuned_probe" / "results.json").read_text())
    assert results["feature_sets"] == ["pretrained"] and results["checkpoint"]["task"] == "finetune"
    assert not (run / "probe").exists()


def test_sigterm_mid_extraction_stops_at_once(setup):
    root = setup["root"]
    fifo = root / "block.mp4"
    os.mkfifo(fifo)
    (root / "blocking.txt").write_text(f"{fifo} 0\n" + "".join(f"{root / f'v{i}.mp4'} {i}\n" for i in range(3)))
    done = sigterm_while_blocked_on(fifo, "probe", *on_videos(root, "blocking"), "eval.batch_size=1",
                                    "data.max_bad_fraction=0.5", "data.decode_timeout_s=600")
    assert_refused(done,
                   "SIGTERM received: probe stopped while extracting features of 'eval.datasets.val'",
                   code=128 + signal.SIGTERM)
