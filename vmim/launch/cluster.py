"""Cluster options: a profile YAML (defaults for one cluster) overridden by command-line flags.

Loaded with the same strict rules as run configs: an unknown key or a wrong type stops the submission and names
the key, so a typo never reaches the queue.

Validation covers every value submitit and Slurm would otherwise refuse later, or honour in a way the job does not
expect (issue 19): counts and times in range, ``mem_gb`` finite, the early-warning signal inside the time limit (a
``signal_delay_s`` of the whole limit would stop the job at its first step), one node for local processes (submitit's
local executor refuses more), and ``sbatch`` lines that name one well-formed option which vmim does not already set:
submitit's ``additional_parameters`` silently override its own, so ``time=10`` would shorten the job behind
``time_min`` (which also places the signal) and ``output=...`` would move the logs ``vmim`` reads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

from ..config import ConfigError, load_dataclass

EXECUTORS = ("slurm", "local", "debug")
SBATCH_OWN = {"nodes": "nodes", "ntasks-per-node": "tasks_per_node", "cpus-per-task": "cpus_per_task",
              "gpus-per-node": "gpus_per_node", "mem": "mem_gb", "time": "time_min",
              "partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
              "exclusive": "exclusive", "signal": "signal_delay_s", "job-name": "", "output": "", "error": "",
              "open-mode": "", "array": "--sweep", "wckey": ""}
"""sbatch options vmim / submitit set themselves -> the key to use instead ('' = owned by submitit)."""
_SBATCH_KEY = re.compile(r"[a-z][a-z0-9-]*")


@dataclass
class ClusterConfig:
    executor: str = "slurm"
    """slurm (sbatch through submitit); local (the same job as local processes, one per task); debug (in this
    process, one task)."""
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 0
    """Processes per node; 0 = one per GPU, or 1 on CPU-only nodes."""
    cpus_per_task: int = 8
    """Also the natural data.num_workers + 1 per process."""
    mem_gb: float = 0.0
    """Memory per node; 0 leaves Slurm's default (or the whole node with exclusive)."""
    time_min: int = 60
    """Time limit per run of the job; on reaching it the job checkpoints and requeues itself."""
    exclusive: bool = False
    signal_delay_s: int = 120
    """SIGUSR2 this many seconds before the time limit (--signal): time to finish a step and save."""
    max_requeues: int = 100
    """Stop requeueing after this many restarts (SLURM_RESTART_COUNT)."""
    array_parallelism: int = 64
    """Sweeps: how many points run at once."""
    sbatch: List[str] = field(default_factory=list)
    """Extra sbatch options, as 'key=value' or 'flag' (e.g. 'mail-type=END', 'requeue')."""
    setup: List[str] = field(default_factory=list)
    """Shell lines run before the job starts (module load ..., source venv/bin/activate)."""

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(1, self.gpus_per_node)


def validate_cluster(cluster: ClusterConfig) -> None:
    """Raise :class:`ConfigError` naming the first option (profile key / flag) whose value would fail later."""
    if cluster.executor not in EXECUTORS:
        raise ConfigError("executor", f"'{cluster.executor}' is not one of {EXECUTORS}")
    if not math.isfinite(cluster.mem_gb):
        raise ConfigError("mem_gb", f"{cluster.mem_gb} is not a finite number")
    for key in ("nodes", "cpus_per_task", "time_min"):
        if getattr(cluster, key) < 1:
            raise ConfigError(key, f"{getattr(cluster, key)} must be >= 1")
    for key in ("gpus_per_node", "tasks_per_node", "mem_gb", "signal_delay_s", "max_requeues"):
        if getattr(cluster, key) < 0:
            raise ConfigError(key, f"{getattr(cluster, key)} must be >= 0")
    if cluster.gpus_per_node and cluster.tasks_per_node not in (0, cluster.gpus_per_node):
        raise ConfigError("tasks_per_node", f"{cluster.tasks_per_node} tasks for {cluster.gpus_per_node} GPUs per node:"
                                            " vmim runs one task per GPU")
    for key in ("partition", "account", "qos", "constraint"):
        if re.search(r"\s", getattr(cluster, key)):
            raise ConfigError(key, f"'{getattr(cluster, key)}' holds whitespace (sbatch takes one word)")
    if cluster.array_parallelism < 1:
        raise ConfigError("array_parallelism", f"{cluster.array_parallelism} must be >= 1")
    if cluster.signal_delay_s >= cluster.time_min * 60:
        raise ConfigError("signal_delay_s", f"{cluster.signal_delay_s} s before the end of a {cluster.time_min} min "
                                            "job is at or before its start: it must be below time_min x 60")
    if cluster.executor == "debug" and cluster.nodes * cluster.tasks > 1:
        raise ConfigError("executor", "debug runs one task in this process; use local for several")
    if cluster.executor == "local" and cluster.nodes != 1:
        raise ConfigError("nodes", f"{cluster.nodes}: local processes run on this one machine (nodes=1)")
    for line in cluster.sbatch:
        if line.startswith("-") or line.startswith("#"):
            raise ConfigError("sbatch", f"'{line}': write options without dashes or #SBATCH, e.g. 'mail-type=END'")
        key = line.partition("=")[0]
        if not _SBATCH_KEY.fullmatch(key):
            raise ConfigError("sbatch", f"'{line}' is not 'key=value' or 'flag' with a lower-case option name "
                                        "(e.g. 'mail-type=END', 'requeue')")
        if key in SBATCH_OWN:
            instead = SBATCH_OWN[key]
            raise ConfigError("sbatch", f"'{line}': vmim sets --{key} itself"
                              + (f"; use {instead}" if instead else " (submitit's own)"))


def check_submission(cfg: Any, cluster: ClusterConfig) -> None:
    """What a run config asks of the cluster it is submitted to, and where it will write, checked before anything is
    queued (the data is not: it may live only on the cluster). Raises :class:`ConfigError` naming the key."""
    from ..preflight import check_output_dir

    check_output_dir(cfg.output_dir)  # submit writes config.yaml there first
    if cluster.executor != "debug" and cluster.gpus_per_node == 0:  # debug runs in this process, with its GPUs
        t = cfg.train
        if t.device == "cuda" or t.precision == "fp16":
            raise ConfigError("gpus_per_node", f"0 GPUs per node, and the run asks for CUDA (train.device={t.device}, "
                                               f"train.precision={t.precision}): set gpus_per_node")


def load_cluster(profile: str | Path | None, overrides: dict) -> ClusterConfig:
    """Profile YAML (or the defaults) with ``overrides`` (flag values that were given) on top."""
    dotlist = [f"{key}={value}" for key, value in overrides.items()
               if value is not None and not isinstance(value, list)]
    cluster = load_dataclass(ClusterConfig, profile, dotlist)
    for key, value in overrides.items():
        if isinstance(value, list) and value:
            setattr(cluster, key, list(getattr(cluster, key)) + value)
    validate_cluster(cluster)
    return cluster
