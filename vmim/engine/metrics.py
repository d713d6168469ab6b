"""Run monitoring: TensorBoard, a metrics.jsonl file, a plain log.txt, and a terminal progress bar.

Only rank 0 writes; other ranks get a :class:`MetricsLogger` whose methods do nothing.

Decisions:

* metrics.jsonl is append-only, one JSON object per line, each line handed to the OS in one write. A reader
  (:func:`read_metrics`) counts only newline-terminated lines: a line without its newline is still being written,
  or was torn by a kill, and is never an error. Tests and tools poll the file of a running job with it.
* A resumed run's logs read as one uninterrupted run. The checkpoint is older than the last logged step, so the
  steps after it run twice; :meth:`MetricsLogger.resume_at` forgets what the interrupted attempt logged after the
  checkpoint's step S: metrics.jsonl is rewritten (temporary file, then rename) with the records of steps <= S,
  and TensorBoard's writer opens with ``purge_step=S+1``, whose SessionLog.START makes TensorBoard (and
  EventAccumulator) drop the older events of steps > S. Event files are not rewritten: they are append-only
  records that a running TensorBoard may be reading. A fresh start (S = 0) forgets an attempt that never reached
  a checkpoint (``purge_step=0``). Event files are named by creation second, so an attempt must outlive one second
  for its successor's file (and START) to sort after its own; every real run does.
* Files open on the first write, so ``resume_at`` can still choose the cut after the logger exists (the trainer
  builds it before the checkpoint tells the step).
* log.txt keeps every attempt (it is a log); ``resume_at`` writes one ``---- logs continue after step S`` line where the
  new attempt's lines begin.

The module imports torch only inside TensorBoard's writer, so :func:`read_metrics` is cheap to import.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

METRICS_FILE = "metrics.jsonl"


def setup_text_log(run_dir: Path, enabled: bool) -> logging.Logger:
    """Logger 'vmim' writing to stderr and run_dir/log.txt (rank 0 only)."""
    logger = logging.getLogger("vmim")
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if enabled:
        handlers.append(logging.FileHandler(run_dir / "log.txt"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


# ----------------------------------------------------------------------------------------------------
# metrics.jsonl
# ----------------------------------------------------------------------------------------------------


def _complete_lines(path: Path) -> tuple[list[bytes], bool]:
    """(the newline-terminated lines of ``path``, whether a partial last line followed them); ([], False) if absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], False
    end = data.rfind(b"\n") + 1
    return data[:end].split(b"\n")[:-1], end < len(data)


def _parse(line: bytes) -> dict | None:
    """The record a line holds (a JSON object with a "step"), else None."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_metrics(path: str | os.PathLike, strict: bool = True) -> list[dict]:
    """The records of a metrics.jsonl, in file order; [] if the file does not exist.

    Only newline-terminated lines count: a last line without its newline is being written (or was torn by a kill)
    and is ignored. Blank lines are skipped. A complete line that is not a JSON object with an int ``step`` raises
    ValueError naming the file and line, or is skipped when ``strict`` is False.
    """
    lines, _ = _complete_lines(Path(path))
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            if strict:
                raise ValueError(f"{path} line {number}: not a metrics record: {line[:80]!r}")
            continue
        records.append(record)
    return records


def cut_metrics(path: str | os.PathLike, step: int) -> int:
    """Keep the records of steps <= ``step`` (and drop a torn last line or unreadable lines); returns how many
    lines went. The file is replaced atomically (temporary file, fsync, rename) and left alone if nothing goes."""
    path = Path(path)
    lines, torn = _complete_lines(path)
    kept = [line for line in lines if (record := _parse(line)) is not None and record["step"] <= step]
    dropped = sum(1 for line in lines if line.strip()) - len(kept) + torn
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(line + b"\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


# ----------------------------------------------------------------------------------------------------
# The logger
# ----------------------------------------------------------------------------------------------------


class MetricsLogger:
    """Scalars and images to TensorBoard (``run_dir/tb``) and one JSON line per logged step.

    ``resume_step`` (or a later :meth:`resume_at` before the first write) makes the logs continue a run from that
    step as one history; without it, new records are appended to whatever is there.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        self._purge_step: int | None = None
        if resume_step is not None:
            self.resume_at(resume_step)

    def resume_at(self, step: int) -> None:
        """The run goes on after ``step`` (0: a fresh start): forget what an earlier attempt logged after it."""
        if not self.enabled:
            return
        self._close_files()  # something already written reopens with the purge below
        dropped = cut_metrics(self.run_dir / METRICS_FILE, step)
        self._purge_step = step + 1 if step > 0 else 0
        if step > 0 or dropped:
            what = "logs continue after step" if step > 0 else "logs start afresh at step"
            logging.getLogger("vmim").info(
                f"---- {what} {step}: {dropped} {METRICS_FILE} record(s) after it dropped, TensorBoard hides the "
                f"earlier attempt's events after it; log lines above for later steps are from that attempt")

    def _open(self) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self._purge_step)
            self._purge_step = None  # recorded in this writer's event file
            self.jsonl = open(self.run_dir / METRICS_FILE, "ab", buffering=0)  # noqa: SIM115 (closed by close())

    def _close_files(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.jsonl.close()
            self.writer = self.jsonl = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._open()
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        line = memoryview((json.dumps({"step": step, **values}) + "\n").encode())
        while line:  # unbuffered: one write per line, so a reader sees whole lines or a torn last one
            line = line[self.jsonl.write(line):]

    def image(self, tag: str, step: int, image: torch.Tensor) -> None:
        """(3, H, W) float in [0, 1]."""
        if self.enabled:
            self._open()
            self.writer.add_image(tag, image.float().cpu(), step)

    def text(self, tag: str, step: int, text: str) -> None:
        if self.enabled:
            self._open()
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self._close_files()
