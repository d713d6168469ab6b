"""vmim.preflight: a config's data paths are checked before torch is imported or a run folder is made."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmim.config import ConfigError, load_config
from vmim.preflight import check_data_paths

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
