"""Stop signals: the early record is cheap to install and handed over once; helpers ignore the job's signals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_job_entry_point_imports_nothing_heavy():
    """vmim.launch.boot must listen for Slurm's early warning within milliseconds: no torch, numpy or yaml yet."""
    out = run("import sys, vmim.launch.boot\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'yaml', 'omegaconf', 'av'}))")
    assert out.strip() == "[]"


def test_early_signals_are_recorded_and_taken_once():
    out = run("import os, signal\n"
              "from vmim.signals import record_early_signals, take_early_signals\n"
              "record_early_signals()\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "os.kill(os.getpid(), signal.SIGUSR2)\n"
              "print([signal.Signals(s).name for s in take_early_signals()], take_early_signals())\n")
    assert out.strip() == "['SIGTERM', 'SIGUSR2'] []"


def test_helpers_ignore_stop_signals():
    out = run("import os, signal\n"
              "from vmim.signals import STOP_SIGNALS, ignore_stop_signals\n"
              "ignore_stop_signals()\n"
              "for s in STOP_SIGNALS:\n"
              "    os.kill(os.getpid(), s)\n"
              "print('alive')\n")
    assert out.strip() == "alive"


# Ctrl-C during a fork. The SIGINT is raised from an ``after_in_parent`` fork hook of the test's own: exactly where a
# real Ctrl-C used to be dropped (CPython prints "Exception ignored in ..." for an exception raised in a fork hook).
FORK_WITH_SIGINT_IN_HOOK = """
import multiprocessing, os, signal
from vmim.signals import defer_interrupts
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started with SIGINT ignored
main_pid, armed = os.getpid(), []
def hook():
    if os.getpid() == main_pid and armed:
        armed.clear()
        signal.raise_signal(signal.SIGINT)
os.register_at_fork(after_in_parent=hook)

def child_check():  # the child has Python's handler back: a Ctrl-C raises KeyboardInterrupt there
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        os._exit(7)
    os._exit(3)

def fork(guarded, how):
    armed.append(True)
    try:
        if guarded:
            with defer_interrupts():
                child = start(how)
        else:
            child = start(how)
        outcome = "none"
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt"
    print(how, "guarded" if guarded else "bare", outcome, finish(child),
          signal.getsignal(signal.SIGINT) is signal.default_int_handler)

def start(how):
    if how == "os.fork":
        pid = os.fork()
        if pid == 0:
            child_check()
        return pid
    process = multiprocessing.get_context("fork").Process(target=child_check)
    process.start()
    return process

def finish(child):
    if isinstance(child, int):
        return os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    child.join()
    return child.exitcode

for how in ("os.fork", "multiprocessing"):
    for guarded in (False, True):
        fork(guarded, how)
"""


def test_ctrl_c_in_a_fork_hook_is_raised_after_the_fork_and_children_keep_ctrl_c():
    """Bare, the KeyboardInterrupt raised in the hook is dropped (the failure this guards against); inside
    defer_interrupts it is raised once the fork is over, the parent's handler is back, and the child (forked directly
    or by multiprocessing, as DataLoader workers are) has Python's SIGINT handler, not the deferring one."""
    proc = subprocess.run([sys.executable, "-c", FORK_WITH_SIGINT_IN_HOOK], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [
        "os.fork bare none 7 True",
        "os.fork guarded KeyboardInterrupt 7 True",
        "multiprocessing bare none 7 True",
        "multiprocessing guarded KeyboardInterrupt 7 True",
    ], proc.stdout + proc.stderr[-3000:]
    assert proc.stderr.count("Exception ignored") == 2, proc.stderr  # the two bare forks only


def test_deferring_ctrl_c_leaves_the_stop_signals_to_the_trainer():
    """SIGTERM / SIGUSR2 inside defer_interrupts reach the trainer's StopSignals as before; an ignored SIGINT stays
    ignored (nothing deferred, nothing raised)."""
    out = run("import os, signal\n"
              "from vmim.engine.preemption import StopSignals\n"
              "from vmim.signals import defer_interrupts\n"
              "with StopSignals() as stop, defer_interrupts():\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    os.kill(os.getpid(), signal.SIGUSR2)\n"
              "print(stop.requested, stop.signal_name)\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "with defer_interrupts():\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN)\n")
    assert out.split() == ["requeue", "SIGUSR2", "True"]
