"""Cluster launching: ``vmim submit`` (Slurm through submitit, or local processes), sweeps as job arrays, and the
job-side wrapper that sets up torch.distributed and requeues on preemption."""
