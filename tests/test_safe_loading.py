"""Loading a checkpoint never runs code (issue 19): every path that reads a torch file refuses a payload.

A payload is a pickled object whose ``__reduce__`` is ``os.system("touch MARKER")``, in three containers: torch's zip
format, torch's legacy format and a bare ``pickle.dump`` file. Every load path gets one through the real CLI
(``vmim finetune init=FILE`` and ``init=RUN_DIR``, ``vmim eval FILE`` and ``RUN_DIR`` with a replaced ``best.pt``,
``vmim probe RUN_DIR`` and ``--checkpoint FILE``, ``vmim pretrain`` resuming over a replaced ``last.pt``, a teacher
target's ``path``, ``vmim convert``), the containers rotating over the paths; the full (loader x container) matrix
runs in-process, where it costs milliseconds. Each refusal: exit 2, one ``vmim`` line naming the file, no traceback,
the marker never written, no run folder where the refusal comes before work.

Also: random bytes, an empty file and a torch file with the wrong keys as ``init=`` and to ``vmim convert`` (one line
naming the key / file, exit 2, no run folder); vmim's own checkpoints (pretraining, fine-tuning, best.pt) hold only
tensors and plain data; a checkpoint written before numpy's RNG state became a tensor still loads and restores; a
save that fails (a file size limit: EFBIG, as a full disk fails) ends with one line naming the checkpoint and the OS
error, no ``.tmp`` left, the previous checkpoint unchanged (pretraining resume, fine-tuning ``best.pt``, ``vmim
convert``).

One genuine pretraining run and one fine-tuning run from it are shared by the module (about 15 s together).
"""

from __future__ import annotations

import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_harness import REPO, assert_refused, run_cli, vmim_lines
from vmim import safe_load
from vmim.engine import checkpoint
from vmim.engine.checkpoint import CheckpointManager, rng_state, set_rng_state
from vmim.errors import InputError, UnsafeFileError
from vmim.convert.common import load_reference
from vmim.models.loading import read_weights
from vmim.preflight import check_weights

TINY = ["model.backbone=vit_test", "model.patch_size=4", "targets.pixel.head.depth=1", "targets.pixel.head.dim=32",
        "targets.pixel.head.heads=2", "data.img_size=16", "data.num_frames=4", "data.num_workers=0",
        "log.progress_bar=false"]
"""The digits demo shrunk to seconds."""
FINETUNE = ["--config", "configs/demo/motion_finetune.yaml", "model.backbone=vit_test",
            "data.datasets.motion.fraction=0.02", "eval.every_epochs=1", "eval.val_fraction=0.1",
            "log.progress_bar=false"]
CONTAINERS = ("zip", "legacy", "pickle")


class Payload:
    """Unpickling it runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write(path: Path, obj, container: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if container == "zip":
        torch.save(obj, path)
    elif container == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    return path


def payload_file(path: Path, container: str, marker: Path) -> Path:
    """A checkpoint-looking dict (tensors, a config string) with one code-running object."""
    return write(path, {"model": {"backbone.w": torch.zeros(2)}, "config": "", "hook": Payload(marker)}, container)


def payload_run(run_dir: Path, container: str, marker: Path, genuine: Path, name: str = "last.pt") -> Path:
    """A copy of the run ``genuine`` whose ``checkpoints/<name>`` is a payload."""
    shutil.copytree(genuine, run_dir, ignore=shutil.ignore_patterns("tb", "eval"))
    payload_file(run_dir / "checkpoints" / name, container, marker)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A genuine pretraining run (1 epoch) and a fine-tuning run from it (1 epoch, best.pt and last.pt)."""
    root = tmp_path_factory.mktemp("genuine")
    pre, ft = root / "pretrain", root / "finetune"
    proc = run_cli("pretrain", "--config", "configs/demo/digits.yaml", *TINY, "train.epochs=1", f"output_dir={pre}")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("finetune", *FINETUNE, f"init={pre}", "train.epochs=1", f"output_dir={ft}")
    assert proc.returncode == 0, proc.stderr
    assert (ft / "checkpoints" / "best.pt").is_file()
    return {"pretrain": pre, "finetune": ft}


def assert_safe_refusal(proc, file: Path, marker: Path, no_dirs=()) -> None:
    line = assert_refused(proc, str(file), "refused for safety", code=2, no_dirs=no_dirs)
    assert "posix.system" in line or "os.system" in line, line
    assert not marker.exists(), "the payload ran"


