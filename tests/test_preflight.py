"""vmim.preflight: a config's data paths are checked before torch is imported or a run folder is made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmim.config import ConfigError, load_config
from vmim.preflight import check_data_paths, check_output_dir

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs/demo/digits.yaml")


def config(**datasets: dict[str, str]):
    """The demo config plus file datasets ``{name: {key: value}}``."""
    overrides = [f"data.datasets.{name}.{key}={value}"
                 for name, keys in datasets.items() for key, value in keys.items()]
    return load_config(DEMO, overrides)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A list file, an image folder, SSv2 / UCF101 label files and an HMDB51 split folder."""
    (tmp_path / "train.txt").write_text("a.mp4 0\n")
    (tmp_path / "images" / "cat").mkdir(parents=True)
    (tmp_path / "labels.json").write_text("{}")
    (tmp_path / "hmdb_splits").mkdir()
    (tmp_path / "hmdb_splits" / "jump_test_split1.txt").write_text("a.avi 1\n")
    return tmp_path


def test_good_paths_and_builtin_datasets_pass(data):
    check_data_paths(config(
        clips={"kind": "video", "path": data / "train.txt", "root": data},
        images={"kind": "image", "format": "image_folder", "path": data / "images"},
        ssv2={"kind": "video", "format": "ssv2", "path": data / "labels.json", "labels": data / "labels.json"},
        hmdb={"kind": "video", "format": "hmdb51", "path": data / "hmdb_splits"},
    ))  # digits_images, digits_clips (from the demo config) need nothing on disk


@pytest.mark.parametrize("entry, key, problem", [
    ({"kind": "video", "path": "{d}/nope.txt"}, "path", "{d}/nope.txt does not exist (the list file)"),
    ({"kind": "video", "format": "csv", "path": "{d}/images"}, "path", "{d}/images is a folder, expected a file"),
    ({"kind": "image", "format": "image_folder", "path": "{d}/train.txt"}, "path", "{d}/train.txt is not a folder"),
    ({"kind": "image", "format": "image_folder", "path": "{d}/no_images"}, "path",
     "{d}/no_images does not exist (the image folder)"),
    ({"kind": "video", "path": "{d}/train.txt", "root": "{d}/videos"}, "root", "{d}/videos does not exist"),
    ({"kind": "video", "path": "{d}/train.txt", "root": "{d}/train.txt"}, "root", "{d}/train.txt is not a folder"),
    ({"kind": "video", "format": "ssv2", "path": "{d}/labels.json", "labels": "{d}/nope.json"}, "labels",
     "{d}/nope.json does not exist (the SSv2 labels JSON)"),
    ({"kind": "video", "format": "ucf101", "path": "{d}/train.txt", "labels": "{d}/classInd.txt"}, "labels",
     "{d}/classInd.txt does not exist (the UCF101 classInd.txt)"),
    ({"kind": "video", "format": "hmdb51", "path": "{d}/train.txt"}, "path", "{d}/train.txt is not a folder"),
])
def test_a_bad_path_names_its_key_and_the_path(data, entry, key, problem):
    good = {"kind": "video", "path": data / "train.txt"}
    cfg = config(good=good, bad={k: v.format(d=data) for k, v in entry.items()})
    with pytest.raises(ConfigError) as err:
        check_data_paths(cfg)
    assert err.value.key == f"data.datasets.bad.{key}"
    assert str(err.value).startswith(f"config key 'data.datasets.bad.{key}': {problem.format(d=data)}")


def test_an_unreadable_list_is_reported(data):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    (data / "train.txt").chmod(0)
    with pytest.raises(ConfigError, match="train.txt is not readable"):
        check_data_paths(config(clips={"kind": "video", "path": data / "train.txt"}))


def test_importing_preflight_loads_neither_torch_nor_omegaconf():
    code = "import sys, vmim.preflight; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'omegaconf'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def vmim_command() -> list[str]:
    """The installed console script next to this interpreter (.venv/bin/vmim), else ``python -m vmim.cli``."""
    script = Path(sys.executable).parent / "vmim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vmim.cli"]


