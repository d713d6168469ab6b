"""`vmim submit` without a cluster: sweep expansion, cluster profiles, and local mode (2 real processes, DDP)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmim.config import ConfigError, load_config
from vmim.launch.cluster import ClusterConfig, load_cluster
from vmim.launch.submit import expand_sweep, point_name, resolve_runs

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs/demo/digits.yaml")
TINY = [
    "model.backbone=vit_test", "model.patch_size=4", "model.tubelet_size=2", "model.drop_path=0",
    "targets.pixel.head.depth=1", "targets.pixel.head.dim=32", "targets.pixel.head.heads=2",
    "data.img_size=16", "data.num_frames=4", "data.num_workers=0", "train.precision=fp32",
    "log.every_steps=1", "log.progress_bar=false", "log.image_every_steps=0",
]


def read_losses(run_dir: Path) -> dict[int, float]:
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            losses[record["step"]] = record["loss"]
    return losses


def test_sweep_is_the_cross_product_in_order():
    points = expand_sweep(["optim.lr=1e-3,2e-3", "masking.ratio_video=0.75,0.9"])
    assert points == [{"optim.lr": "1e-3", "masking.ratio_video": "0.75"},
                      {"optim.lr": "1e-3", "masking.ratio_video": "0.9"},
                      {"optim.lr": "2e-3", "masking.ratio_video": "0.75"},
                      {"optim.lr": "2e-3", "masking.ratio_video": "0.9"}]
    assert point_name(points[1]) == "lr-1e-3_ratio_video-0.9"
    with pytest.raises(ConfigError, match="key=value1,value2"):
        expand_sweep(["optim.lr"])


def test_sweep_points_get_their_own_run_dirs_and_values(tmp_path):
    _, runs = resolve_runs(DEMO, [f"output_dir={tmp_path}"], ["optim.lr=1e-3,2e-3", "train.seed=1,2"])
    runs = [cfg for cfg, _ in runs]
    assert [Path(r.output_dir).name for r in runs] == ["lr-1e-3_seed-1", "lr-1e-3_seed-2", "lr-2e-3_seed-1",
                                                       "lr-2e-3_seed-2"]
    assert [(r.optim.lr, r.train.seed) for r in runs] == [(1e-3, 1), (1e-3, 2), (2e-3, 1), (2e-3, 2)]
    with pytest.raises(ConfigError, match="optim.lrr"):  # a typo in a sweep key stops before anything is queued
        resolve_runs(DEMO, [f"output_dir={tmp_path}"], ["optim.lrr=1,2"])


def test_profile_flags_override_and_typos_name_the_key(tmp_path):
    profile = tmp_path / "cluster.yaml"
    profile.write_text("partition: gpu\ngpus_per_node: 8\ncpus_per_task: 10\nsbatch: [mail-type=END]\n")
    cluster = load_cluster(profile, {"partition": "preempt", "nodes": 2, "sbatch": ["requeue"], "qos": None})
    assert (cluster.partition, cluster.nodes, cluster.gpus_per_node, cluster.tasks) == ("preempt", 2, 8, 8)
    assert cluster.sbatch == ["mail-type=END", "requeue"]
    profile.write_text("partiton: gpu\n")
    with pytest.raises(ConfigError, match="did you mean 'partition'"):
        load_cluster(profile, {})
    with pytest.raises(ConfigError, match="tasks_per_node"):
        load_cluster(None, {"gpus_per_node": 4, "tasks_per_node": 2})
    with pytest.raises(ConfigError, match="without dashes"):
        load_cluster(None, {"sbatch": ["--mail-type=END"]})
    assert load_cluster(None, {}) == ClusterConfig()


# Options that passed validation and failed (or misbehaved) at submission or in the job; what each did before.
@pytest.mark.parametrize("flags, key, fragment", [
    ({"mem_gb": float("nan")}, "mem_gb", "finite"),  # passed mem_gb >= 0; sbatch --mem=nanGB
    ({"array_parallelism": 0}, "array_parallelism", ">= 1"),  # an array that never starts
    ({"time_min": 1, "signal_delay_s": 120}, "signal_delay_s", "below time_min x 60"),  # USR2 before the first step
    ({"executor": "local", "nodes": 2}, "nodes", "nodes=1"),  # submitit's local executor: ValueError, a traceback
    ({"sbatch": ["time=10"]}, "sbatch", "use time_min"),  # silently overrode time_min (and the signal's timing)
    ({"sbatch": ["output=/tmp/x"]}, "sbatch", "submitit's own"),  # moved the logs vmim reads
    ({"sbatch": ["mail type=END"]}, "sbatch", "lower-case option name"),  # sbatch failed after config.yaml was written
    ({"partition": "gpu large"}, "partition", "whitespace"),
])
def test_cluster_values_that_would_fail_later_name_the_option(flags, key, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)) as err:
        load_cluster(None, flags)
    assert err.value.key == key


def test_a_cpu_only_submission_of_a_cuda_run_is_refused(tmp_path):
    from vmim.launch.cluster import check_submission

    cfg = load_config(DEMO, [f"output_dir={tmp_path}/run", "train.device=cuda"])
    with pytest.raises(ConfigError, match="0 GPUs per node") as err:  # before: RuntimeError inside the job
        check_submission(cfg, load_cluster(None, {}))
    assert err.value.key == "gpus_per_node"
    check_submission(cfg, load_cluster(None, {"gpus_per_node": 1}))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file") as err:  # before: NotADirectoryError writing config.yaml
        check_submission(load_config(DEMO, [f"output_dir={tmp_path}/file/run"]), load_cluster(None, {}))
    assert err.value.key == "output_dir"
    assert not (tmp_path / "run").exists()


def test_build_executor_maps_every_option(tmp_path):
    from vmim.launch.submit import build_executor

    cluster = load_cluster(None, {"partition": "p", "account": "a", "qos": "q", "constraint": "volta32gb",
                                  "nodes": 2, "gpus_per_node": 8, "cpus_per_task": 10, "mem_gb": 400,
                                  "time_min": 120, "exclusive": True, "sbatch": ["mail-type=END"],
                                  "setup": ["module load cuda"]})
    executor = build_executor(cluster, tmp_path, "run")
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=p", "--account=a", "--qos=q", "--constraint=volta32gb", "--nodes=2",
                 "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=10", "--mem=400GB", "--time=120",
                 "--exclusive", "--mail-type=END", "--signal=USR2@120", "module load cuda"):
        assert line in script, line


@pytest.mark.slow
def test_local_mode_two_processes_match_one_process_with_the_global_batch(tmp_path):
    """`vmim submit --local --tasks-per-node 2`: two real processes (gloo), batch 8 each, against one process with
    batch 16 in the same run layout: the same per-step losses (tolerance: float32 reduction order)."""
    common = [*TINY, "train.steps_per_epoch=4", "train.epochs=2", "checkpoint.every_steps=100"]
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", "submit", "--config", DEMO, "--local",
                           "--tasks-per-node", "2", "--cpus-per-task", "1", "--wait", f"output_dir={tmp_path / 'ddp'}",
                           "data.batch_size=8", *common], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"run dir {tmp_path / 'ddp'}" in proc.stdout and "finished: {'step': 8" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", "pretrain", "--config", DEMO,
                           f"output_dir={tmp_path / 'single'}", "data.batch_size=16", *common],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cpu x 2" in (tmp_path / "ddp" / "log.txt").read_text()
    ddp, single = read_losses(tmp_path / "ddp"), read_losses(tmp_path / "single")
    assert sorted(ddp) == sorted(single) == list(range(1, 9))
    for step in single:
        assert ddp[step] == pytest.approx(single[step], rel=1e-5), step
    submission = json.loads((tmp_path / "ddp" / "submission.json").read_text())
    assert submission["cluster"]["executor"] == "local" and "--tasks-per-node 2" in submission["command"]


def test_signal_during_job_start_up_is_kept_for_the_trainer(tmp_path):
    """A SIGUSR2 that arrives before any trainer handler exists (Slurm may warn a minute early) must neither kill
    the task nor be lost: the boot entry point records it and StopSignals turns it into a requeue request."""
    (tmp_path / "early_probe.py").write_text(
        "import os, signal\n"
        "os.kill(os.getpid(), signal.SIGUSR2)\n"
        "from vmim.engine.preemption import StopSignals\n"
        "with StopSignals() as stop:\n"
        "    print('requested', stop.requested)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    proc = subprocess.run([sys.executable, "-m", "vmim.launch.boot", "-u", "-m", "early_probe"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "requested requeue" in proc.stdout


def test_master_port_is_the_jobs_own_and_below_the_ephemeral_range():
    """Every task of a job derives the same port from the job id, outside the kernel's ephemeral range, where another
    process's socket could already hold it (rank 0 then fails with EADDRINUSE and the others wait forever)."""
    from vmim.launch.job import master_port

    ports = {job: master_port(job) for job in ("371", "372", "4242_3", "4242_4")}
    assert ports["371"] == master_port("371")
    assert all(20000 <= p < 32768 for p in ports.values()) and len(set(ports.values())) == 4
