"""What runs inside a submitted job, on every task: distributed set-up, training (pretraining or fine-tuning, by the
config's ``task``) or evaluation, requeue on preemption.

submitit pickles a :class:`PretrainJob` and calls it in each task. The task exports torch.distributed's env://
variables from submitit's job environment (rank, world size, local rank, master = first node, port derived from
the job id below the kernel's ephemeral port range), then runs :func:`vmim.engine.pretrain.pretrain` or
:func:`vmim.engine.finetune.finetune`, which pick gloo or NCCL and the local GPU and resume from the run's newest
complete checkpoint (``resume=auto``), or :func:`vmim.engine.eval_run.run_eval` for ``vmim submit --eval``.

Signals are the trainer's own (:mod:`vmim.engine.preemption`), replacing submitit's: they checkpoint at a step
boundary on every rank instead of inside a signal handler. After a SIGUSR2 stop, rank 0 runs ``scontrol requeue``
for the job (up to ``max_requeues`` restarts); every task then exits without a result, so submitit waits for the
requeued run, which resumes mid-epoch from that checkpoint.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

from submitit.helpers import Checkpointable

from ..config import Config
from ..signals import ignore_stop_signals

log = logging.getLogger("vmim")


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
"""The kernel's range for outgoing and port-0 sockets: a master port inside it can be taken by any of them."""


def master_port(job_id: str) -> int:
    """The job's rendezvous port: derived from the job id (every task computes the same one), from 20000 up to the
    kernel's ephemeral range (Linux: 32768). submitit draws from 20000-60000, mostly inside that range, where another
    process's connection or ``bind(0)`` socket can hold it: rank 0 then fails with EADDRINUSE while the others wait
    for its store until the job is cancelled (seen in CI)."""
    try:
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return 20000 + zlib.crc32(job_id.encode()) % max(1000, low - 20000)


def export_distributed_env() -> int:
    """Set MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK from the Slurm/submitit job (the port: :func:`master_port`
    unless MASTER_PORT is set); returns the rank."""
    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(master_port(str(submitit.JobEnvironment().job_id)))
    env = TorchDistributedEnvironment()
    env.export(set_cuda_visible_devices=False, overwrite=True)  # one task per GPU: cuda:LOCAL_RANK
    return env.rank


def requeue(job_id: str, max_requeues: int) -> None:
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    if restarts >= max_requeues:
        log.error(f"not requeueing job {job_id}: it has restarted {restarts} times (max_requeues={max_requeues})")
        return
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if result.returncode == 0:
        log.warning(f"requeued job {job_id} (restart {restarts + 1})")
    else:  # e.g. Slurm is already requeueing a preempted job
        log.warning(f"scontrol requeue {job_id}: {result.stderr.strip() or result.returncode}")


class TrainJob(Checkpointable):
    """Picklable callable: one training run, pretraining or fine-tuning by ``cfg.task`` (a sweep point is one of these
    per array task). As a submitit Checkpointable, a signal that arrives before the trainer installs its handlers
    requeues the same job, which resumes from the newest checkpoint."""

    def __init__(self, cfg: Config, max_requeues: int = 100):
        self.cfg, self.max_requeues = cfg, max_requeues

    def __call__(self) -> dict:
        import submitit

        from ..config import TASKS
        from ..engine.trainer import StopRequested

        train = TASKS[self.cfg.task].run_fn()

        in_slurm = "SLURM_JOB_ID" in os.environ
        job_id = submitit.JobEnvironment().job_id if "SUBMITIT_FOLDER" in os.environ else None
        rank = export_distributed_env() if job_id is not None else 0
        try:
            state = train(self.cfg)
        except StopRequested as stop:
            ignore_stop_signals()
            if rank == 0:  # in log.txt too: a stop while the run was starting logs nothing else
                log.warning(str(stop))
            if stop.request == "requeue" and in_slurm and rank == 0:
                requeue(job_id, self.max_requeues)
            sys.exit(-1)  # no result: the job is not over (requeued, or cancelled and resumable)
        # Done. A late time-limit warning (Slurm may repeat it) must not kill the task while Python shuts down,
        # when handlers revert to the default action (terminate) and the finished job would be marked FAILED.
        ignore_stop_signals()
        return {"step": state.step, "epoch": state.epoch, "skipped_steps": state.skipped_steps,
                "run_dir": self.cfg.output_dir}


PretrainJob = TrainJob  # the name of earlier releases


class EvalJob(Checkpointable):
    """Picklable callable: ``vmim eval`` of a fine-tuned run, sharded over the job's tasks; returns rank 0's top-1 /
    top-5 per dataset. Evaluation keeps no state, so a requeued job simply runs again: a stop signal ends the pass
    within a batch (:class:`~vmim.engine.preemption.Interrupted`), and after SIGUSR2 rank 0 requeues the job, as a
    training job does."""

    def __init__(self, target: str, checkpoint: str | None = None, overrides: list[str] = (), max_requeues: int = 100,
                 test_datasets: dict | None = None):
        self.target, self.checkpoint, self.overrides = target, checkpoint, list(overrides)
        self.max_requeues = max_requeues
        self.test_datasets = test_datasets  # plain entries of --test words (vmim.commands.eval.entries_for), or None

    def __call__(self) -> dict:
        import submitit

        from ..engine.eval_run import run_eval
        from ..engine.preemption import Interrupted

        job_id = submitit.JobEnvironment().job_id if "SUBMITIT_FOLDER" in os.environ else None
        rank = export_distributed_env() if job_id is not None else 0
        try:
            results = run_eval(self.target, self.checkpoint, self.overrides, test_datasets=self.test_datasets)
        except Interrupted as stop:
            ignore_stop_signals()
            if stop.request == "requeue" and "SLURM_JOB_ID" in os.environ and rank == 0:
                requeue(job_id, self.max_requeues)
            sys.exit(-1)  # no result: the job is not over (requeued, or cancelled; evaluation simply runs again)
        ignore_stop_signals()
        return {name: {"top1": r.top1, "top5": r.top5, "videos": r.num_videos, "summary": r.summary_line()}
                for name, r in results.items()}
