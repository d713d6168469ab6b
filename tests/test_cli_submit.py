"""``vmim submit`` refuses hostile cluster options, profiles and configs before anything is queued or written (issue
19): one ``vmim`` line naming the option or key, exit 2, no traceback, no run folder, no process left behind.

Every row is refused, so no job ever starts here (``--local`` would run one as local processes; the harness would
kill any that outlived the command). The comment says what a row did before."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_harness import REPO, assert_refused, run_cli

DEMO = REPO / "configs/demo/digits.yaml"


@pytest.fixture
def where(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "typo.yaml").write_text("partiton: gpu\n")
    (tmp_path / "array.yaml").write_text("array_parallelism: 0\n")
    (tmp_path / "mem.yaml").write_text("mem_gb: .nan\n")
    return tmp_path


# (arguments after `vmim submit --config DEMO`, words the one line must name); {d} is the tmp folder.
ROWS = [
    (["--local", "--nodes", "-1"], ["nodes"]),
    (["--local", "--nodes", "2"], ["nodes", "nodes=1"]),  # submitit's local executor: ValueError traceback
    (["--local", "train.device=cuda"], ["gpus_per_node", "train.device=cuda"]),  # queued; CUDA missing in the job
    (["--local", "train.precision=fp16"], ["gpus_per_node", "fp16"]),  # queued; RuntimeError in the job
    (["--local", "--gpus-per-node", "-1"], ["gpus_per_node"]),
    (["--local", "--time-min", "0"], ["time_min"]),
    (["--local", "--time", "1"], ["signal_delay_s", "time_min"]),  # USR2 due before the job starts
    (["--local", "--time", "abc"], ["--time", "abc"]),  # argparse's own line
    (["--local", "--cpus-per-task", "0"], ["cpus_per_task"]),
    (["--local", "--mem-gb", "nan"], ["mem_gb", "finite"]),
    (["--local", "--max-requeues", "-1"], ["max_requeues"]),
    (["--sbatch", "time=10"], ["sbatch", "time_min"]),  # silently overrode --time
    (["--sbatch", "--mail-type=END"], ["sbatch"]),
    (["--partition", "gpu large"], ["partition", "whitespace"]),
    (["--local", "--profile", "{d}/typo.yaml"], ["partiton", "partition"]),
    (["--local", "--profile", "{d}/array.yaml"], ["array_parallelism"]),
    (["--local", "--profile", "{d}/mem.yaml"], ["mem_gb"]),
    (["--local", "--profile", "{d}/nowhere.yaml"], ["{d}/nowhere.yaml"]),
    (["--local", "data.batch_size=0"], ["data.batch_size"]),
    (["--local", "data.img_size=0"], ["data.img_size"]),
    (["--local", "optim.lr=inf"], ["optim.lr"]),
    (["--local", "output_dir={d}/file/run"], ["output_dir", "{d}/file"]),  # NotADirectoryError writing config.yaml
    (["--local", "--sweep", "optim.lr"], ["optim.lr", "key=value1,value2"]),
    (["--local", "--sweep", "optim.lr=1e-3,inf"], ["optim.lr", "finite"]),
    (["--local", "--test", "digits_images:test"], ["--test", "--eval"]),  # --test scores a run: without --eval, none
]


@pytest.mark.parametrize("args, names", ROWS, ids=[" ".join(r[0])[-60:] for r in ROWS])
def test_submit_refuses_before_anything_is_queued(where, args, names):
    run = where / "run"
    args = [a.format(d=where) for a in args]
    if not any(a.startswith("output_dir=") for a in args):
        args.append(f"output_dir={run}")
    proc = run_cli("submit", "--config", DEMO, *args, timeout=60)
    assert_refused(proc, *[n.format(d=where) for n in names], code=2, no_dirs=(run, where / "file" / "run"))


def test_submit_eval_refuses_a_bad_test_word_before_anything_is_queued(tmp_path):
    """``--test`` words are read before the job is queued: a missing list is one line naming --test and the file."""
    run = tmp_path / "run"
    run.mkdir()
    proc = run_cli("submit", "--eval", str(run), "--local", "--test", str(tmp_path / "missing.txt"), timeout=60)
    assert_refused(proc, "--test", str(tmp_path / "missing.txt"), code=2, no_dirs=(run / "submitit-eval",))
