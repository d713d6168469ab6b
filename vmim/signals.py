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

Ctrl-C during a fork (:class:`defer_interrupts`). CPython runs ``os.register_at_fork`` hooks around every fork
(``logging`` registers one before and one after, in the parent), and an exception raised inside a hook is printed as
"Exception ignored in ..." and dropped. A KeyboardInterrupt is raised wherever the main thread happens to be when
SIGINT arrives, so a Ctrl-C that lands while a DataLoader forks its workers (or a worker, or the trainer with 0
workers, forks a decode child) was lost in about 1 of 4 tries, and the run trained to its end. Every fork of vmim
therefore runs inside :class:`defer_interrupts`: SIGINT's handler is swapped for one that only records it, and the
previous handler is restored and called (so KeyboardInterrupt is raised there, or the default action taken) once the
fork and its hooks are over. A handler swap rather than ``pthread_sigmask``: a blocked signal sent to the process is
delivered to any other thread that does not block it (torch starts several), whose C handler then trips the main
thread's check all the same, inside the hook. Children never keep the recording handler: an ``after_in_child`` hook
puts the previous one back at once (a DataLoader worker thus still ends on Ctrl-C as torch expects). Only SIGINT is
deferred: the stop signals' handlers (:mod:`vmim.engine.preemption`, the early record) record first; where they raise
(a phase in immediate mode), a raise lost in a fork hook is still recorded and honoured at the phase's next check.

:class:`abandon_waits` lets a phase whose work may be dropped (an evaluation pass, a probe's extraction) give up a
wait for a hung isolated decode once a stop is recorded, instead of waiting out ``data.decode_timeout_s``.

Standard library only, and nothing imported at module level beyond ``signal`` and ``os``: the entry point imports it
within milliseconds of the interpreter starting (``tests/test_signals.py`` checks that neither torch nor numpy comes
along).
"""

from __future__ import annotations

import os
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


_deferred: list[int] = []  # SIGINTs held back by defer_interrupts in this process
_outer_handler = None  # the SIGINT handler that the active defer_interrupts replaced (None: none active)


def _hold(signum: int, frame) -> None:
    _deferred.append(signum)


def _after_fork_in_child() -> None:
    """A child forked inside :class:`defer_interrupts` gets the SIGINT handler its parent had before; a Ctrl-C held
    back in the parent stays the parent's."""
    global _outer_handler
    if _outer_handler is not None and signal.getsignal(signal.SIGINT) is _hold:
        signal.signal(signal.SIGINT, _outer_handler)
    _outer_handler = None
    del _deferred[:]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class defer_interrupts:
    """Context manager: a SIGINT (Ctrl-C) that arrives inside is acted on when it ends, by the handler in place before
    (KeyboardInterrupt raised from ``__exit__``, or the default action), never raised inside a fork hook where CPython
    would drop it. Wrap every fork: worker start-up (:class:`vmim.data.lifetime.WorkerLoader`), decode children.

    Nests (an inner one does nothing); outside the main thread, or with SIGINT ignored or held by a non-Python
    handler, it does nothing (Python raises KeyboardInterrupt only in the main thread, never in another thread's
    fork hooks)."""

    def __init__(self):
        self._previous = None

    def __enter__(self) -> "defer_interrupts":
        global _outer_handler
        previous = signal.getsignal(signal.SIGINT)
        if previous is _hold or previous is None or previous == signal.SIG_IGN:
            return self
        try:
            signal.signal(signal.SIGINT, _hold)
        except ValueError:  # not the main thread
            return self
        self._previous = _outer_handler = previous
        return self

    def __exit__(self, *exc) -> None:
        global _outer_handler
        previous, self._previous = self._previous, None
        if previous is None:
            return
        signal.signal(signal.SIGINT, previous)
        _outer_handler = None
        if not _deferred:
            return
        del _deferred[:]
        if callable(previous):
            previous(signal.SIGINT, None)  # default_int_handler: KeyboardInterrupt, here, after the fork
        else:  # SIG_DFL: terminate by SIGINT, as the signal would have
            signal.raise_signal(signal.SIGINT)


class WaitAbandoned(BaseException):
    """A wait for a decode child's answer was given up because the phase was asked to stop (see
    :class:`abandon_waits`). A BaseException, like KeyboardInterrupt: no ``except Exception`` around a sample's
    load may count it as a bad file."""


_abandon_checks: list = []  # predicates of the active abandon_waits blocks, innermost last


class abandon_waits:
    """Context manager: while ``requested()`` is false, waits for an isolated decode run as usual; once it is true, a
    wait in progress (or the next one) gives up within :data:`POLL_S`, kills the decode child and raises
    :class:`WaitAbandoned`.

    For phases whose work may simply be dropped on a stop (an evaluation pass, a probe's feature extraction): a
    decode stuck on a stalled file system or a FIFO would otherwise hold a SIGTERM for up to
    ``data.decode_timeout_s``. Training never uses it: a step needs its whole batch, and the stop waits for the step
    boundary. It acts in the process that waits, so it covers decoding with ``data.num_workers=0``; loader workers
    ignore stop signals and finish their batch."""

    POLL_S = 0.2

    def __init__(self, requested):
        self.requested = requested

    def __enter__(self) -> "abandon_waits":
        _abandon_checks.append(self.requested)
        return self

    def __exit__(self, *exc) -> None:
        _abandon_checks.remove(self.requested)


def waits_abandoned() -> bool:
    """Whether an active :class:`abandon_waits` block says to give up waiting now."""
    return any(check() for check in _abandon_checks)
