"""Cluster options: a profile YAML (defaults for one cluster) overridden by command-line flags.

Loaded with the same strict rules as run configs: an unknown key or a wrong type stops the submission and names
the key, so a typo never reaches the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List

from ..config import ConfigError, load_dataclass

EXECUTORS = ("slurm", "local", "debug")


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
    if cluster.executor not in EXECUTORS:
        raise ConfigError("executor", f"'{cluster.executor}' is not one of {EXECUTORS}")
    for key in ("nodes", "cpus_per_task", "time_min"):
        if getattr(cluster, key) < 1:
            raise ConfigError(key, f"{getattr(cluster, key)} must be >= 1")
    for key in ("gpus_per_node", "tasks_per_node", "mem_gb", "signal_delay_s", "max_requeues"):
        if getattr(cluster, key) < 0:
            raise ConfigError(key, f"{getattr(cluster, key)} must be >= 0")
    if cluster.gpus_per_node and cluster.tasks_per_node not in (0, cluster.gpus_per_node):
        raise ConfigError("tasks_per_node", f"{cluster.tasks_per_node} tasks for {cluster.gpus_per_node} GPUs per node:"
                                            " vmim runs one task per GPU")
    if cluster.executor == "debug" and cluster.nodes * cluster.tasks > 1:
        raise ConfigError("executor", "debug runs one task in this process; use local for several")
    for line in cluster.sbatch:
        if line.startswith("-") or line.startswith("#"):
            raise ConfigError("sbatch", f"'{line}': write options without dashes or #SBATCH, e.g. 'mail-type=END'")


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
