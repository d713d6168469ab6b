"""Run monitoring: TensorBoard, a metrics.jsonl file, a plain log.txt, and a terminal progress bar.

Only rank 0 writes; other ranks get a :class:`MetricsLogger` whose methods do nothing.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch


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


class MetricsLogger:
    """Scalars and images to TensorBoard (``run_dir/tb``) and one JSON line per logged step."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))
            self.jsonl = open(run_dir / "metrics.jsonl", "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()

    def image(self, tag: str, step: int, image: torch.Tensor) -> None:
        """(3, H, W) float in [0, 1]."""
        if self.enabled:
            self.writer.add_image(tag, image.float().cpu(), step)

    def text(self, tag: str, step: int, text: str) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