# ----------------------------------------------------------------------------------------------------
# Every load path, through the real CLI (one container each, rotating)
# ----------------------------------------------------------------------------------------------------


def _teacher(path: Path) -> list[str]:
    return ["targets.teach.kind=teacher", f"targets.teach.path={path}", "targets.teach.head.kind=decoder",
            "targets.teach.head.depth=1", "targets.teach.head.dim=32", "targets.teach.head.heads=2"]


CLI_PATHS = {
    "finetune init=FILE": "zip", "finetune init=RUN_DIR": "legacy", "eval FILE": "pickle",
    "eval RUN_DIR best.pt": "zip", "probe RUN_DIR": "legacy", "probe --checkpoint FILE": "pickle",
    "pretrain resume last.pt": "zip", "pretrain resume=FILE": "legacy", "teacher path": "legacy",
    "convert": "pickle", "teacher run dir": "pickle",
}


@pytest.mark.parametrize("path", list(CLI_PATHS))
def test_every_cli_load_path_refuses_code(path, runs, tmp_path):
    container, marker, out = CLI_PATHS[path], tmp_path / "MARKER", tmp_path / "out"
    file = payload_file(tmp_path / "payload.pt", container, marker)
    no_dirs: tuple[Path, ...] = (out,)
    if path == "finetune init=FILE":
        proc = run_cli("finetune", *FINETUNE, f"init={file}", f"output_dir={out}")
    elif path == "finetune init=RUN_DIR":
        run = payload_run(tmp_path / "run", container, marker, runs["pretrain"])
        file = run / "checkpoints" / "last.pt"
        proc = run_cli("finetune", *FINETUNE, f"init={run}", f"output_dir={out}")
    elif path == "eval FILE":
        proc = run_cli("eval", file, "--output", out)
    elif path == "eval RUN_DIR best.pt":
        run = payload_run(tmp_path / "run", container, marker, runs["finetune"], "best.pt")
        file = run / "checkpoints" / "best.pt"
        proc = run_cli("eval", run)
        no_dirs = (run / "eval",)
    elif path == "probe RUN_DIR":
        run = payload_run(tmp_path / "run", container, marker, runs["pretrain"])
        file = run / "checkpoints" / "last.pt"
        proc = run_cli("probe", run)
    elif path == "probe --checkpoint FILE":
        proc = run_cli("probe", runs["pretrain"], "--checkpoint", file)
    elif path == "pretrain resume last.pt":
        run = payload_run(tmp_path / "run", container, marker, runs["pretrain"])
        file = run / "checkpoints" / "last.pt"
        before, config_before = file.read_bytes(), (run / "config.yaml").read_bytes()
        proc = run_cli("pretrain", "--config", "configs/demo/digits.yaml", *TINY, "train.epochs=2",
                       f"output_dir={run}")
        assert file.read_bytes() == before, "the refused checkpoint was overwritten"
        assert (run / "config.yaml").read_bytes() == config_before, "refused after the run folder was touched"
        assert not (run / "checkpoints" / "step_00000066.pt").exists()
    elif path == "pretrain resume=FILE":
        proc = run_cli("pretrain", "--config", "configs/demo/digits.yaml", *TINY, f"resume={file}",
                       f"output_dir={out}")
    elif path == "teacher path":
        proc = run_cli("pretrain", "--config", "configs/demo/digits.yaml", *TINY, *_teacher(file),
                       f"output_dir={out}")
    elif path == "teacher run dir":
        run = payload_run(tmp_path / "run", container, marker, runs["pretrain"])
        file = run / "checkpoints" / "last.pt"
        proc = run_cli("pretrain", "--config", "configs/demo/digits.yaml", *TINY, *_teacher(run),
                       f"output_dir={out}")
    else:
        proc = run_cli("convert", "--from", "videomae", file, out / "converted.pt")
    assert_safe_refusal(proc, file, marker, no_dirs)


