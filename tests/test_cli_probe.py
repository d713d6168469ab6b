"""``vmim probe`` over a table of hostile inputs, through the real CLI in a subprocess (:mod:`tests.cli_harness`).

Every row asserts the exit code, the one ``vmim`` line naming the key / file, no traceback, and no process left
behind. Undecodable videos are left out with one stdout line each (once, though two models are probed), the result
line says how many and that the accuracies are over the files that loaded, and past ``data.max_bad_fraction`` the
probe stops (exit 1); SIGTERM while feature extraction is blocked on a video (a FIFO in the list) stops it with 143.

One tiny pretraining run (2 steps on the digits) is built once for the module; the ``--config`` rows probe its
checkpoint with the motion fine-tuning config over lists of real videos.
"""

from __future__ import annotations

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
    return {"root": root, "run": run, "no_checkpoints": no_checkpoints, "finetune_run": finetune_run}


def on_videos(root, test: str, fit: str = "fit") -> list[str]:
    """``--config`` arguments: the motion config probing the run's checkpoint on the lists ``fit`` and ``test``."""
    return ["--config", str(REPO / "configs/demo/motion_finetune.yaml"), f"init={root}/run/checkpoints/last.pt",
            *PROBE, "~data.datasets", "data.datasets.clips.kind=video", f"data.datasets.clips.path={root}/{fit}.txt",
            "data.datasets.clips.stride=2", "~eval.datasets", "eval.datasets.val.kind=video",
            f"eval.datasets.val.path={root}/{test}.txt", "eval.datasets.val.stride=2"]


# (id, arguments (with {root}), exit code, words of the one line)
REFUSED = [
    ("nonexistent_run", ["{root}/nothing"], 2, ["{root}/nothing", "not a run directory"]),
    ("finetuning_run", ["{root}/finetune_run"], 2, ["config key 'task'", "set task: pretrain"]),
    ("no_checkpoints", ["{root}/no_checkpoints"], 2, ["no checkpoint", "{root}/no_checkpoints"]),
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
    proc = run_cli("probe", *on_videos(root, "test_one_bad"), "data.max_bad_fraction=0.5")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    bad = [line for line in lines if "broken1.mp4" in line]  # two models probed: still one line
    assert len(bad) == 1 and bad[0].startswith(f"bad file in dataset 'eval.datasets.val': {root / 'broken1.mp4'}: ")
    assert bad[0].endswith("(left out; 1 bad so far)")
    assert lines[-1].endswith("(random init " + lines[-1].split("(random init ")[1].split(";")[0] +
                              "; 6 fit, 3 test; 1 file failed to load and left out: accuracies over the files that "
                              "loaded)"), lines[-1]


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
