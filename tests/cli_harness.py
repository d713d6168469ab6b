"""Running the real ``vmim`` CLI in a subprocess and checking how it refuses hostile input.

Used by the ``tests/test_cli_<verb>.py`` modules: each holds a table of hostile inputs for one entry point and
asserts, for every row, what :func:`assert_refused` checks:

* the exit code (2: input refused before any work; 1: a run that stopped itself);
* exactly one ``vmim...:`` line on stderr, naming every given word (the key, the file, the line number);
* no Python traceback anywhere in the output;
* no run folder where the input was refused before work;
* no process left behind: the CLI runs as the leader of a new session, and after it exits no process of that
  session may remain (loader workers, decode children, distributed helpers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _session_members(sid: int) -> list[str]:
    """``pid (comm)`` of every live process whose session id is ``sid`` (Linux ``/proc``)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        comm_end = stat.rindex(")")
        fields = stat[comm_end + 2:].split()  # state ppid pgrp session ...
        if fields[0] != "Z" and int(fields[3]) == sid:
            members.append(f"{entry.name} {stat[stat.index('(') + 1:comm_end]}")
    return members


def run_cli(*args: str | Path, timeout: float = 120, cwd: Path = REPO, env: dict | None = None,
            ) -> subprocess.CompletedProcess:
    """``python -m vmim.cli ARGS`` in a new session; returns the finished process (text stdout / stderr) after
    checking that no process of its session outlived it."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "vmim.cli", *map(str, args)], cwd=cwd, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        raise AssertionError(f"vmim {' '.join(map(str, args))} ran past {timeout} s\nstdout:\n{out}\nstderr:\n{err}"
                             ) from None
    left = _session_members(proc.pid)
    if left:
        os.killpg(proc.pid, 9)
        raise AssertionError(f"vmim {' '.join(map(str, args))} left processes behind: {left}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def vmim_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The stderr lines the CLI itself wrote (``vmim: ...``, ``vmim convert: ...``)."""
    return [line for line in proc.stderr.splitlines() if line.startswith("vmim")]


def assert_refused(proc: subprocess.CompletedProcess, *names: str, code: int = 2,
                   no_dirs: tuple[Path, ...] = ()) -> str:
    """``proc`` exited with ``code``, printed one ``vmim...`` line naming every one of ``names`` and no traceback,
    and left none of ``no_dirs``; returns that line."""
    what = f"{' '.join(proc.args[3:])}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}: {what}"
    assert "Traceback" not in proc.stderr + proc.stdout, f"a traceback: {what}"
    lines = vmim_lines(proc)
    assert len(lines) == 1, f"expected one 'vmim...' line, got {len(lines)}: {what}"
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}: {what}"
    for folder in no_dirs:
        assert not Path(folder).exists(), f"{folder} was created: {what}"
    return lines[0]


def wait_for_reader(fifo: Path, proc: subprocess.Popen, timeout: float = 240) -> int:
    """Block until some process opens ``fifo`` to read (it is then blocked reading it: the phase under test is
    running and cannot finish); returns our write end, held open. Polls a condition, no timing assumption."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} before reading {fifo}: "
                                     f"{proc.stderr.read()[-3000:]}") from None
            time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"nothing opened {fifo} within {timeout} s")


def sigterm_while_blocked_on(fifo: Path, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """``vmim ARGS`` in a new session; once it blocks reading ``fifo`` (a video of its list), SIGTERM, with the FIFO
    held open, so the decode stays hung: the command must stop without waiting for it, within ``timeout`` s (the
    callers set ``data.decode_timeout_s`` far above it). Returns the finished process, after checking that no
    process of its session outlived it."""
    proc = subprocess.Popen([sys.executable, "-m", "vmim.cli", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    writer = wait_for_reader(fifo, proc)
    os.kill(proc.pid, signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"still running {timeout} s after SIGTERM: {proc.communicate()[1][-3000:]}") from None
    finally:
        os.close(writer)
    left = _session_members(proc.pid)
    assert not left, f"processes left behind: {left}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
