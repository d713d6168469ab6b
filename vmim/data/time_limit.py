"""An in-process time limit for decoding (SIGALRM), for ``data.decode_isolation: false`` and inside decode children.

SIGALRM interrupts Python code and blocking system calls, not a decoder spinning inside C, and nothing survives a
segfault: that is what the killable child of :mod:`vmim.data.isolation` is for; its child applies this limit to itself
first, so an ordinary slow read ends with a clean error rather than a kill.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class DecodeTimeout(RuntimeError):
    pass


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
