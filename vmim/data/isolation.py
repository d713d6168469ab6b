"""Run file decoding in a forked child process that can be killed: no decoder can hang or crash the run.

A SIGALRM time limit (:func:`vmim.data.time_limit.time_limit`) interrupts Python code and blocking system calls, but not
a decoder spinning inside C (a malformed stream that loops in FFmpeg), and nothing survives a segfault. Here the
work runs in a child forked from the loading process (a data-loader worker, or the trainer with 0 workers), so it
already holds the datasets and costs no start-up; the parent waits at most ``timeout_s`` for each answer, then
kills the child, reports the file, and forks a fresh child for what comes next.

Calls can be pipelined (:meth:`IsolatedWorker.submit`, :meth:`IsolatedWorker.result`): with up to two requests in
flight the child decodes the next sample while the parent augments and masks the current one, so isolation costs
no throughput. The answer is pickled with protocol 5: the arrays' bytes go out of band through one of two shared
memory slots mapped before the fork (reply k in slot k % 2; one copy in, one copy out), the small rest through a
pipe; an answer larger than a slot travels whole through the pipe. The numpy Generator state is sent along and
returned, so a sample is the same with and without isolation.

The child's descriptor 2 goes to a temporary file (:mod:`vmim.data.stderr_capture`): FFmpeg's and decord's messages
stay off the terminal, and the last of those a failed call wrote end its reason. The child ignores Ctrl-C and the
job's stop signals and dies with its parent (:mod:`vmim.data.lifetime`). The fork itself defers Ctrl-C
(:class:`vmim.signals.defer_interrupts`): one landing in a fork hook is raised in the parent right after it.
"""

from __future__ import annotations

import faulthandler
import mmap
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable

import numpy as np

from ..signals import WaitAbandoned, abandon_waits, defer_interrupts, waits_abandoned
from .bad_files import failure_reason
from .lifetime import init_helper_child
from .stderr_capture import StderrCapture, with_decoder_output
from .time_limit import DecodeTimeout, time_limit

GRACE_S = 2.0  # beyond the child's own SIGALRM limit, before the parent kills it
SLOT_BYTES = 128 << 20  # per reply slot: 16 decoded 1080p RGB frames (100 MB) fit; pages cost memory only once used
IN_FLIGHT = 2  # requests sent but not yet answered: one per slot


class DecoderCrashed(RuntimeError):
    pass


