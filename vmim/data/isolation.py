"""Run file decoding in a forked child process that can be killed: no decoder can hang or crash the run.

A SIGALRM time limit (:func:`vmim.data.robust.time_limit`) interrupts Python code and blocking system calls, but not
a decoder spinning inside C (a malformed stream that loops in FFmpeg), and nothing survives a segfault. Here the
work runs in a child forked from the loading process (a data-loader worker, or the trainer with 0 workers), so it
already holds the datasets and costs no start-up; the parent waits at most ``timeout_s`` for the answer, then
kills the child, reports the file, and forks a fresh child for the next sample.

The answer is pickled with protocol 5: the arrays' bytes go out of band through a shared memory block mapped
before the fork (one copy in, one copy out), the small rest through a pipe; an answer larger than the block
travels whole through the pipe. The parent's numpy Generator state is sent along and returned, so a sample is
the same with and without isolation.
"""

from __future__ import annotations

import ctypes
import faulthandler
import mmap
import os
import pickle
import signal
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable

import numpy as np

from .robust import DecodeTimeout, failure_reason, ignore_stop_signals, time_limit

GRACE_S = 2.0  # beyond the child's own SIGALRM limit, before the parent kills it
SHARED_BYTES = 64 << 20  # out-of-band answer buffer: 4 repeats x 16 frames x 3 x 320² uint8 fit


class DecoderCrashed(RuntimeError):
    pass


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGKILL to this process when its parent exits (no orphaned decoders)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pack(reply: Any, shared: mmap.mmap) -> bytes:
    """Pickle ``reply``; large buffers (numpy arrays) are written to ``shared`` and only their sizes sent."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(reply, protocol=5, buffer_callback=buffers.append)
    sizes = [memoryview(b).nbytes for b in buffers]
    if sum(sizes) > len(shared):
        return pickle.dumps((pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL), None), protocol=5)
    view, offset = memoryview(shared), 0
    for buffer, size in zip(buffers, sizes):
        view[offset:offset + size] = buffer.raw()
        offset += size
    return pickle.dumps((data, sizes), protocol=5)


def _unpack(message: bytes, shared: mmap.mmap) -> Any:
    data, sizes = pickle.loads(message)
    if sizes is None:
        return pickle.loads(data)
    view, offset, buffers = memoryview(shared), 0, []
    for size in sizes:
        buffers.append(bytearray(view[offset:offset + size]))  # a writable copy: the block is reused
        offset += size
    return pickle.loads(data, buffers=buffers)


def _serve(conn: Connection, shared: mmap.mmap, work: Callable[..., Any], timeout_s: float) -> None:
    """Child loop: ``(args, rng_state)`` in, ``("ok" | "error", payload, rng_state)`` out, until the pipe closes."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    ignore_stop_signals()
    faulthandler.disable()  # a crash is reported once, by the parent, with the file that caused it
    _die_with_parent()
    while True:
        try:
            args, rng_state = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        rng = np.random.default_rng()
        rng.bit_generator.state = rng_state
        try:
            with time_limit(timeout_s):
                reply = ("ok", work(*args, rng), rng.bit_generator.state)
        except Exception as err:  # sent back whole-message: exception classes need not pickle
            reply = ("error", (type(err).__name__, failure_reason(err)), rng.bit_generator.state)
        conn.send_bytes(_pack(reply, shared))


class IsolatedWorker:
    """Calls ``work(*args, rng)`` in a killable child; ``work`` must return picklable values (numpy, not tensors).

    Args:
        work: the function, captured by the fork (not pickled).
        timeout_s: answer deadline per call; the child also applies it as a SIGALRM limit to itself first.
    """

    def __init__(self, work: Callable[..., Any], timeout_s: float):
        self.work, self.timeout_s = work, timeout_s
        self._pid: int | None = None
        self._conn: Connection | None = None
        self._shared: mmap.mmap | None = None
        self._owner = -1

    def __getstate__(self) -> dict:  # a child belongs to the process that forked it
        return {**self.__dict__, "_pid": None, "_conn": None, "_shared": None, "_owner": -1}

    def _start(self) -> None:
        parent_end, child_end = Pipe()
        self._shared = mmap.mmap(-1, SHARED_BYTES)  # anonymous MAP_SHARED: the same pages in parent and child
        pid = os.fork()
        if pid == 0:  # child
            parent_end.close()
            code = 0
            try:
                _serve(child_end, self._shared, self.work, self.timeout_s)
            except BaseException:
                code = 1
            finally:
                os._exit(code)  # never run the parent's atexit handlers or finalizers
        child_end.close()
        self._pid, self._conn, self._owner = pid, parent_end, os.getpid()

    def _stop(self) -> int | None:
        """Kill and reap the child; its exit status (negative: killed by that signal)."""
        pid, conn = self._pid, self._conn
        self._pid, self._conn, self._shared, self._owner = None, None, None, -1  # the next call forks afresh
        if conn is not None:
            conn.close()
        if pid is None:
            return None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def __call__(self, *args: Any, rng: np.random.Generator) -> Any:
        """``work(*args, rng)`` in the child; ``rng`` advances as if called here. Raises what the work raised
        (as RuntimeError with its reason), DecodeTimeout when no answer comes in time, DecoderCrashed when the
        child dies."""
        if self._owner != os.getpid():  # first call, after a kill, or inherited through a fork: a child of our own
            self._pid, self._conn, self._shared = None, None, None
            self._start()
        self._conn.send_bytes(pickle.dumps((args, rng.bit_generator.state), protocol=pickle.HIGHEST_PROTOCOL))
        deadline = self.timeout_s + GRACE_S if self.timeout_s > 0 else None
        try:
            ready = self._conn.poll(deadline)
            if not ready:
                self._stop()
                raise DecodeTimeout(f"no result after {deadline:g} s (data.decode_timeout_s="
                                    f"{self.timeout_s:g} plus {GRACE_S:g} s grace); the decoding process was killed")
            status, payload, rng_state = _unpack(self._conn.recv_bytes(), self._shared)
        except (EOFError, OSError, ConnectionError):
            code = self._stop()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise DecoderCrashed(f"the decoding process died ({how})") from None
        rng.bit_generator.state = rng_state
        if status == "error":
            kind, reason = payload
            raise ChildError(kind, reason)
        return payload

    def close(self) -> None:
        if self._owner == os.getpid():
            self._stop()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class ChildError(RuntimeError):
    """An exception raised by the work in the child; ``reason`` is its message."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}" if kind not in reason else reason)
        self.kind, self.reason = kind, reason
