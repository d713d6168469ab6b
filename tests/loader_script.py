"""A process that builds the real pretraining loader and then ends one way; run by the exit-path and bad-file tests.

    python tests/loader_script.py MODE VIDEO_LIST [ISOLATION]

The loader is ``vmim.data.build_pretrain_data`` over VIDEO_LIST (2 workers, decoding isolated in child processes
unless ISOLATION is ``false``).
The script takes two batches (printing ``BAD <path> | <reason>`` for each failure), prints
``PIDS <pid>:<start time> ...`` (every process below it: loader workers and their decode children) and
``EXIT <CLOCK_MONOTONIC seconds>``, then ends as MODE says: ``success``, ``handled_error``, ``unhandled_error``,
``sigint`` / ``sigterm`` (sent to itself only), or ``group_stop`` (SIGUSR2 and SIGTERM to its whole process group
from another process, as Slurm does, under the trainer's StopSignals; then more batches, and a normal end).

Mode ``sigint_at_fork`` is Ctrl-C landing inside a fork hook as the loader starts its workers, made deterministic:
an ``os.register_at_fork(after_in_parent=...)`` hook raises SIGINT in the main process right after the first worker
is forked (where CPython used to print "Exception ignored in ..." and drop the KeyboardInterrupt). The script then
trains through the whole epoch and prints ``TRAINED TO THE END`` unless the Ctrl-C stopped it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


HELD: list = []  # the loader and its iterator stay referenced to the end, as in a script's top-level code


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time in clock ticks) of every process below ``pid``, from /proc."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (name) ": state, ppid, ...; field 19 is starttime
        children.setdefault(int(fields[1]), []).append((int(entry), int(fields[19])))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def alive(pid: int, start: int) -> bool:
    """The process ``pid`` that started at ``start`` still runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19]) == start and fields[0] != "Z"


def report(batch: dict) -> None:
    for failure in batch["bad"]:
        print("BAD", failure[-2], "|", failure[-1], flush=True)


def main(mode: str, video_list: str, isolation: str = "true") -> None:
    # Ctrl-C as in a terminal, whatever this process inherited: started from a background job of a non-interactive
    # shell (as a CI runner may start the suite), SIGINT arrives ignored, and Python then installs no handler for it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from vmim.config import load_config
    from vmim.data import build_pretrain_data

    cfg = load_config(None, [
        "targets.pixel.weight=1", "model.backbone=vit_test", "model.patch_size=8", "data.img_size=32",
        "data.num_frames=4", "data.batch_size=2", "data.num_workers=2", f"data.decode_isolation={isolation}",
        "data.decode_timeout_s=60", "data.max_bad_fraction=0.9", "train.steps_per_epoch=12",
        "data.datasets.clips.kind=video", f"data.datasets.clips.path={video_list}", "data.datasets.clips.stride=2",
        "data.datasets.clips.decoder=auto"])
    data = build_pretrain_data(cfg, (2, 8, 8))
    data.sampler.set_epoch(0, 0)
    if mode == "sigint_at_fork":
        main_pid, fired = os.getpid(), []

        def interrupt_after_fork() -> None:  # inherited by the workers: only this process's first fork counts
            if os.getpid() == main_pid and not fired:
                fired.append(True)
                signal.raise_signal(signal.SIGINT)  # delivered here and now, as a Ctrl-C in this hook would be

        os.register_at_fork(after_in_parent=interrupt_after_fork)
    HELD.append(data)
    batches = iter(data.loader)
    HELD.append(batches)
    if mode == "sigint_at_fork":
        for batch in batches:
            report(batch)
        print("TRAINED TO THE END", flush=True)
        return
    for _ in range(2):
        report(next(batches))
    helpers = descendants(os.getpid())
    print("PIDS", *(f"{pid}:{start}" for pid, start in helpers), flush=True)
    print("EXIT", time.monotonic(), flush=True)
    if mode == "success":
        return
    if mode == "handled_error":
        try:
            raise ValueError("caught by the script")
        except ValueError:
            return
    if mode == "unhandled_error":
        raise RuntimeError("shape mismatch in the first training step")
    if mode in ("sigint", "sigterm"):
        os.kill(os.getpid(), signal.SIGINT if mode == "sigint" else signal.SIGTERM)
        # Short sleeps, as a training loop keeps running Python: the kernel may hand a process-directed SIGINT to
        # another thread of this process (torch's), and then only the main thread's next bytecode raises
        # KeyboardInterrupt; one long sleep() would not wake up for it (it hung to the test's timeout once).
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.05)
        raise SystemExit("the signal did not end the process")
    if mode == "group_stop":
        from vmim.engine.preemption import StopSignals

        with StopSignals() as stop:
            group = os.getpgrp()  # Slurm signals from outside: a sender that is not the workers' parent
            subprocess.run([sys.executable, "-c", f"import os, signal; os.killpg({group}, signal.SIGUSR2); "
                            f"os.killpg({group}, signal.SIGTERM)"], start_new_session=True, check=True)
            deadline = time.monotonic() + 60
            while stop.requested != "requeue" and time.monotonic() < deadline:
                time.sleep(0.01)
            for _ in range(3):  # a worker killed by the signal would make the loader raise; a decode child, "BAD"
                report(next(batches))
            dead = [pid for pid, start in helpers if not alive(pid, start)]
            print("SAVED", stop.requested, "dead:", dead, flush=True)
            print("EXIT", time.monotonic(), flush=True)
        return
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(*sys.argv[1:])
