"""Helper processes (data-loader workers, decode children) end with their parent, and only with it.

Slurm signals every process of a job step (:mod:`vmim.signals`), so helpers must survive SIGTERM and SIGUSR2 until
the trainer has saved its checkpoint. Ignoring SIGTERM outright made every exit hang: ``Process.terminate()`` is a
SIGTERM, which is how torch's shutdown and multiprocessing's exit hook end workers, and the exit hook then waits
for them forever (after a crash, Ctrl-C, or simply the end of a script). So a worker tells the senders apart:

* a SIGTERM from its parent (``terminate()``: the trainer shutting down) ends the worker at once; from anyone
  else (Slurm, ``kill`` of the process group) it is dropped. The worker blocks SIGTERM and a thread takes it with
  ``sigtimedwait``, which reports the sender's pid; the same thread checks each second that the parent lives (with
  a fork server, the OS parent is that server, and the trainer is the sender to obey);
* SIGUSR2 is ignored;
* the kernel kills the worker when its parent dies (``PR_SET_PDEATHSIG`` SIGKILL: a SIGKILLed trainer, or one
  ended by a signal's default action), and decode children likewise when their worker dies, so no helper outlives
  the trainer. The parent here is the *thread* that forked: iterate a loader from the thread that owns it for
  good (the main thread), as the trainer does.

:func:`shutdown_loader` is the explicit end (``PretrainData.close``): torch's own orderly shutdown, then SIGKILL for
whatever is still alive. Without ``sigtimedwait`` (macOS) workers ignore SIGTERM as before and only the explicit
shutdown (also run at exit) ends them.

Ctrl-C while workers are forked: every vmim DataLoader is a :class:`WorkerLoader`, whose ``iter()`` (where torch
forks the workers) runs inside :class:`vmim.signals.defer_interrupts`, so a Ctrl-C landing in a fork hook is raised
once the workers are up instead of being dropped (see :mod:`vmim.signals`); the workers get the normal SIGINT handler.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading

from torch.utils.data import DataLoader

from ..signals import defer_interrupts, ignore_stop_signals

PARENT_CHECK_S = 1.0  # how often a worker's watcher thread checks that its parent is alive
PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> bool:
    """Linux: the kernel sends ``signum`` to this process when the thread that forked it exits. False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum)) == 0
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _watch_parent(trainer: int, os_parent: int) -> None:
    """Worker thread: exit on a SIGTERM sent by ``trainer``, or when it (or ``os_parent``) is gone; drop other
    SIGTERMs."""
    while True:
        info = signal.sigtimedwait({signal.SIGTERM}, PARENT_CHECK_S)
        if (info is not None and info.si_pid == trainer) or os.getppid() != os_parent or not _alive(trainer):
            os._exit(0)  # exit code 0: torch's SIGCHLD check does not count a worker ended on request as a failure


def init_loader_worker(worker_id: int | None = None) -> None:
    """``worker_init_fn`` of every vmim DataLoader: the worker survives the job's stop signals and ends with its parent
    (see the module docstring)."""
    parent = multiprocessing.parent_process()
    trainer = parent.pid if parent is not None else os.getppid()  # who ends workers with terminate()
    os_parent = os.getppid()  # whose exit the kernel reports: the trainer, or a fork server that ends with it
    die_with_parent()
    if os.getppid() != os_parent or not _alive(trainer):  # gone before the kernel was told: nobody would end us
        os._exit(0)
    if not hasattr(signal, "sigtimedwait"):  # no way to tell who sent a SIGTERM: ignore them all
        ignore_stop_signals()
        return
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an ignored signal is discarded, never pending for the watcher
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # in this thread and every one started from it
    threading.Thread(target=_watch_parent, args=(trainer, os_parent), name="vmim-parent-watch", daemon=True).start()


class WorkerLoader(DataLoader):
    """A torch DataLoader whose worker start-up (in ``iter()``) defers Ctrl-C until the forks are over; otherwise the
    same. Use it for every loader with workers, together with ``worker_init_fn=init_loader_worker``."""

    def __iter__(self):
        with defer_interrupts():
            return super().__iter__()


def init_helper_child() -> None:
    """In a process forked to do work for this one (a decode child): no Ctrl-C, no stop signals, death with its
    parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    ignore_stop_signals()
    die_with_parent()


def shutdown_loader(loader, timeout_s: float = 5.0) -> None:
    """End the persistent workers of a torch DataLoader now: torch's orderly shutdown (pin-memory thread first, then a
    stop message, a join, ``terminate()``), then SIGKILL for any worker still alive. No-op without live workers.

    Uses torch's private ``DataLoader._iterator`` and its ``_shutdown_workers()``: the only handle on the persistent
    workers; should they change, whatever is found is still killed.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is None:
        return
    workers = list(getattr(iterator, "_workers", []))
    shutdown = getattr(iterator, "_shutdown_workers", None)
    try:
        if shutdown is not None:
            shutdown()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            worker.join(timeout_s)
        loader._iterator = None
