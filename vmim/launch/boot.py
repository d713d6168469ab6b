"""Job entry point: ``python -m vmim.launch.boot -u -m submitit.core._submit FOLDER``.

Slurm may send the time-limit warning (SIGUSR2) up to a minute early, even while the task is still importing
torch, before submitit or the trainer has installed a handler; the default action would kill the task and fail
the job. This module is tiny, so the handler below is in place within milliseconds of the interpreter starting;
it only records the signal, and :class:`vmim.engine.preemption.StopSignals` honours it once training starts
(submitit's own handlers take over in between).
"""

from __future__ import annotations

import runpy
import signal
import sys

EARLY: list[int] = []  # signals received before the trainer's handlers were installed


def _record(signum: int, frame) -> None:
    EARLY.append(signum)


def main(argv: list[str]) -> None:
    sys.modules.setdefault("vmim.launch.boot", sys.modules[__name__])  # run as __main__: findable by its name
    for signum in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(signum, _record)
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
