"""Real two-process torch.distributed (gloo on CPU) pretraining through torchrun.

Ports: ``torchrun --standalone`` binds its rendezvous store on a free port itself and keeps it bound (the workers
share that store), so no other process can take the port between its choice and its use. The former
``free_port()`` (bind port 0, close, hand the number to torchrun) left that window open, and under ``pytest -n 2``
with another CI job on the same machine a second bind can take the port first (EADDRINUSE, or ranks meeting the
wrong store).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmim.engine.checkpoint import load

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
"""torchrun on this machine, 2 processes, on a port it picks and holds (see the module docstring)."""


def test_two_process_ddp_run_completes_on_rank0_only(tmp_path):
    from tests.test_pretrain_e2e import TINY

    cmd = [*TORCHRUN, "-m", "vmim.cli", "pretrain", "--config", str(REPO / "configs/demo/digits.yaml"),
           f"output_dir={tmp_path}", *TINY, "train.epochs=1", "data.batch_size=8"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cpu x 2" in (tmp_path / "log.txt").read_text()
    assert "global batch 16 (= 8 x 1 repeat x 2 ranks x 1 accum)" in (tmp_path / "log.txt").read_text()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # one writer: rank 0
    state = load(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 8 and len(state["rng"]) == 2  # every rank's RNG is saved