def test_genuine_checkpoint_with_one_extra_object_is_refused(runs, tmp_path):
    """A real fine-tuned checkpoint, everything in place, plus one payload: refused whole, by eval and as init."""
    marker = tmp_path / "MARKER"
    state = torch.load(runs["finetune"] / "checkpoints" / "last.pt", weights_only=True)
    file = write(tmp_path / "tampered.pt", {**state, "extra": Payload(marker)}, "zip")
    assert_safe_refusal(run_cli("eval", file, "--output", tmp_path / "out"), file, marker, (tmp_path / "out",))
    with pytest.raises(UnsafeFileError, match="posix.system"):
        read_weights(file)
    run = tmp_path / "run"
    shutil.copytree(runs["finetune"], run)
    shutil.copyfile(file, run / "checkpoints" / "last.pt")
    with pytest.raises(UnsafeFileError, match="last.pt"):  # never skipped for an older checkpoint
        CheckpointManager(run).load_latest()
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------
# Every loader x every container, in-process
# ----------------------------------------------------------------------------------------------------


def _dcp_folder(folder: Path, state: dict) -> Path:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is disabled ...": one process, on purpose
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": {"w": torch.ones(3)}, "optimizer": {}}, checkpoint_id=str(folder), no_dist=True)
    torch.save(state, folder / checkpoint.SHARDED_STATE)
    return folder


def _load_via(loader: str, file: Path, tmp_path: Path, container: str, marker: Path) -> Path:
    """Read ``file`` (a payload) through ``loader``; returns the file the refusal must name."""
    from vmim.targets.teacher import TeacherTarget

    if loader in ("read_weights run dir", "load_latest"):
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        shutil.copyfile(file, tmp_path / "run" / "checkpoints" / "last.pt")
        torch.save({"model": {}, "config": ""}, tmp_path / "run" / "checkpoints" / "step_00000001.pt")  # older, fine
        file = tmp_path / "run" / "checkpoints" / "last.pt"
    if loader == "read_weights file":
        read_weights(file)
    elif loader == "read_weights run dir":
        read_weights(tmp_path / "run")
    elif loader == "checkpoint.load":
        checkpoint.load(file)
    elif loader == "load_latest":
        CheckpointManager(tmp_path / "run").load_latest()
    elif loader == "sharded state.pt":
        folder = _dcp_folder(tmp_path / "last", {"step": 1})
        shutil.copyfile(file, folder / checkpoint.SHARDED_STATE)
        file = folder / checkpoint.SHARDED_STATE
        checkpoint.load(folder, sharded=True)
    elif loader == "sharded .metadata":
        folder = _dcp_folder(tmp_path / "last", {"step": 1})
        write(folder / ".metadata", {"meta": Payload(marker)}, "pickle")  # DCP's index is a plain pickle
        file = folder / ".metadata"
        checkpoint.load(folder, sharded=True)
    elif loader == "convert load_reference":
        load_reference(file)
    elif loader == "teacher (vmim)":
        TeacherTarget((2, 4, 4), path=str(file))
    elif loader == "teacher (timm)":
        TeacherTarget((1, 16, 16), path=str(file), timm_model="vit_tiny_patch16_224")
    elif loader == "preflight init":
        check_weights("init", str(file))
    return file


LOADERS = ("read_weights file", "read_weights run dir", "checkpoint.load", "load_latest", "sharded state.pt",
           "sharded .metadata", "convert load_reference", "teacher (vmim)", "teacher (timm)", "preflight init")


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("loader", LOADERS)
def test_every_loader_refuses_every_container(loader, container, tmp_path):
    marker = tmp_path / "MARKER"
    file = payload_file(tmp_path / "payload.pt", container, marker)
    with pytest.raises(UnsafeFileError) as info:
        _load_via(loader, file, tmp_path, container, marker)
    message = str(info.value)
    expected = {"read_weights run dir": tmp_path / "run" / "checkpoints" / "last.pt",
                "load_latest": tmp_path / "run" / "checkpoints" / "last.pt",
                "sharded state.pt": tmp_path / "last" / checkpoint.SHARDED_STATE,
                "sharded .metadata": tmp_path / "last" / ".metadata"}.get(loader, file)
    assert str(expected) in message and "\n" not in message, message
    assert "posix.system" in message, message
    assert not marker.exists(), "the payload ran"


def test_reference_files_keep_their_namespace_and_numpy_arrays(tmp_path):
    """What stays readable: argparse args (convert only), numpy arrays (data-only globals), a sharded folder."""
    import argparse

    sd = {"model": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1), "acc": np.float64(0.5),
          "arr": np.arange(3, dtype=np.uint32)}
    torch.save(sd, tmp_path / "ref.pth")
    loaded = load_reference(tmp_path / "ref.pth")
    assert loaded["args"].lr == 0.1 and loaded["arr"].tolist() == [0, 1, 2] and loaded["acc"] == 0.5
    with pytest.raises(UnsafeFileError, match="argparse.Namespace"):  # only convert allows it
        checkpoint.load(tmp_path / "ref.pth")
    folder = _dcp_folder(tmp_path / "last", {"step": 3})
    whole = checkpoint.load(folder)
    assert whole["step"] == 3 and torch.equal(whole["model"]["w"], torch.ones(3))


