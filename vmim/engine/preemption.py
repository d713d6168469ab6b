"""Stop requests from signals, honoured at an optimizer-step boundary on every rank at once.

Slurm warns a job before it is preempted or hits its time limit with the signal of ``--signal`` (SIGUSR2 here,
submitit's default), and sends SIGTERM before killing it (``scancel``, ``scontrol requeue``, a preemption's grace
time). A signal handler only records the request; the training loop asks :meth:`StopSignals.agreed` after each
optimizer step, which all-reduces the request so every rank stops after the same step, saves a checkpoint there
(mid-epoch), and returns. SIGUSR2 means "requeue me" (the launcher then runs ``scontrol requeue``); SIGTERM means
"stop": Slurm itself requeues a job it preempts or that an admin requeues, and a cancelled job stays stopped,
resumable from that checkpoint.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from ..signals import STOP_SIGNALS, take_early_signals
from .distributed import DistInfo

REQUESTS = dict(zip(STOP_SIGNALS, ("stop", "requeue")))  # SIGTERM, SIGUSR2
_PRIORITY = {None: 0, "stop": 1, "requeue": 2}  # requeue wins when both arrive (preemption sends both)
_BY_PRIORITY = {code: request for request, code in _PRIORITY.items()}


class StopSignals:
    """Records SIGTERM / SIGUSR2 while installed (a context manager; main thread only, elsewhere a no-op)."""

    def __init__(self):
        self.requested: str | None = None
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        request = REQUESTS[signal.Signals(signum)]
        if _PRIORITY[request] > _PRIORITY[self.requested]:
            self.requested, self.signal_name = request, signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in REQUESTS:
                self._previous[signum] = signal.signal(signum, self._handle)
        for signum in take_early_signals():  # arrived while the job's python was starting (vmim.launch.boot)
            self._handle(signum, None)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def agreed(self, info: DistInfo, device: torch.device) -> str | None:
        """The strongest request on any rank (collective when distributed: call on every rank, same step)."""
        code = _PRIORITY[self.requested]
        if info.world_size > 1:
            flag = torch.tensor([code], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        return _BY_PRIORITY[code]
