"""Achieved TFLOP/s and model FLOPs utilisation (MFU): the device's peak, and the FLOPs of each training step.

Peak (:func:`peak_tflops`):

* A known GPU: the vendor datasheet's **dense** tensor-core figure for the run's precision (datasheets print the
  sparse one, twice as high, with an asterisk; the table halves those). An fp32 run counts at the TF32 figure when
  PyTorch lets matmuls use TF32 (``torch.backends.cuda.matmul.allow_tf32``), else at the plain FP32 one. Names are
  matched on ``torch.cuda.get_device_name`` in table order (specific variants first).
* A CPU, an unknown GPU, or a precision the table lacks (bf16 on a V100): measured at start-up by timing a square
  matmul in the run's precision (fp32 or bf16) for about 0.3 s, the best rate of the repeats (noise only slows a
  matmul down). This is the *achievable matmul peak of this machine*, not a datasheet number, so MFU on a CPU reads
  "the fraction of what one big matmul gets here". The log says which kind of peak a run uses. Measurements are
  cached per process (device, precision, threads).

**A reported MFU never passes 100 %** (:meth:`Throughput.mfu`). A measured peak is a *lower bound* of what the
machine can do: taken while other processes held the cores (a CI job, a second run), it comes out low, and MFU was
printed above 100 % ("MFU 130%" on a busy 2-core machine). Every achieved rate is a lower bound of the same
quantity, so the honest estimate of the peak is the best of all of them. Decision: when a log window achieves more
than the peak, the peak is **revised upward** before MFU is computed: the first time, the matmul is measured again
(between two windows, so neither window's time includes it; the machine may be quiet now) and the peak becomes the
larger of that and the achieved rate; later windows that beat the peak raise it to their rate. The first revision is
said once in the log (old peak, re-measured rate, new peak, why); every step line names the peak and where it came
from (``peak 0.012, measured at start-up`` / ``re-measured at step 40`` / ``best rate seen, step 90`` /
``datasheet``), and ``perf/peak_tflops`` goes to TensorBoard beside ``perf/mfu``, so a revision is visible.
Rejected: *clamping* MFU at 100 % (it hides the error and leaves every later window against a wrong peak); *not
reporting* MFU once the peak is known to be low (the number is useful once the peak is revised, and the re-measured
matmul usually is the machine's real peak); a longer or repeated start-up measurement alone (a machine busy for the
whole start-up still measures low). Each rank keeps and revises its own peak (no collective: a re-measure on one rank
only delays the others' next all-reduce); each rank's MFU is at most 1, so their logged mean is too.
A **datasheet** peak is an upper bound by construction: a window above it means the model's FLOP count is too high
or the GPU is not the table's row. It is raised to the achieved rate too (MFU stays at most 100 % and every rank logs
the same keys), with a warning that names those two causes: a bug to report, not a busy machine.

Model FLOPs per step come from :func:`vmim.models.flops.step_flops` (2 FLOPs/MAC x (3 x trained forward + frozen
forward)): the task's model counts its own step (``step_macs(batch)``), asking each of its parts (backbone, heads,
targets) for theirs, so this module knows no method, target or mask; it keeps only peaks, ratios, the cache and the
timing. :class:`Throughput` caches a step's count per batch signature (tensor shapes and the row-0 count of each bool
mask, which fixes every token count).

MFU = model FLOPs / (wall time x peak), over the whole log window: the time includes data loading, the optimizer,
logging and checkpoint saves, as in PaLM's definition (a step that waits for data is a step the accelerator idles).
``perf/data_wait`` next to it says how much of that is the loader's. With gradient accumulation the window counts
each optimizer step as ``accum_steps`` x its last micro-batch (hooks see only that one); with a random modality mix
the estimate is unbiased. The preview forward (``log.image_every_steps``) is not counted.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from ..models.flops import NoCount, step_flops

if TYPE_CHECKING:
    from .trainer import Trainer

# ----------------------------------------------------------------------------------------------------
# Peak TFLOP/s
# ----------------------------------------------------------------------------------------------------

GPU_PEAKS: list[tuple[str, dict[str, float], str]] = [
    # (regex on torch.cuda.get_device_name, dense TFLOP/s per precision, datasheet). "x/2": printed with sparsity.
    (r"H100.*NVL|H200.*NVL", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0},
     "NVIDIA H100 NVL / H200 NVL datasheet: BF16/FP16 1671/2, TF32 835/2, FP32 60"),
    (r"H100.*PCIe", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.0},
     "NVIDIA H100 PCIe datasheet: BF16/FP16 1513/2, TF32 756/2, FP32 51"),
    (r"\bH100\b", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
     "NVIDIA H100 SXM datasheet: BF16/FP16 1979/2, TF32 989/2, FP32 67"),
    (r"\bH200\b", {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
     "NVIDIA H200 SXM datasheet: BF16/FP16 1979/2, TF32 989/2, FP32 67"),
    (r"\bA100\b", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
     "NVIDIA A100 datasheet (SXM and PCIe): BF16/FP16 312, TF32 156, FP32 19.5"),
    (r"\bL40S\b", {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
     "NVIDIA L40S datasheet: BF16/FP16 733/2, TF32 366/2, FP32 91.6"),
    (r"\bL40\b", {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5},
     "NVIDIA L40 datasheet: BF16/FP16 362.1/2, TF32 181/2, FP32 90.5"),
    (r"\bL4\b", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
     "NVIDIA L4 datasheet: BF16/FP16 242/2, TF32 120/2, FP32 30.3"),
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
     "NVIDIA A10 datasheet: BF16/FP16 125, TF32 62.5, FP32 31.2"),
    (r"\bV100S\b", {"fp16": 130.0, "fp32": 16.4}, "NVIDIA V100S PCIe datasheet: tensor FP16 130, FP32 16.4"),
    (r"V100.*PCIE", {"fp16": 112.0, "fp32": 14.0}, "NVIDIA V100 PCIe datasheet: tensor FP16 112, FP32 14"),
    (r"\bV100\b", {"fp16": 125.0, "fp32": 15.7}, "NVIDIA V100 SXM2 datasheet: tensor FP16 125, FP32 15.7"),
    (r"RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
     "NVIDIA Ada GPU architecture whitepaper, RTX 4090: BF16 / FP16 with FP32 accumulate 330.4/2, TF32 165.2/2, "
     "FP32 82.6"),
    (r"RTX 3090(?! Ti)", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6},
     "NVIDIA Ampere GA102 whitepaper, RTX 3090: BF16 / FP16 with FP32 accumulate 142/2, TF32 71/2, FP32 35.6"),
]

MEASURE_SECONDS = 0.3
_MEASURED: dict[tuple, tuple[float, str]] = {}


def table_precision(device: torch.device, precision: str) -> str:
    """The table column of a run's precision: bf16, fp16, or for fp32 on CUDA tf32 when matmuls may use it."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return precision