def test_cli_stops_on_a_missing_list_before_torch_and_before_the_run_folder(tmp_path):
    run_dir, missing = tmp_path / "run", tmp_path / "nope" / "train.txt"
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}  # every import is reported on stderr
    start = time.monotonic()
    proc = subprocess.run([*vmim_command(), "pretrain", "--config", DEMO, f"output_dir={run_dir}",
                           "data.datasets.clips.kind=video", f"data.datasets.clips.path={missing}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - start
    message = [line for line in proc.stderr.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 2, "\n".join(message)[-3000:]
    assert message == [f"vmim: config key 'data.datasets.clips.path': {missing} does not exist (the list file)"]
    assert not run_dir.exists(), "a run folder was created for a run that cannot start"
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "vmim.engine" not in imported
    assert elapsed < 10, f"took {elapsed:.1f} s"  # ~0.3 s; the data loader found it only after ~6 s


# ----------------------------------------------------------------------------------------------------
# What a list holds (issue 19): read once up front, naming the key, the file and the line
# ----------------------------------------------------------------------------------------------------

FINETUNE = str(REPO / "configs/demo/motion_finetune.yaml")


@pytest.mark.parametrize("name, body, fragment", [
    ("empty.txt", "# only a comment\n\n", "lists no samples"),  # before: "none of the 0 listed files exist", exit 1
    ("neg.txt", "a.mp4 0\nb.mp4 -2\n", "line 2: label -2 is negative"),  # before: "has no label" (fine-tuning)
    ("cat.txt", "a.mp4 0\nb.mp4 cat\n", "line 2: expected 'path [label]' with an integer label"),
    ("dir.txt", "a.mp4 0\nvideos/c.mp4 1\n", "line 2 lists a folder, not a file"),  # before: decode failures
    ("empty.csv", "path,label\n", "lists no samples"),
    ("neg.csv", "path,label\na.mp4,-1\n", "line 2: label -1 is negative"),
    ("cat.csv", "a.mp4,x\n", "line 1: expected 'path,label' with an integer label"),
])
def test_a_bad_list_names_the_key_the_file_and_the_line(tmp_path, name, body, fragment):
    (tmp_path / "videos" / "c.mp4").mkdir(parents=True)
    lst = tmp_path / name
    lst.write_text(body)
    fmt = "csv" if name.endswith(".csv") else "space"
    with pytest.raises(ConfigError) as err:
        check_data_paths(config(bad={"kind": "video", "format": fmt, "path": lst}))
    assert err.value.key == "data.datasets.bad.path"
    assert str(lst) in str(err.value) and fragment in str(err.value)


@pytest.mark.parametrize("body, overrides, fragment", [
    ("a.mp4 0\nb.mp4\n", [], "line 2 has no label"),  # before: found after torch, when the data was built
    ("a.mp4 0\nb.mp4 4\n", ["head.num_classes=4"], "line 2 has label 4, outside 0..3 (head.num_classes=4)"),
])
def test_a_supervised_list_needs_labels_below_num_classes(tmp_path, body, overrides, fragment):
    lst = tmp_path / "train.txt"
    lst.write_text(body)
    cfg = load_config(FINETUNE, ["init=", "data.datasets.motion.kind=video", f"data.datasets.motion.path={lst}",
                                 "data.datasets.motion.fraction=1", *overrides], task="finetune")
    with pytest.raises(ConfigError) as err:
        check_data_paths(cfg)
    assert err.value.key == "data.datasets.motion.path" and fragment in str(err.value)


@pytest.mark.parametrize("section", ["datasets", "val_datasets"])
def test_test_and_validation_lists_are_checked_too(tmp_path, section):
    lst = tmp_path / "val.txt"
    lst.write_text("a.mp4 0\nb.mp4\n")
    cfg = load_config(FINETUNE, ["init=", f"eval.{section}.held={{kind: video, path: {lst}}}"], task="finetune")
    with pytest.raises(ConfigError) as err:
        check_data_paths(cfg)
    assert err.value.key == f"eval.{section}.held.path" and "line 2 has no label" in str(err.value)


@pytest.mark.parametrize("entry, fragment", [
    ({"format": "kinetics_csv", "path": "k.csv"}, "lists no videos"),  # a header and no row
    ({"format": "ucf101", "path": "blank.txt", "labels": "classInd.txt"}, "lists no videos"),
    ({"format": "ssv2", "path": "empty.json", "labels": "labels.json"}, "empty JSON list"),
    ({"format": "hmdb51", "path": "splits"}, "holds no *_test_split2.txt files", ),  # split 2 of a split-1 folder
])
def test_other_formats_must_list_something(tmp_path, entry, fragment):
    (tmp_path / "k.csv").write_text("label,youtube_id,time_start,time_end,split\n")
    (tmp_path / "blank.txt").write_text("\n")
    (tmp_path / "classInd.txt").write_text("1 Jump\n")
    (tmp_path / "empty.json").write_text(" [ ]\n")
    (tmp_path / "labels.json").write_text("{}")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "jump_test_split1.txt").write_text("a.avi 1\n")
    entry = {"kind": "video", **{k: tmp_path / v for k, v in entry.items() if k in ("path", "labels")},
             **{k: v for k, v in entry.items() if k == "format"}}
    if entry["format"] == "hmdb51":
        entry["split_number"] = 2
    with pytest.raises(ConfigError, match=re.escape(fragment)) as err:
        check_data_paths(config(bad=entry))
    assert err.value.key == "data.datasets.bad.path"


def test_an_image_folder_without_images_or_classes_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds no image files"):
        check_data_paths(config(bad={"kind": "image", "format": "image_folder", "path": tmp_path / "images"}))


def test_resume_and_teacher_paths_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as err:
        check_data_paths(load_config(DEMO, [f"resume={tmp_path}/last.pt"]))
    assert err.value.key == "resume"  # before: FileNotFoundError after the model was built
    teacher = ["targets.t.kind=teacher", f"targets.t.path={tmp_path}/teacher.pt", "targets.t.token_set=visible",
               "targets.t.head.kind=linear", "targets.t.dim=0"]
    with pytest.raises(ConfigError) as err:
        check_data_paths(load_config(DEMO, [t for t in teacher if not t.startswith("targets.t.dim")]))
    assert err.value.key == "targets.t.path"


# ----------------------------------------------------------------------------------------------------
# output_dir
# ----------------------------------------------------------------------------------------------------


def test_output_dir_that_exists_or_can_be_made_passes_and_nothing_is_made(tmp_path):
    check_output_dir(str(tmp_path))
    check_output_dir(str(tmp_path / "a" / "b" / "run"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, output_dir, fragment", [
    (lambda d: (d / "file").write_text("x"), "file", "exists and is not a folder"),
    (lambda d: (d / "file").write_text("x"), "file/run", "file is a file, not a folder"),
    (lambda d: (d / "link").symlink_to(d / "nowhere"), "link/run", "link is a broken link"),
])
def test_output_dir_that_cannot_be_made_names_the_key_and_the_blocker(tmp_path, make, output_dir, fragment):
    make(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(fragment)) as err:
        check_output_dir(str(tmp_path / output_dir))
    assert err.value.key == "output_dir"


def test_an_unwritable_output_dir_parent_is_refused(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    with pytest.raises(ConfigError, match="ro is not writable"):
        check_output_dir(str(tmp_path / "ro" / "run"))
