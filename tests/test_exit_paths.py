"""Every way a process holding the real loader ends takes its loader workers and their decode children with it.

Each case runs ``tests/loader_script.py`` (``build_pretrain_data`` over real videos, 2 workers, isolated decoding) in
a session of its own, waits for every process that holds its output pipes (the script, its workers, their decode
children) to close them, and then checks that none of the helper processes it listed still runs. A job-wide SIGTERM
and SIGUSR2 (Slurm's) must not end the workers before the trainer is done, and the end of the trainer must.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.loader_script import alive
from tests.video_fixtures import CODECS, encode

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "loader_script.py"
RUN_TIMEOUT_S = 240  # start-up (torch import) on a loaded 2-core machine included; a hang is forever
EXIT_S = 20  # from the exit action to the last helper gone; a clean exit takes well under a second


@pytest.fixture(scope="module")
def video_list(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exit_videos")
    codec, suffix, options = CODECS["h264"]
    for i in range(4):
        encode(str(root / f"clip_{i}.{suffix}"), codec, options)
    (root / "train.txt").write_text("".join(f"clip_{i}.{suffix} {i}\n" for i in range(4)))
    return root / "train.txt"


def run_script(mode: str, *args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) once the script and every process holding its pipes have ended; fails the test
    (after killing the whole session) when that takes longer than RUN_TIMEOUT_S."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), mode, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        still = "main process running" if proc.poll() is None else f"main process ended ({proc.returncode})"
        os.killpg(proc.pid, signal.SIGKILL)  # the session's process group: the script, its workers and children
        out, err = proc.communicate()
        pytest.fail(f"{mode}: not over after {RUN_TIMEOUT_S} s ({still}, helpers hold its output open)\n"
                    f"stdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}")
    return proc.returncode, out, err


def describe(pids: list[int]) -> list[str]:
    found = []
    for pid in pids:
        try:
            found.append(Path(f"/proc/{pid}/stat").read_text().strip())
        except OSError:
            found.append(f"{pid} (gone)")
    return found


def helpers_of(out: str) -> list[tuple[int, int]]:
    line = next(line for line in out.splitlines() if line.startswith("PIDS"))
    return [(int(p), int(s)) for p, s in (item.split(":") for item in line.split()[1:])]


def assert_all_gone(mode: str, out: str, err: str) -> None:
    """Every listed helper has ended within EXIT_S of the exit action. A process closes its files before the kernel
    marks it ended, so the last one may still be on its way out when the pipes report end-of-file: wait for it."""
    helpers = helpers_of(out)
    assert len(helpers) >= 4, f"expected 2 workers with a decode child each, got {helpers}\n{err[-2000:]}"
    exit_at = float([line for line in out.splitlines() if line.startswith("EXIT")][-1].split()[1])
    while (survivors := [pid for pid, start in helpers if alive(pid, start)]) and time.monotonic() < exit_at + EXIT_S:
        time.sleep(0.1)
    assert not survivors, f"{mode}: helper processes outlived the run by {EXIT_S} s: {describe(survivors)}"


@pytest.mark.parametrize("mode, statuses", [
    ("success", {0}),
    ("handled_error", {0}),
    ("unhandled_error", {1}),  # an exception nobody catches, e.g. a shape error in the first step
    ("sigint", {-signal.SIGINT, 1, 130}),  # Ctrl-C to the main process only: KeyboardInterrupt
    ("sigterm", {-signal.SIGTERM}),  # a plain kill of the main process: its default action
])
def test_every_exit_path_ends_workers_and_decode_children(video_list, mode, statuses):
    code, out, err = run_script(mode, str(video_list))
    assert code in statuses, f"{mode}: exit status {code}\n{err[-3000:]}"
    if mode == "unhandled_error":
        assert "RuntimeError: shape mismatch in the first training step" in err  # the traceback, then the exit
    if mode == "sigint":
        assert "KeyboardInterrupt" in err
    assert_all_gone(mode, out, err)


def test_job_wide_stop_signals_spare_the_workers_until_the_trainer_ends(video_list):
    """Slurm's SIGUSR2 + SIGTERM reach every process of the job: the trainer records a requeue request, the workers
    and decode children go on serving batches; when the trainer then ends, they end too."""
    code, out, err = run_script("group_stop", str(video_list))
    assert code == 0, err[-3000:]
    assert "SAVED requeue dead: []" in out, out
    assert "BAD" not in out, out  # no decode child was killed by the signals either
    assert_all_gone("group_stop", out, err)


def test_ctrl_c_while_the_workers_are_forked_stops_the_run(video_list):
    """A Ctrl-C that lands in a fork hook as the loader forks its workers (here raised from an ``after_in_parent``
    hook, deterministically) is raised once the workers are up, and ends the run: it is not printed as "Exception
    ignored" and dropped, with the run going on to train through its epoch. The workers end with the run."""
    code, out, err = run_script("sigint_at_fork", str(video_list))
    assert "TRAINED TO THE END" not in out, f"the Ctrl-C was lost\nstderr:\n{err[-3000:]}"
    assert code in {-signal.SIGINT, 1, 130}, f"exit status {code}\n{err[-3000:]}"
    assert "KeyboardInterrupt" in err and "Exception ignored" not in err, err[-3000:]