def _pack(reply: Any, slot: memoryview) -> bytes:
    """Pickle ``reply``; large buffers (numpy arrays) are written to ``slot`` and only their sizes sent."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(reply, protocol=5, buffer_callback=buffers.append)
    sizes = [memoryview(b).nbytes for b in buffers]
    if sum(sizes) > len(slot):
        return pickle.dumps((pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL), None), protocol=5)
    offset = 0
    for buffer, size in zip(buffers, sizes):
        slot[offset:offset + size] = buffer.raw()
        offset += size
    return pickle.dumps((data, sizes), protocol=5)


def _unpack(message: bytes, slot: memoryview) -> Any:
    data, sizes = pickle.loads(message)
    if sizes is None:
        return pickle.loads(data)
    offset, buffers = 0, []
    for size in sizes:
        buffers.append(bytearray(slot[offset:offset + size]))  # a writable copy: the slot is reused
        offset += size
    return pickle.loads(data, buffers=buffers)


def _slot(shared: mmap.mmap, reply_number: int) -> memoryview:
    start = (reply_number % IN_FLIGHT) * SLOT_BYTES
    return memoryview(shared)[start:start + SLOT_BYTES]


def _serve(conn: Connection, shared: mmap.mmap, work: Callable[..., Any], timeout_s: float) -> None:
    """Child loop: ``(args, rng_state)`` in, ``("ok" | "error", payload, rng_state)`` out, until the pipe closes."""
    import torch

    torch.set_num_threads(1)
    init_helper_child()
    faulthandler.disable()  # a crash is reported once, by the parent, with the file that caused it
    capture = StderrCapture()  # for the child's whole life; what a failed call wrote joins its reason
    replies = 0
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
            reason = with_decoder_output(failure_reason(err), capture.take())
            reply = ("error", (type(err).__name__, reason), rng.bit_generator.state)
        else:
            capture.take()  # messages about a file that decoded are dropped
        conn.send_bytes(_pack(reply, _slot(shared, replies)))
        replies += 1


@dataclass
class _Request:
    ticket: int
    message: bytes  # (args, rng state at submission), pickled: resent as is to a fresh child after a kill
    rng: np.random.Generator
    sent: float = 0.0


class IsolatedWorker:
    """Calls ``work(*args, rng)`` in a killable child; ``work`` must return picklable values (numpy, not tensors).

    ``worker(*args, rng=rng)`` is one call; ``ticket = worker.submit(*args, rng=rng)`` then ``worker.result(ticket)``
    pipelines calls (the child works through them in order while the caller does other things). ``rng`` must
    not be used between its submit and its result.

    Args:
        work: the function, captured by the fork (not pickled).
        timeout_s: answer deadline per call, counted from when the child can start on it; the child also
            applies it as a SIGALRM limit to itself first. 0: no deadline.
    """

    def __init__(self, work: Callable[..., Any], timeout_s: float):
        self.work, self.timeout_s = work, timeout_s
        self._reset()

    def _reset(self) -> None:
        """Forget any child (this process does not own it) and all calls."""
        self._pid: int | None = None
        self._conn: Connection | None = None
        self._shared: mmap.mmap | None = None
        self._owner = -1
        self._replies = 0  # replies read from the current child: the next one is in slot _replies % 2
        self._last_reply = 0.0  # when the last reply was read: the child can have started on the next one since
        self._next_ticket = 0
        self._in_flight: deque[_Request] = deque()  # sent, unanswered, in the child's order
        self._answers: dict[int, tuple] = {}  # ticket -> ("ok" | "error", payload, rng_state) or ("failed", error)
        self._abandoned: set[int] = set()

    def __getstate__(self) -> dict:  # a child and its calls belong to the process that forked it
        return {"work": self.work, "timeout_s": self.timeout_s}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _start(self) -> None:
        parent_end, child_end = Pipe()
        self._shared = mmap.mmap(-1, IN_FLIGHT * SLOT_BYTES)  # anonymous MAP_SHARED: the same pages in both
        # A Ctrl-C landing in a fork hook would be dropped: it is raised when this block ends, once the child is
        # recorded here (so that it is killed and reaped like any other, not left behind).
        with defer_interrupts():
            pid = os.fork()
            if pid == 0:  # child (its SIGINT handler is already the one from before the block)
                parent_end.close()
                code = 0
                try:
                    _serve(child_end, self._shared, self.work, self.timeout_s)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)  # never run the parent's atexit handlers or finalizers
            child_end.close()
            self._pid, self._conn, self._owner, self._replies = pid, parent_end, os.getpid(), 0

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

    def _ensure_child(self) -> None:
        if self._owner != os.getpid():  # first call, after a kill, or inherited through a fork: a child of our own
            if self._owner != -1:
                self._reset()
            self._start()

    def _send(self, request: _Request) -> None:
        self._conn.send_bytes(request.message)
        request.sent = time.monotonic()
        self._in_flight.append(request)

    def submit(self, *args: Any, rng: np.random.Generator) -> int:
        """Send ``work(*args, rng)`` to the child; returns the ticket for :meth:`result`."""
        self._ensure_child()
        while len(self._in_flight) >= IN_FLIGHT:  # its slot must be free: read the oldest answer first
            self._receive_oldest()
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        message = pickle.dumps((args, rng.bit_generator.state), protocol=pickle.HIGHEST_PROTOCOL)
        self._send(_Request(ticket, message, rng))
        return ticket

    def result(self, ticket: int) -> Any:
        """The answer of a submitted call; ``rng`` advances as if the work ran here. Raises what the work raised
        (as :class:`ChildError` with its reason), DecodeTimeout when no answer came in time, DecoderCrashed when
        the child died."""
        while ticket not in self._answers:
            if not any(r.ticket == ticket for r in self._in_flight):
                raise KeyError(f"no call with ticket {ticket} is pending")
            self._receive_oldest()
        answer = self._answers.pop(ticket)
        if answer[0] == "failed":
            raise answer[1]
        status, payload, rng_state, rng = answer
        rng.bit_generator.state = rng_state
        if status == "error":
            kind, reason = payload
            raise ChildError(kind, reason)
        return payload

    def __call__(self, *args: Any, rng: np.random.Generator) -> Any:
        """``work(*args, rng)`` in the child, waited for."""
        return self.result(self.submit(*args, rng=rng))

    def abandon(self, tickets) -> None:
        """Drop the answers of these tickets (an error left them unread); their work still runs in order."""
        for ticket in tickets:
            if self._answers.pop(ticket, None) is None and any(r.ticket == ticket for r in self._in_flight):
                self._abandoned.add(ticket)

    def _receive_oldest(self) -> None:
        """Read the child's answer to the oldest request, or kill the child when none comes in time."""
        request = self._in_flight[0]
        wait = None
        if self.timeout_s > 0:
            deadline = self.timeout_s + GRACE_S
            wait = max(0.0, max(request.sent, self._last_reply) + deadline - time.monotonic())
        try:
            if not self._poll(wait):
                self._fail_oldest(DecodeTimeout(
                    f"no result after {deadline:g} s (data.decode_timeout_s={self.timeout_s:g} plus {GRACE_S:g} s "
                    "grace); the decoding process was killed"))
                return
            status, payload, rng_state = _unpack(self._conn.recv_bytes(), _slot(self._shared, self._replies))
        except (EOFError, OSError, ConnectionError):
            code = self._stop()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            self._fail_oldest(DecoderCrashed(f"the decoding process died ({how})"), stopped=True)
            return
        self._replies += 1
        self._last_reply = time.monotonic()
        self._in_flight.popleft()
        if request.ticket in self._abandoned:
            self._abandoned.discard(request.ticket)
        else:
            self._answers[request.ticket] = (status, payload, rng_state, request.rng)

    def _poll(self, wait: float | None) -> bool:
        """Whether an answer arrived within ``wait`` seconds (None: no limit). Inside an active
        :class:`vmim.signals.abandon_waits` that says stop, gives up: kills the child, forgets every call in flight
        and raises :class:`vmim.signals.WaitAbandoned`."""
        end = None if wait is None else time.monotonic() + wait
        while True:
            left = abandon_waits.POLL_S if end is None else min(abandon_waits.POLL_S, max(0.0, end - time.monotonic()))
            if self._conn.poll(left):
                return True
            if waits_abandoned():
                self._stop()
                self._in_flight.clear()
                self._answers.clear()
                self._abandoned.clear()
                raise WaitAbandoned()
            if end is not None and time.monotonic() >= end:
                return False

    def _fail_oldest(self, error: Exception, stopped: bool = False) -> None:
        """The oldest request failed with ``error``: kill the child; a fresh one takes the others, resent."""
        if not stopped:
            self._stop()
        failed = self._in_flight.popleft()
        if failed.ticket in self._abandoned:
            self._abandoned.discard(failed.ticket)
        else:
            self._answers[failed.ticket] = ("failed", error)
        rest, self._in_flight = list(self._in_flight), deque()
        if rest:
            self._start()
            self._last_reply = 0.0
            for request in rest:
                self._send(request)

    def close(self) -> None:
        if self._owner == os.getpid():
            self._stop()
        self._in_flight.clear()

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
