"""Bad samples: replace, report once, count, and stop only past a threshold. Decoding has a time limit.

Workers cannot share counters, so each sample carries the failures met while producing it (``"bad"``);
the main process's :class:`BadFileMonitor` logs each file once, keeps the counts for TensorBoard, and
raises :class:`TooManyBadFiles` when a dataset's bad fraction (missing at start-up plus undecodable so
far, over the files listed) exceeds ``data.max_bad_fraction``.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager

log = logging.getLogger("vmim")


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)  # Slurm's stop / requeue warnings: the trainer's to handle


def ignore_stop_signals(worker_id: int | None = None) -> None:
    """For helper processes (data-loader workers, decode children). Slurm signals every process of a job step, and
    a worker killed by SIGTERM or SIGUSR2 would crash the trainer before it saves; helpers end with the trainer."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class DecodeTimeout(RuntimeError):
    pass


class TooManyBadFiles(RuntimeError):
    pass


def failure_reason(err: BaseException) -> str:
    """What to report for a sample that failed: a DecodeError's reason, else the exception's type and message."""
    return getattr(err, "reason", None) or f"{type(err).__name__}: {err}"


@contextmanager
def time_limit(seconds: float):
    """Raise DecodeTimeout after ``seconds`` (SIGALRM; only in a process's main thread, as data-loader
    workers and single-process loading are; elsewhere no limit applies). 0 disables it."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise DecodeTimeout(f"decoding took longer than {seconds:g} s (data.decode_timeout_s)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class BadFileMonitor:
    """Main-process bookkeeping of bad files per dataset.

    Args:
        names: dataset names by id.
        listed: files listed per dataset (before dropping missing ones).
        missing: files dropped at start-up per dataset.
        max_fraction: allowed bad fraction per dataset.
    """

    def __init__(self, names: list[str], listed: list[int], missing: list[int], max_fraction: float):
        self.names, self.listed, self.missing, self.max_fraction = names, listed, missing, max_fraction
        self.bad: list[set[str]] = [set() for _ in names]

    def update(self, failures: list[tuple[int, str, str]]) -> None:
        """Record (dataset id, path, reason) failures from a batch; log new files; raise past the threshold."""
        for dataset, path, reason in failures:
            if path in self.bad[dataset]:
                continue
            self.bad[dataset].add(path)
            log.warning(f"bad file in dataset '{self.names[dataset]}': {path}: {reason} (skipped, replaced by "
                        f"another sample; {len(self.bad[dataset])} bad so far)")
            fraction = self.fraction(dataset)
            if fraction > self.max_fraction:
                raise TooManyBadFiles(
                    f"dataset '{self.names[dataset]}': {self.missing[dataset]} missing + {len(self.bad[dataset])} "
                    f"undecodable of {self.listed[dataset]} listed files = {fraction:.1%}, more than "
                    f"data.max_bad_fraction={self.max_fraction:g}. Fix or remove them (log.txt lists each), or "
                    f"raise the threshold.")

    def fraction(self, dataset: int) -> float:
        return (self.missing[dataset] + len(self.bad[dataset])) / max(1, self.listed[dataset])

    def scalars(self) -> dict[str, float]:
        out = {"data/bad_files": float(sum(len(b) for b in self.bad) + sum(self.missing))}
        for i, name in enumerate(self.names):
            out[f"data/bad_files/{name}"] = float(len(self.bad[i]) + self.missing[i])
        return out
