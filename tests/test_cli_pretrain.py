"""``vmim pretrain`` refuses hostile input before any work (issue 19): one ``vmim`` line naming the key (and the file
and line where there is one), exit 2, no traceback, no run folder, no process left behind, well under a second each.

Every row ran before this check existed: most passed validation and failed seconds later, after torch was imported
and the run folder made, with a traceback naming no key (the comment says how)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_harness import REPO, assert_refused, run_cli

DEMO = REPO / "configs/demo/digits.yaml"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Lists a run may name: empty, with a negative label, a word for a label, a folder listed as a video."""
    (tmp_path / "videos" / "b.mp4").mkdir(parents=True)
    (tmp_path / "file").write_text("not a folder")
    for name, body in {"empty.txt": "# nothing yet\n\n", "negative.txt": "a.mp4 0\nb.mp4 -1\n",
                       "word.txt": "a.mp4 0\nb.mp4 cat\n", "folder.txt": "a.mp4 0\nvideos/b.mp4 1\n",
                       "empty.csv": "path,label\n"}.items():
        (tmp_path / name).write_text(body)
    return tmp_path


def video(path: str) -> list[str]:
    return ["data.datasets.clips.kind=video", f"data.datasets.clips.path={path}"]


# (overrides, words the one line must name); {d} is the data folder.
ROWS = [
    (["data.img_size=0"], ["data.img_size"]),  # 0 % patch == 0 passed; the model failed to build
    (["data.img_size=-16"], ["data.img_size"]),
    (["data.num_frames=0"], ["data.num_frames"]),
    (["data.batch_size=0"], ["data.batch_size"]),
    (["data.num_workers=-1"], ["data.num_workers"]),
    (["train.epochs=0"], ["train.epochs"]),
    (["train.steps_per_epoch=-1"], ["train.steps_per_epoch"]),
    (["model.patch_size=0"], ["model.patch_size"]),
    (["targets.pixel.head.depth=-1"], ["targets.pixel.head.depth"]),
    (["targets.pixel.head.heads=0"], ["targets.pixel.head.heads"]),
    (["targets.pixel.head.block=12"], ["targets.pixel.head.block", "12-block"]),  # ValueError building the head
    (["masking.ratio_video=1.0"], ["masking.ratio_video"]),
    (["masking.ratio_image=0"], ["masking.ratio_image"]),
    (["optim.lr=inf"], ["optim.lr", "finite"]),  # passed lr > 0
    (["optim.weight_decay=-1"], ["optim.weight_decay"]),  # torch AdamW ValueError
    (["optim.eps=0"], ["optim.eps"]),
    (["data.mean=[nan,0.5,0.5]"], ["data.mean[0]"]),  # NaN inputs, NaN losses
    (["train.seed=-1"], ["train.seed"]),  # np.random.seed(-1) in the trainer
    (["train.precision=fp16", "train.device=cpu"], ["train.precision"]),  # RuntimeError after the model was built
    (["log.image_every_steps=-1"], ["log.image_every_steps"]),
    (["checkpoint.keep_every_steps=-1"], ["checkpoint.keep_every_steps"]),
    (["data.datasets.digits_images.subset_seed=-1", "data.datasets.digits_images.fraction=0.5"],
     ["data.datasets.digits_images.subset_seed"]),  # numpy default_rng(-1)
    (["optim.lrr=1"], ["optim.lrr", "optim.lr"]),  # a typo, with the key meant
    (["output_dir={d}/file/run"], ["output_dir", "{d}/file"]),  # NotADirectoryError making the run folder
    (["output_dir={d}/file"], ["output_dir", "{d}/file"]),  # FileExistsError
    (["resume={d}/nowhere.pt"], ["resume", "{d}/nowhere.pt"]),  # FileNotFoundError after the model was built
    (video("{d}/nope.txt"), ["data.datasets.clips.path", "{d}/nope.txt"]),
    (video("{d}/empty.txt"), ["data.datasets.clips.path", "{d}/empty.txt", "no samples"]),  # exit 1, late
    (video("{d}/empty.csv") + ["data.datasets.clips.format=csv"], ["data.datasets.clips.path", "{d}/empty.csv"]),
    (video("{d}/negative.txt"), ["data.datasets.clips.path", "{d}/negative.txt", "line 2", "negative"]),
    (video("{d}/word.txt"), ["data.datasets.clips.path", "{d}/word.txt", "line 2"]),  # exit 2 but no key, late
    (video("{d}/folder.txt"), ["data.datasets.clips.path", "{d}/folder.txt", "line 2", "folder"]),  # "no such file"
]


@pytest.mark.parametrize("overrides, names", ROWS, ids=[" ".join(r[0])[-60:] for r in ROWS])
def test_pretrain_refuses_before_any_work(data, overrides, names):
    run = data / "run"
    args = [o.format(d=data) for o in overrides]
    if not any(a.startswith("output_dir=") for a in args):
        args.append(f"output_dir={run}")
    proc = run_cli("pretrain", "--config", DEMO, *args, timeout=60)
    assert_refused(proc, *[n.format(d=data) for n in names], code=2, no_dirs=(run, data / "file" / "run"))
