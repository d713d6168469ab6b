"""metrics.jsonl and TensorBoard logs: readers count only complete lines; a resume cuts the logs back to its step.

The end-to-end proof (a SIGKILL'd run resumed from its checkpoint) is in test_pretrain_e2e.py; these tests drive
MetricsLogger on real files and read TensorBoard back with tensorboard's own EventAccumulator.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from vmim.engine.metrics import MetricsLogger, read_metrics, setup_text_log


def tensorboard_scalars(run_dir: Path, tag: str = "loss") -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def log_steps(logger: MetricsLogger, steps: range, offset: float) -> None:
    for step in steps:
        logger.scalars(step, {"loss": step + offset})


# ----------------------------------------------------------------------------------------------------
# Reading a file another process may still be writing
# ----------------------------------------------------------------------------------------------------


def test_reader_ignores_a_line_still_being_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first, second = json.dumps({"step": 1, "loss": 0.5}), json.dumps({"step": 2, "loss": 0.25})
    with open(path, "w") as f:
        f.write(first + "\n" + second[:9])  # the writer is half-way through line 2
        f.flush()
        assert read_metrics(path) == [{"step": 1, "loss": 0.5}]
        f.write(second[9:])
        f.flush()
        assert read_metrics(path) == [{"step": 1, "loss": 0.5}], "a line without its newline is not complete"
        f.write("\n")
        f.flush()
        assert read_metrics(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]


def test_reader_missing_empty_and_corrupt_files(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == []
    path.write_text("")
    assert read_metrics(path) == []
    path.write_text('{"step": 1}\n{"step": 2, "lo{"step": 3}\n{"step": 4}\n')  # a torn line appended to
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2: not a metrics record"):
        read_metrics(path)
    assert [r["step"] for r in read_metrics(path, strict=False)] == [1, 4]


# ----------------------------------------------------------------------------------------------------
# Resume: one uninterrupted history
# ----------------------------------------------------------------------------------------------------


def test_resume_cuts_metrics_and_tensorboard_back_to_the_checkpoint_step(tmp_path):
    first = MetricsLogger(tmp_path, enabled=True)
    first.resume_at(0)
    log_steps(first, range(1, 8), offset=0.0)  # steps 1-7 logged; the checkpoint was at step 4
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # SIGKILL in the middle of a line
    time.sleep(1.1)  # event file names carry whole seconds: the resumed attempt's file sorts after this one

    second = MetricsLogger(tmp_path, enabled=True, resume_step=4)
    log_steps(second, range(5, 11), offset=100.0)  # the resumed attempt re-runs 5-7 and goes on
    second.close()

    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 11))
    assert [r["loss"] for r in records] == [1, 2, 3, 4, 105, 106, 107, 108, 109, 110]
    assert tensorboard_scalars(tmp_path) == [(s, float(s)) for s in range(1, 5)] + \
        [(s, s + 100.0) for s in range(5, 11)]


def test_fresh_start_forgets_an_attempt_that_left_no_checkpoint(tmp_path):
    first = MetricsLogger(tmp_path, enabled=True)
    log_steps(first, range(1, 4), offset=0.0)
    first.close()
    time.sleep(1.1)
    second = MetricsLogger(tmp_path, enabled=True)
    second.resume_at(0)
    log_steps(second, range(1, 3), offset=10.0)
    second.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 11.0), (2, 12.0)]
    assert tensorboard_scalars(tmp_path) == [(1, 11.0), (2, 12.0)]


def test_resume_marks_the_text_log_and_disabled_ranks_write_nothing(tmp_path):
    setup_text_log(tmp_path, enabled=True)
    first = MetricsLogger(tmp_path, enabled=True)
    log_steps(first, range(1, 4), offset=0.0)
    first.close()
    MetricsLogger(tmp_path, enabled=True, resume_step=2).close()
    for handler in logging.getLogger("vmim").handlers:
        handler.flush()
    log = (tmp_path / "log.txt").read_text()
    assert log.count("---- logs continue after step 2:") == 1, log
    assert "1 metrics.jsonl record(s) after it dropped" in log
    for handler in list(logging.getLogger("vmim").handlers):  # leave no handler on this test's log.txt
        logging.getLogger("vmim").removeHandler(handler)
        handler.close()

    other_rank = tmp_path / "rank1"
    other_rank.mkdir()
    silent = MetricsLogger(other_rank, enabled=False, resume_step=2)
    log_steps(silent, range(3, 5), offset=0.0)
    silent.close()
    assert list(other_rank.iterdir()) == []
