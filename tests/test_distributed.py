"""Real two-process torch.distributed (gloo on CPU) pretraining through torchrun."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vmim.engine.checkpoint import load

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_run_completes_on_rank0_only(tmp_path):
    from tests.test_pretrain_e2e import TINY

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", "-m", "vmim.cli", "pretrain", "--config", str(REPO / "configs/demo/digits.yaml"),
           f"output_dir={tmp_path}", *TINY, "train.epochs=1", "data.batch_size=8"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device cpu x 2" in (tmp_path / "log.txt").read_text()
    assert "global batch 16 (= 8 x 1 repeat x 2 ranks x 1 accum)" in (tmp_path / "log.txt").read_text()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # one writer: rank 0
    state = load(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 8 and len(state["rng"]) == 2  # every rank's RNG is saved
