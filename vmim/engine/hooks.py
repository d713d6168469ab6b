"""Trainer hooks (detectron2's ``HookBase`` pattern): code that runs at fixed points of the loop without living in it.

The trainer calls ``before_train``, ``after_step`` (after every optimizer step, with the micro-batch that completed
it), ``after_epoch`` and ``after_train`` on each hook in order. A hook with state (a model EMA, the best validation
score) returns it from ``state_dict``; checkpoints keep it and a resumed run gives it back through
``load_state_dict`` before ``before_train``. Logging the metrics window is a hook; tasks add their
own (the pretraining preview image; validation for fine-tuning).

Throughput: :class:`LogMetrics` built with the run's device and precision adds the model FLOPs of every optimizer step
to the window (:class:`~vmim.engine.throughput.Throughput`) and logs ``perf/tflops`` (achieved TFLOP/s per device,
over the window's wall time, data loading included), ``perf/mfu`` (that over the device's peak, never above 1: a
window that beats a peak raises it first and the log says so once, see :mod:`vmim.engine.throughput`) and
``perf/peak_tflops`` (the peak it was divided by) next to clips/s; the step line ends ``MFU 41.20% (peak 0.0271,
measured at start-up)``, naming where the peak came from. One hook computes every ``perf/*`` value from the same
elapsed time, so they agree with each other exactly.

Time shares: a model may report the time a part of its forward took, per micro-batch, as ``perf/<part>_ms/<name>``
beside its losses (the pretraining method does so for each frozen teacher: ``perf/teacher_ms/<target>``). The hook
sums each part's times over names and logs ``perf/<part>_share``, the fraction of the step's wall time (at most 1),
and the log line says ``<part>s N%``. It knows no part by name.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .distributed import all_reduce_mean
from .throughput import Throughput

if TYPE_CHECKING:
    import torch

    from .trainer import Trainer


class Hook:
    def before_train(self, trainer: "Trainer") -> None:
        pass

    def after_step(self, trainer: "Trainer", batch: dict) -> None:
        pass

    def after_epoch(self, trainer: "Trainer") -> None:
        pass

    def after_train(self, trainer: "Trainer") -> None:
        pass

    def state_dict(self) -> dict | None:
        """What a checkpoint keeps of this hook (under its class name); None = nothing."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


class MetricsWindow:
    """Sums of per-step values between two log points."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.samples = 0
        self.data_time = 0.0
        self.flops = 0.0
        """Model FLOPs of this rank's optimizer steps in the window (every step, skipped ones too: they ran)."""
        self.start = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1

    def means(self) -> dict[str, float]:
        """Per-key means over the steps that reported the key (per-dataset losses appear in some steps)."""
        return {k: v / self.counts[k] for k, v in self.sums.items()}


def time_shares(values: dict[str, float], accum_steps: int, step_s: float) -> dict[str, float]:
    """part -> the share of a step's ``step_s`` seconds spent in it: the sum over names of the per-micro-batch
    ``perf/<part>_ms/<name>`` values, times ``accum_steps``, capped at 1 (module docstring); empty when no time."""
    totals: dict[str, float] = {}
    for key, value in values.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "perf" and parts[1].endswith("_ms"):
            totals[parts[1][:-3]] = totals.get(parts[1][:-3], 0.0) + value
    if step_s <= 0:
        return {}
    return {part: min(1.0, ms * accum_steps / 1000 / step_s) for part, ms in totals.items() if ms}


class LogMetrics(Hook):
    """Every ``log.every_steps``: the window's means, lr, throughput and data scalars to TensorBoard, metrics.jsonl,
    log.txt and the progress bar (averaged over ranks).

    Args:
        device, precision: the run's; given, the hook also counts model FLOPs and logs ``perf/tflops``,
            ``perf/mfu`` and ``perf/peak_tflops`` (the peak is looked up or measured here, at start-up, and raised
            when a window beats it).
    """

    def __init__(self, device: "torch.device | None" = None, precision: str = "fp32"):
        self.throughput = Throughput(device, precision) if device is not None else None

    def after_step(self, trainer: "Trainer", batch: dict) -> None:
        if self.throughput is not None:
            trainer.window.flops += self.throughput.step(trainer, batch)
        if trainer.state.step % trainer.cfg.log.every_steps:
            return
        window = trainer.window
        elapsed = time.perf_counter() - window.start
        values = window.means()
        values.update({
            "lr": max(group["lr"] for group in trainer.optimizer.param_groups),  # the unscaled lr under layer decay
            "epoch": trainer.state.epoch,
            "skipped_steps": float(trainer.state.skipped_steps),
            "perf/clips_per_s": window.samples / elapsed, "perf/data_wait": window.data_time / elapsed,
            **trainer.data.scalars(),
        })
        if window.flops:
            values["perf/tflops"] = window.flops / elapsed / 1e12
            values["perf/mfu"], note = self.throughput.mfu(values["perf/tflops"], trainer.state.step)
            values["perf/peak_tflops"] = self.throughput.peak_tflops
            if note is not None:
                (trainer.log.info if self.throughput.measured else trainer.log.warning)(note)
        shares = time_shares(values, trainer.cfg.optim.accum_steps, elapsed / window.steps if window.steps else 0)
        values.update({f"perf/{part}_share": share for part, share in shares.items()})
        values = all_reduce_mean(values, trainer.dist, trainer.device)
        trainer.metrics.scalars(trainer.state.step, values)
        if "loss" in values:
            if trainer.progress is not None:
                trainer.progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
            trainer.log.info(
                f"step {trainer.state.step}/{trainer.total_steps} epoch {trainer.state.epoch} "
                f"loss {values['loss']:.5f} "
                f"lr {values['lr']:.3e} grad {values.get('grad_norm', float('nan')):.3f} "
                f"{values['perf/clips_per_s']:.1f} clips/s data-wait {values['perf/data_wait']:.0%}"
                + "".join(f" {part}s {values[f'perf/{part}_share']:.0%}" for part in shares)
                + (f" {values['perf/tflops']:.4g} TFLOP/s MFU {values['perf/mfu']:.2%} (peak "
                   f"{values['perf/peak_tflops']:.4g}, {self.throughput.basis})" if "perf/mfu" in values else ""))
        window.reset()
