"""Stop signals: which they are, the record of those that arrive before the trainer listens, helpers that ignore them.

Slurm sends SIGUSR2 (the time-limit / preemption warning of ``--signal``) and SIGTERM (``scancel``, ``scontrol
requeue``, the end of a preemption's grace time) to every process of a job step. They are the trainer's to handle
(:mod:`vmim.engine.preemption`: checkpoint at a step boundary, then stop). Helper processes (data-loader workers,
decode children) must not die of them, or the trainer would crash before it saves; they end with the trainer instead
(:mod:`vmim.data.lifetime`).

Slurm may send the warning while the job's Python is still importing torch. The job's entry point
(:mod:`vmim.launch.boot`) therefore calls :func:`record_early_signals` first thing; the trainer's handler later takes
what was recorded (:func:`take_early_signals`). One module holds this record, found by its import name (not through
``sys.modules`` lookups of the entry point, which runs as ``__main__``).

Standard library only, and nothing imported at module level beyond ``signal``: the entry point imports it within
milliseconds of the interpreter starting (``tests/test_signals.py`` checks that neither torch nor numpy comes along).
"""

from __future__ import annotations

import signal

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGUSR2)  # Slurm's stop / requeue warning

_early: list[int] = []  # stop signals received while only the early recorder was listening, oldest first


def _record(signum: int, frame) -> None:
    _early.append(signum)


def record_early_signals() -> None:
    """Make every stop signal a recorded request instead of the default action (terminate); main thread only."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _record)


def take_early_signals() -> list[int]:
    """The stop signals recorded by :func:`record_early_signals` so far (oldest first); the record is emptied."""
    taken = list(_early)
    del _early[:len(taken)]
    return taken


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """SIG_IGN for every stop signal in this process: for helper processes, and for a job that has finished (a late
    warning must not kill it while Python shuts down). ``worker_id``: unused, so that it fits ``worker_init_fn``."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
