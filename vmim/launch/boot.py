"""Job entry point: ``python -m vmim.launch.boot -u -m submitit.core._submit FOLDER``.

Slurm may send the time-limit warning (SIGUSR2) up to a minute early, even while the task is still importing
torch, before submitit or the trainer has installed a handler; the default action would kill the task and fail
the job. This module and :mod:`vmim.signals` are tiny, so the recording handler is in place within milliseconds of
the interpreter starting; it only records the signal, and :class:`vmim.engine.preemption.StopSignals` honours it
once training starts (submitit's own handlers take over in between).
"""

from __future__ import annotations

import runpy
import sys

from vmim.signals import record_early_signals


def main(argv: list[str]) -> None:
    record_early_signals()
    if argv[:1] == ["-u"]:  # submitit asks for unbuffered output
        argv = argv[1:]
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
    if argv[:1] != ["-m"] or len(argv) < 2:
        raise SystemExit(f"usage: python -m vmim.launch.boot [-u] -m MODULE [ARGS...], got {argv}")
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
