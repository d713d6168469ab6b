"""Stop requests from signals, honoured at an optimizer-step boundary on every rank at once.

Slurm warns a job before it is preempted or hits its time limit with the signal of ``--signal`` (SIGUSR2 here,
submitit's default), and sends SIGTERM before killing it (``scancel``, ``scontrol requeue``, a preemption's grace
time). A signal handler only records the request; the training loop asks :meth:`StopSignals.agreed` after each
optimizer step, which all-reduces the request so every rank stops after the same step, saves a checkpoint there
(mid-epoch), and returns. SIGUSR2 means "requeue me" (the launcher then runs ``scontrol requeue``); SIGTERM means
"stop": Slurm itself requeues a job it preempts or that an admin requeues, and a cancelled job stays stopped,
resumable from that checkpoint.

Every phase honours the same two signals within seconds, not only the training loop (issue 19):

* **Recording** (the default): the handler only records; the phase asks :meth:`StopSignals.agreed` at its own safe
  points (after an optimizer step; after each evaluation batch in validation, ``vmim eval`` and the probe's feature
  extraction) and then stops cleanly: the trainer saves a checkpoint, an evaluation writes no predictions for the
  dataset it was scoring.
* **Immediate** (``StopSignals(immediate=...)``): the handler raises :class:`Interrupted` at once. For phases with
  nothing to save and no helper processes mid-conversation, where stopping anywhere is safe: the trainer's start-up
  (reading lists, building the model and data; a list on a hung network file system would otherwise hold a stop for
  minutes), an evaluation's set-up, a probe's classifier fits. A signal recorded before (:mod:`vmim.launch.boot`)
  raises on entering.
* **A hung decode** does not hold a stop in a one-process evaluation pass, validation or probe extraction that
  decodes in this process (``data.num_workers=0``): the isolated decode is given up
  (:class:`vmim.signals.abandon_waits`, :func:`vmim.engine.evaluate.next_batch`). With loader workers, and in
  training (a step needs its whole batch), the stop waits for the batch in progress: at most
  ``data.decode_timeout_s`` for a hung file.

:class:`Interrupted` is a :class:`vmim.errors.VmimError` whose exit code is ``128 + signal``, as a shell reports a
process ended by it: :func:`vmim.cli.main` prints its one line (what was kept) and exits with it, for every verb.
Decision: one exception type for every phase, so the CLI and the launcher need not know which phase stopped.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from ..errors import VmimError
from ..signals import STOP_SIGNALS, take_early_signals
from .distributed import DistInfo

REQUESTS = dict(zip(STOP_SIGNALS, ("stop", "requeue")))  # SIGTERM, SIGUSR2
_PRIORITY = {None: 0, "stop": 1, "requeue": 2}  # requeue wins when both arrive (preemption sends both)
_BY_PRIORITY = {code: request for request, code in _PRIORITY.items()}


class Interrupted(VmimError, RuntimeError):
    """A stop signal ended a phase early; the message says where and what was kept. ``request``: "stop" (SIGTERM) or
    "requeue" (SIGUSR2); ``exit_code``: 128 + the signal's number (1 when no signal name is known)."""

    def __init__(self, message: str, request: str, signal_name: str | None):
        super().__init__(message)
        self.request, self.signal_name = request, signal_name
        known = signal_name in signal.Signals.__members__
        self.exit_code = 128 + signal.Signals[signal_name].value if known else 1


class StopSignals:
    """Records SIGTERM / SIGUSR2 while installed (a context manager; main thread only, elsewhere a no-op).

    ``immediate``: a phase name ("start-up"); while set (it may be changed while installed), a signal raises
    :class:`Interrupted` at once instead of being recorded (see the module docstring)."""

    def __init__(self, immediate: str | None = None):
        self.requested: str | None = None
        self.signal_name: str | None = None
        self.immediate = immediate
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        request = REQUESTS[signal.Signals(signum)]
        if _PRIORITY[request] > _PRIORITY[self.requested]:
            self.requested, self.signal_name = request, signal.Signals(signum).name
        if self.immediate:
            raise Interrupted(f"{signal.Signals(signum).name} received during {self.immediate}: stopped there",
                              request, signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in REQUESTS:
                self._previous[signum] = signal.signal(signum, self._handle)
        try:
            for signum in take_early_signals():  # arrived while the job's python was starting (vmim.launch.boot)
                self._handle(signum, None)
        except Interrupted:
            self.__exit__()
            raise
        return self

    def __exit__(self, exc_type=None, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self.immediate and self.requested and exc_type is None:  # its raise was lost (e.g. inside a fork hook,
            raise Interrupted(f"{self.signal_name} received during {self.immediate}: stopped there",  # where CPython
                              self.requested, self.signal_name)  # prints and drops it): honoured here instead

    def agreed(self, info: DistInfo | None = None, device: torch.device | str = "cpu") -> str | None:
        """The strongest request on any rank (collective when distributed: call on every rank, same step; ``info``
        None: this process alone)."""
        code = _PRIORITY[self.requested]
        if info is not None and info.world_size > 1:
            flag = torch.tensor([code], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        return _BY_PRIORITY[code]
