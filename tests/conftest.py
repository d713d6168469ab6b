"""Shared test set-up: one intra-op thread per process.

The suite runs under ``pytest -n 2`` on 2 cores; two processes each spinning 2 OpenMP threads slow
training steps by an order of magnitude, so every test process (and the subprocesses it starts, through
the environment) uses one thread.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Slurm tests first: they mostly wait on cluster jobs, and the longest should overlap the rest of the suite."""
    items.sort(key=lambda item: item.path.name != "test_slurm.py")  # stable: the order is otherwise kept