def gpu_peak_tflops(name: str, precision: str) -> tuple[float, str] | None:
    """(dense TFLOP/s, datasheet) of the first :data:`GPU_PEAKS` row matching ``name`` that lists ``precision``
    (``bf16`` ``fp16`` ``tf32`` ``fp32``); None when no row matches or the row lacks the precision."""
    for pattern, peaks, source in GPU_PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            return (peaks[precision], source) if precision in peaks else None
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_tflops(device: torch.device, precision: str, seconds: float = MEASURE_SECONDS,
                          fresh: bool = False) -> tuple[float, str]:
    """Best TFLOP/s of an ``n x n`` matmul in ``precision`` (fp32 / tf32: float32, bf16, fp16) on ``device``, timed for
    about ``seconds``; ``n`` doubles from 256 while one product takes under 10 ms (at most 2048 on a CPU, 8192 on a
    GPU). Returns (TFLOP/s, a description: ``the best of N nxn float32 matmuls on ...``). Cached per (device,
    precision, threads); ``fresh`` measures again and returns that measurement, and the cache keeps the better of the
    two (a busy machine only lowers a measurement). Draws from its own generator: the global random state (drop path,
    resumable runs) is left as it was."""
    key = (device.type, device.index, precision, torch.get_num_threads())
    if key in _MEASURED and not fresh:
        return _MEASURED[key]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    limit = 8192 if device.type == "cuda" else 2048
    start, n = time.perf_counter(), 256
    gen = torch.Generator(device).manual_seed(0)  # the run's own random streams stay untouched
    while True:
        a = torch.randn(n, n, device=device, generator=gen).to(dtype)
        b = torch.randn(n, n, device=device, generator=gen).to(dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        if time.perf_counter() - t >= 1e-2 or n >= limit:
            break
        n *= 2
    best, reps, products = 0.0, 1, 0
    while time.perf_counter() - start < seconds or products == 0:
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        _sync(device)
        dt, products = time.perf_counter() - t, products + reps
        best = max(best, 2 * n ** 3 * reps / dt / 1e12)
        if dt < seconds / 20:
            reps *= 2
    threads = torch.get_num_threads()
    where = f"cpu with {threads} thread{'s' if threads > 1 else ''}" if device.type == "cpu" else str(device)
    name = str(dtype).removeprefix("torch.")
    measured = (best, f"the best of {products} {n}x{n} {name} matmuls on {where}")
    if key not in _MEASURED or _MEASURED[key][0] < best:
        _MEASURED[key] = measured
    return measured


def datasheet_peak(device: torch.device, precision: str) -> tuple[float, str] | None:
    """(dense TFLOP/s, source) of a GPU whose name and precision column the table lists; None for a CPU or any other
    GPU (their peak is measured)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    column = table_precision(device, precision)
    found = gpu_peak_tflops(name, column)
    return None if found is None else (found[0], f"{name}, {column} dense, {found[1]}")


def peak_tflops(device: torch.device | str, precision: str) -> tuple[float, str]:
    """Peak dense TFLOP/s of ``device`` in ``precision`` (``fp32`` ``bf16`` ``fp16``, as ``train.precision`` resolves)
    and where it comes from: a datasheet row for a known GPU, else a measured matmul (module docstring)."""
    device = torch.device(device)
    found = datasheet_peak(device, precision)
    if found is not None:
        return found
    column = table_precision(device, precision)
    value, how = measure_matmul_tflops(device, column)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return value, f"measured at start-up: {how}; {name} {column} is not in the peak table"
    return value, f"measured at start-up: {how}; the achievable matmul peak of this CPU, not a datasheet figure"


# ----------------------------------------------------------------------------------------------------
# Per-step counts for the trainer
# ----------------------------------------------------------------------------------------------------


def batch_signature(value: Any) -> Any:
    """What fixes a batch's FLOPs: tensor shapes, and the row-0 True count of every 2-D bool tensor (masks), in
    mappings and dataclasses (the typed ``Masks``) alike."""
    if isinstance(value, torch.Tensor):
        count = int(value[0].sum()) if value.dtype == torch.bool and value.ndim == 2 and len(value) else None
        return tuple(value.shape), count
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return tuple((f.name, batch_signature(getattr(value, f.name))) for f in dataclasses.fields(value))
    if isinstance(value, Mapping):
        return tuple((k, batch_signature(v)) for k, v in sorted(value.items()))
    return None


class Throughput:
    """The device's peak and the model FLOPs of each optimizer step, for :class:`~vmim.engine.hooks.LogMetrics`.

    Args:
        device, precision: the run's (``train.precision`` resolved); a CPU or unknown GPU is measured here.

    Attributes:
        peak_tflops, source: :func:`peak_tflops` at start-up; :meth:`mfu` raises the peak when a window beats it
            (module docstring) and appends the revision to ``source``.
        basis: where the current peak comes from, in a few words for the step line (``measured at start-up``,
            ``datasheet``, ``re-measured at step 40``, ``best rate seen, step 90``).
        revisions: how many times the peak was raised.
    """

    def __init__(self, device: torch.device, precision: str):
        device = torch.device(device)
        self.device, self.precision = device, precision
        self.measured = datasheet_peak(device, precision) is None
        self.peak_tflops, self.source = peak_tflops(device, precision)
        self.basis = "measured at start-up" if self.measured else "datasheet"
        self.revisions = 0
        self._cache: dict[Any, float | None] = {}
        self._warned = False

    def summary(self) -> str:
        """One log line: the peak MFU is measured against and where it comes from."""
        line = f"MFU against a peak of {self.peak_tflops:.4g} TFLOP/s {self.precision} per device: {self.source}"
        if self.measured:
            line += " (raised, and said once, if a log window achieves more: MFU never passes 100%)"
        return line

    def mfu(self, achieved: float, step: int) -> tuple[float, str | None]:
        """MFU of ``achieved`` TFLOP/s (this rank's window ending at ``step``), at most 1: a window above the peak
        first raises it (module docstring). Returns (MFU, the log line saying so on the first revision, else None)."""
        note = self._revise(achieved, step) if achieved > self.peak_tflops else None
        return achieved / self.peak_tflops, note

    def _revise(self, achieved: float, step: int) -> str | None:
        old, self.revisions = self.peak_tflops, self.revisions + 1
        if self.revisions > 1:  # said once already: raised to the best rate seen, without a line
            self.peak_tflops, self.basis = achieved, f"best rate seen, step {step}"
            self.source = f"{self.source}; raised to {achieved:.4g} TFLOP/s (achieved) at step {step}"
            return None
        if not self.measured:
            note = (f"MFU: step {step} achieved {achieved:.4g} TFLOP/s, above the datasheet peak of {old:.4g} "
                    f"({self.source}): the model's FLOP count for this step is too high or this GPU is not that "
                    f"table row (a bug to report). MFU is against the achieved rate from here on, so it stays at "
                    f"most 100%, but do not trust it")
            self.peak_tflops, self.basis = achieved, f"datasheet raised to the achieved rate at step {step}"
            self.source = f"{self.source}; raised to {achieved:.4g} TFLOP/s (achieved) at step {step}"
            return note
        again, how = measure_matmul_tflops(self.device, table_precision(self.device, self.precision), fresh=True)
        self.peak_tflops = max(again, achieved)
        if again >= achieved:
            self.basis, kept = f"re-measured at step {step}", "the re-measured matmul"
        else:
            self.basis, kept = f"best rate seen, step {step}", "the achieved rate: the machine is still busy"
        self.source = f"{self.source}; raised to {self.peak_tflops:.4g} TFLOP/s ({kept}) at step {step}"
        return (f"MFU: step {step} achieved {achieved:.4g} TFLOP/s, above the peak of {old:.4g} measured at start-up "
                f"(the machine was busy then). Re-measured: {again:.4g} TFLOP/s ({how}). Peak raised to "
                f"{self.peak_tflops:.4g} TFLOP/s ({kept}); MFU is against it from here on, and a later window that "
                f"beats it raises it again (without a line), so MFU never passes 100%")

    def step(self, trainer: "Trainer", batch: dict) -> float:
        """Model FLOPs of the optimizer step that ``batch`` completed, on this rank (0: the task gives no count)."""
        key = batch_signature(batch)
        if key not in self._cache:
            self._cache[key] = trainer.task.step_flops(trainer.raw_model, batch)
        flops = self._cache[key]
        if flops is None:
            if not self._warned:
                self._warned = True
                trainer.log.info(f"no FLOP count for {type(trainer.raw_model).__name__}: perf/tflops and perf/mfu "
                                 "are not logged")
            return 0.0
        return flops * trainer.cfg.optim.accum_steps


def task_step_flops(model: nn.Module, batch: Mapping[str, Any]) -> float | None:
    """:func:`~vmim.models.flops.step_flops`, or None when the model declares no count (no ``step_macs``)."""
    try:
        return step_flops(model, batch)
    except NoCount:
        return None


__all__ = ["GPU_PEAKS", "Throughput", "batch_signature", "datasheet_peak", "gpu_peak_tflops", "measure_matmul_tflops",
           "peak_tflops", "step_flops", "table_precision", "task_step_flops"]
