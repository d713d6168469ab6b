"""``vmim submit``: the run config of ``vmim pretrain`` / ``vmim finetune`` (its ``task`` says which) plus cluster
options, submitted through submitit; ``--eval RUN_DIR`` submits ``vmim eval`` of a fine-tuned run.

One run is one job; a sweep (``--sweep key=v1,v2`` flags, crossed) is one job array with one run directory per
point, named after its values. Every run directory gets ``config.yaml`` (resolved, validated before anything is
queued) and ``submission.json`` (the command line, cluster options, job id); submitit's scripts and logs go to
``<run dir>/submitit`` (``<sweep dir>/submitit`` for an array).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shlex
import sys
import time
from pathlib import Path

from ..config import Config, ConfigError, config_to_yaml, load_config
from .cluster import ClusterConfig
from .job import EvalJob, TrainJob


def expand_sweep(sweeps: list[str]) -> list[dict[str, str]]:
    """``["a=1,2", "b=x,y"]`` -> the 4 points ``{"a": "1", "b": "x"}``, ... (cross product, in order)."""
    axes = []
    for item in sweeps:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(item, "sweeps are written key=value1,value2,...")
        axes.append([(key, value) for value in values.split(",")])
    return [dict(point) for point in itertools.product(*axes)]


def point_name(point: dict[str, str]) -> str:
    """Run-directory name of a sweep point: ``lr-0.001_ratio-0.9`` (last key part, filesystem-safe)."""
    parts = [f"{key.split('.')[-1]}-{value}" for key, value in point.items()]
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts)) or "point"


def resolve_runs(config: str, overrides: list[str], sweeps: list[str]
                 ) -> tuple[Config, list[tuple[Config, dict | None]]]:
    """The base config and every run's (validated config, sweep point); a bad key or value stops here, before
    anything is queued. Without sweeps the one run is the base config (point None)."""
    base = load_config(config, overrides)
    if not sweeps:
        return base, [(base, None)]
    runs = []
    for point in expand_sweep(sweeps):
        run_dir = Path(base.output_dir) / point_name(point)
        point_overrides = [f"{key}={value}" for key, value in point.items()]
        runs.append((load_config(config, [*overrides, *point_overrides, f"output_dir={run_dir}"]), point))
    if len({cfg.output_dir for cfg, _ in runs}) != len(runs):
        raise ConfigError("--sweep", "two sweep points map to the same run directory")
    return base, runs


def build_executor(cluster: ClusterConfig, folder: Path, name: str):
    import submitit

    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster.executor,
                                     slurm_max_num_timeout=cluster.max_requeues,
                                     slurm_python=f"{shlex.quote(sys.executable)} -m vmim.launch.boot")
    params = dict(name=name, nodes=cluster.nodes, tasks_per_node=cluster.tasks, cpus_per_task=cluster.cpus_per_task,
                  timeout_min=cluster.time_min)
    if cluster.gpus_per_node:
        params["gpus_per_node"] = cluster.gpus_per_node
    if cluster.mem_gb:
        params["mem_gb"] = cluster.mem_gb
    if cluster.executor == "slurm":
        extra = {}
        for line in cluster.sbatch:
            key, sep, value = line.partition("=")
            extra[key.replace("-", "_")] = value if sep else True
        slurm = dict(partition=cluster.partition or None, account=cluster.account or None, qos=cluster.qos or None,
                     constraint=cluster.constraint or None, exclusive=cluster.exclusive or None,
                     signal_delay_s=cluster.signal_delay_s, array_parallelism=cluster.array_parallelism,
                     setup=list(cluster.setup), additional_parameters=extra)
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
    executor.update_parameters(**params)
    return executor


def write_config(cfg: Config) -> None:
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))


def record_submission(cfg: Config, cluster: ClusterConfig, command: list[str], job_id: str, point: dict | None) -> None:
    run_dir = Path(cfg.output_dir)
    info = {"command": shlex.join(command), "job_id": job_id, "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cluster": dataclasses.asdict(cluster), "sweep_point": point}
    (run_dir / "submission.json").write_text(json.dumps(info, indent=2) + "\n")


def submit(config: str, overrides: list[str], cluster: ClusterConfig, sweeps: list[str] = (),
           command: list[str] | None = None) -> list[tuple]:
    """Queue the run (or one array of sweep points); returns (submitit job, config) pairs, in point order."""
    base, runs = resolve_runs(config, overrides, list(sweeps))
    root = Path(base.output_dir)
    executor = build_executor(cluster, root / "submitit", name=root.name)
    for cfg, _ in runs:
        write_config(cfg)  # before the job can start
    tasks = [TrainJob(cfg, cluster.max_requeues) for cfg, _ in runs]
    if len(tasks) == 1:
        jobs = [executor.submit(tasks[0])]
    else:
        with executor.batch():  # one job array
            jobs = [executor.submit(task) for task in tasks]
    command = command or ["vmim", "submit", *sys.argv[1:]]
    for (cfg, point), job in zip(runs, jobs):
        record_submission(cfg, cluster, command, str(job.job_id), point)
    return [(job, cfg) for job, (cfg, _) in zip(jobs, runs)]


def submit_eval(target: str, checkpoint: str | None, overrides: list[str], cluster: ClusterConfig,
                command: list[str] | None = None, test_datasets: dict | None = None) -> list[tuple]:
    """Queue ``vmim eval`` of a fine-tuned run (its config is checked here first); returns [(job, config)].
    ``test_datasets``: the entries of ``--test`` words, scored instead of the run's ``eval.datasets``."""
    from ..engine.eval_run import resolve_target

    path, config = resolve_target(target, checkpoint)
    cfg = load_config(config, overrides, task="finetune") if config is not None else None
    run_dir = Path(target) if Path(target).is_dir() else path.parent
    executor = build_executor(cluster, run_dir / "submitit-eval", name=f"eval-{run_dir.name}")
    job = executor.submit(EvalJob(str(target), checkpoint, overrides, cluster.max_requeues, test_datasets))
    return [(job, cfg)]