# ----------------------------------------------------------------------------------------------------
# Unreadable files and wrong keys: init= and vmim convert
# ----------------------------------------------------------------------------------------------------


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "wrong keys":
        torch.save({"weights": {"w": torch.zeros(2)}, "epoch": 3}, path)
    return path


@pytest.mark.parametrize("kind", ["random", "empty", "wrong keys"])
def test_init_that_is_not_weights_is_refused_before_the_run_folder(kind, tmp_path):
    file, out = _bad_file(tmp_path, kind), tmp_path / "out"
    proc = run_cli("finetune", *FINETUNE, f"init={file}", f"output_dir={out}")
    line = assert_refused(proc, "init", str(file), code=2, no_dirs=(out,))
    if kind == "wrong keys":
        assert "'model'" in line and "'config'" in line and "weights" in line, line


@pytest.mark.parametrize("kind", ["random", "empty", "wrong keys"])
def test_convert_of_a_file_that_is_not_weights_is_refused(kind, tmp_path):
    file, out = _bad_file(tmp_path, kind), tmp_path / "out"
    proc = run_cli("convert", "--from", "videomae", file, out / "converted.pt")
    line = assert_refused(proc, str(file), code=2, no_dirs=(out,))
    if kind == "wrong keys":
        assert "state dict" in line and "epoch" in line, line


def test_a_backbone_file_without_its_state_dict_names_the_key(tmp_path):
    torch.save({"format": "vmim-backbone", "version": 1, "model": {}, "video_grid": [1, 2, 2], "data": {}},
               tmp_path / "b.pt")
    with pytest.raises(InputError, match=r"b\.pt: .*'state_dict' \(no such key"):
        read_weights(tmp_path / "b.pt")


# ----------------------------------------------------------------------------------------------------
# What vmim writes: tensors and plain data; older checkpoints stay readable
# ----------------------------------------------------------------------------------------------------


def test_own_checkpoints_hold_only_tensors_and_plain_data(runs):
    """Read with torch's default allow list alone (no numpy): pretraining last.pt, fine-tuning last.pt (EMA-free
    Validation state, data and bad-file state, RNG) and best.pt."""
    for file in (runs["pretrain"] / "checkpoints" / "last.pt", runs["finetune"] / "checkpoints" / "last.pt",
                 runs["finetune"] / "checkpoints" / "best.pt"):
        state = torch.load(file, weights_only=True)
        assert torch.serialization.get_unsafe_globals_in_checkpoint(file) == [], file
        if "rng" in state:
            kind, keys, *_ = state["rng"][0]["numpy"]
            assert kind == "MT19937" and isinstance(keys, torch.Tensor) and keys.shape == (624,)


