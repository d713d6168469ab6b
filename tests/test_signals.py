"""Stop signals: the early record is cheap to install and handed over once; helpers ignore the job's signals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_job_entry_point_imports_nothing_heavy():
    """vmim.launch.boot must listen for Slurm's early warning within milliseconds: no torch, numpy or yaml yet."""
    out = run("import sys, vmim.launch.boot\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'yaml', 'omegaconf', 'av'}))")
    assert out.strip() == "[]"


def test_early_signals_are_recorded_and_taken_once():
    out = run("import os, signal\n"
              "from vmim.signals import record_early_signals, take_early_signals\n"
              "record_early_signals()\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "os.kill(os.getpid(), signal.SIGUSR2)\n"
              "print([signal.Signals(s).name for s in take_early_signals()], take_early_signals())\n")
    assert out.strip() == "['SIGTERM', 'SIGUSR2'] []"


def test_helpers_ignore_stop_signals():
    out = run("import os, signal\n"
              "from vmim.signals import STOP_SIGNALS, ignore_stop_signals\n"
              "ignore_stop_signals()\n"
              "for s in STOP_SIGNALS:\n"
              "    os.kill(os.getpid(), s)\n"
              "print('alive')\n")
    assert out.strip() == "alive"