def test_rng_state_round_trips_bit_exactly_and_old_ndarray_states_restore(tmp_path):
    np.random.seed(123)
    saved = rng_state()
    torch.save(saved, tmp_path / "rng.pt")
    expected = np.random.rand(5)
    np.random.seed(7)
    set_rng_state(safe_load.load(tmp_path / "rng.pt"))
    assert np.array_equal(np.random.rand(5), expected)
    np.random.seed(123)
    old = {**saved, "numpy": np.random.get_state()}  # what checkpoints held before: an ndarray
    torch.save({"rng": [old]}, tmp_path / "old.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "old.pt")  # numpy globals, allowed
    np.random.seed(7)
    set_rng_state(checkpoint.load(tmp_path / "old.pt")["rng"][0])
    assert np.array_equal(np.random.rand(5), expected)


# ----------------------------------------------------------------------------------------------------
# A save that fails: one line, no .tmp, the previous checkpoint kept
# ----------------------------------------------------------------------------------------------------


def run_with_file_limit(limit: int, *args) -> subprocess.CompletedProcess:
    """The CLI with ``RLIMIT_FSIZE`` = ``limit`` bytes: a write past it fails with EFBIG (SIGXFSZ ignored), as a full
    disk fails a write; in its own session, checked for leftover processes as :func:`run_cli` does."""
    from tests.cli_harness import _session_members

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    proc = subprocess.Popen([sys.executable, "-m", "vmim.cli", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=limit_files)
    out, err = proc.communicate(timeout=300)
    assert not _session_members(proc.pid), "processes left behind"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_save_failed(proc, file: Path, before: bytes | None) -> None:
    line = assert_refused(proc, str(file), "File too large", code=1)
    assert line.startswith("vmim: could not write"), line
    assert not list(file.parent.glob("*.tmp")), "a .tmp was left"
    if before is not None:
        assert file.read_bytes() == before, "the previous checkpoint changed"
        assert safe_load.load(file)


def test_pretraining_save_failure_keeps_the_previous_checkpoint(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["pretrain"], run)
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    proc = run_with_file_limit(len(before) // 2, "pretrain", "--config", "configs/demo/digits.yaml", *TINY,
                               "train.epochs=2", f"output_dir={run}")
    assert_save_failed(proc, last, before)
    assert torch.load(last, weights_only=True)["step"] == 66  # still the end of epoch 1: resumable


def test_finetuning_best_checkpoint_save_failure(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["finetune"], run)
    best = run / "checkpoints" / "best.pt"
    before = best.read_bytes()
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    last["hooks"]["Validation"]["best"] = -1.0  # the next validation is a new best: best.pt is written first
    torch.save(last, run / "checkpoints" / "last.pt")
    proc = run_with_file_limit(len(before) // 2, "finetune", *FINETUNE, f"init={runs['pretrain']}",
                               "train.epochs=2", f"output_dir={run}")
    assert_save_failed(proc, best, before)


def test_convert_save_failure(runs, tmp_path):
    state = torch.load(runs["pretrain"] / "checkpoints" / "last.pt", weights_only=True)
    src = tmp_path / "videomae.pth"
    torch.save({"model": {"encoder." + k[9:]: v for k, v in state["model"].items() if k.startswith("backbone.")}},
               src)
    dst = tmp_path / "out" / "converted.pt"
    proc = run_with_file_limit(4096, "convert", "--from", "videomae", src, dst, "--num-frames", "4",
                               "--img-size", "16")
    assert_save_failed(proc, dst, None)
    assert not dst.exists()
    assert len(vmim_lines(proc)) == 1


def test_bad_weights_are_refused_without_torch(runs, tmp_path):
    """The pre-flight look (:func:`vmim.safe_load.peek`) refuses a payload, random bytes, an empty file and a torch
    file of the wrong kind before torch is imported (so in well under a second), and builds nothing of a payload;
    a genuine checkpoint passes it with its keys visible."""
    marker = tmp_path / "MARKER"
    files = {"payload": payload_file(tmp_path / "payload.pt", "zip", marker),
             "legacy payload": payload_file(tmp_path / "legacy.pt", "legacy", marker),
             "random": tmp_path / "random.pt", "empty": tmp_path / "empty.pt", "wrong": tmp_path / "wrong.pt"}
    files["random"].write_bytes(bytes(range(256)) * 8)
    files["empty"].write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, files["wrong"])
    script = (
        "import sys, json\n"
        "from vmim.preflight import check_weights\n"
        "out = {}\n"
        "for name, path in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        check_weights('init', path)\n"
        "        out[name] = 'passed'\n"
        "    except Exception as err:\n"
        "        out[name] = f'{type(err).__name__}: {err}'\n"
        "out['torch imported'] = 'torch' in sys.modules\n"
        "print(json.dumps(out))\n")
    import json

    proc = subprocess.run([sys.executable, "-c", script, json.dumps({k: str(v) for k, v in files.items()})],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out.pop("torch imported") is False, out
    assert out["payload"].startswith("UnsafeFileError: config key 'init'") and "posix.system" in out["payload"]
    assert out["legacy payload"].startswith("UnsafeFileError") and "posix.system" in out["legacy payload"]
    assert "not a readable torch checkpoint" in out["random"] and "an empty file" in out["empty"]
    assert "neither a vmim checkpoint" in out["wrong"] and "weights" in out["wrong"]
    assert not marker.exists()
    from vmim.safe_load import peek

    skeleton = peek(runs["pretrain"] / "checkpoints" / "last.pt")
    assert {"model", "config", "optimizer", "rng"} <= set(skeleton) and isinstance(skeleton["config"], str)
