"""The pretraining loop: autocast, accumulation, clipping, NaN guard, logging, exact mid-epoch resume.

Resume is exact because every source of randomness is either derived from (seed, epoch, index) in the
data pipeline or stored in the checkpoint (model, optimizer, scaler, torch/numpy/python RNG of every
rank), the learning rate is a pure function of the step, and the sampler skips the micro-batches the
epoch had already consumed.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..config import Config, config_to_yaml
from ..data import PretrainData, build_pretrain_data
from ..models import build_pretrainer
from .checkpoint import CheckpointManager, load, rng_state, set_rng_state
from .distributed import DistInfo, all_reduce_mean, cleanup, init_distributed
from .metrics import MetricsLogger, setup_text_log
from .optim import build_optimizer, cosine_lr, scaled_lr, set_lr
from .preemption import StopSignals


class NonFiniteLossError(RuntimeError):
    """Raised after ``train.nan_patience`` optimizer steps in a row with a non-finite loss or gradient."""


class StopRequested(RuntimeError):
    """Raised after a checkpoint was saved because SIGTERM ("stop") or SIGUSR2 ("requeue") arrived."""

    def __init__(self, request: str, signal_name: str, step: int, run_dir: Path):
        super().__init__(f"{signal_name} received: stopped after step {step} with a checkpoint in {run_dir}; the same "
                         f"command (resume=auto) continues from there")
        self.request, self.signal_name, self.step = request, signal_name, step


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (always a multiple of accum_steps)."""
    skipped_steps: int = 0
    nonfinite_in_row: int = 0


@dataclass
class Run:
    """Everything the loop needs, built once by :func:`setup`."""

    cfg: Config
    run_dir: Path
    device: torch.device
    dist: DistInfo
    model: nn.Module
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    data: PretrainData
    checkpoints: CheckpointManager
    metrics: MetricsLogger
    log: object
    state: TrainState
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    final_lr: float
    precision: str
    stop: StopSignals | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise RuntimeError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def setup(cfg: Config) -> Run:
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    info = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = setup_text_log(run_dir, info.is_main)
    if info.is_main:
        (run_dir / "config.yaml").write_text(config_to_yaml(cfg))

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    raw_model = build_pretrainer(cfg).to(device)
    torch.manual_seed(cfg.train.seed + 1000 * info.rank)  # per-rank stochastic depth
    data = build_pretrain_data(cfg, raw_model.backbone.patch_size, info.world_size, info.rank)
    accum = cfg.optim.accum_steps
    global_batch = cfg.data.batch_size * cfg.data.repeat * info.world_size * accum  # clips per optimizer step
    optimizer = build_optimizer(raw_model, cfg.optim, global_batch)
    steps_per_epoch = len(data.sampler) // accum
    if steps_per_epoch == 0:
        raise RuntimeError(f"an epoch has {len(data.sampler)} batches, fewer than optim.accum_steps={accum}")
    model = raw_model
    if info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(raw_model, device_ids=[device.index] if device.index is not None else None)
    run = Run(
        cfg=cfg, run_dir=run_dir, device=device, dist=info, model=model, raw_model=raw_model, optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "fp16"), precision=precision,
        data=data, checkpoints=CheckpointManager(run_dir, cfg.checkpoint.keep_every_steps),
        metrics=MetricsLogger(run_dir, info.is_main), log=log, state=TrainState(),
        steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * cfg.train.epochs,
        warmup_steps=round(cfg.optim.warmup_epochs * steps_per_epoch),
        peak_lr=scaled_lr(cfg.optim.lr, global_batch), final_lr=scaled_lr(cfg.optim.min_lr, global_batch),
    )
    n_params = sum(p.numel() for p in raw_model.parameters())
    log.info(f"run dir {run_dir} | device {device} x {info.world_size} | {precision} | "
             f"{n_params / 1e6:.2f}M parameters")
    log.info(f"global batch {global_batch} (= {cfg.data.batch_size} x {cfg.data.repeat} repeat x {info.world_size} "
             f"ranks x {accum} accum) | "
             f"lr {run.peak_lr:.3g} (= {cfg.optim.lr:g} x {global_batch}/256) | {steps_per_epoch} steps/epoch | "
             f"{run.total_steps} steps | warm-up {run.warmup_steps} steps")
    return run


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------


def checkpoint_state(run: Run) -> dict:
    rngs = [rng_state()]
    if run.dist.world_size > 1:
        rngs = [None] * run.dist.world_size
        dist.all_gather_object(rngs, rng_state())
    return {
        "model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(), "train_state": dataclasses.asdict(run.state),
        "step": run.state.step, "rng": rngs, "config": config_to_yaml(run.cfg),
    }


def save(run: Run) -> None:
    state = checkpoint_state(run)  # collective: every rank takes part
    if run.dist.is_main:
        path = run.checkpoints.save(state, run.state.step)
        run.log.info(f"saved {path} (step {run.state.step}, epoch {run.state.epoch}, "
                     f"batch {run.state.batch_in_epoch})")


def restore(run: Run) -> None:
    """Continue from a checkpoint per ``cfg.resume``; 'never' refuses to overwrite an existing run."""
    resume = run.cfg.resume
    if resume == "never":
        if run.checkpoints.candidates():
            raise RuntimeError(f"{run.run_dir} already holds checkpoints; use resume=auto or another output_dir")
        return
    state = run.checkpoints.load_latest() if resume == "auto" else load(resume)
    if state is None:
        return
    run.raw_model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.state = TrainState(**state["train_state"])
    rngs = state["rng"]
    set_rng_state(rngs[run.dist.rank] if run.dist.rank < len(rngs) else rngs[0])
    if state["config"] != config_to_yaml(run.cfg):
        run.log.warning("resuming with a config that differs from the checkpoint's (see config.yaml)")
    run.log.info(f"resumed at step {run.state.step} (epoch {run.state.epoch}, batch {run.state.batch_in_epoch})")


# ----------------------------------------------------------------------------------------------------
# Loop
# ----------------------------------------------------------------------------------------------------


class _Window:
    """Accumulates metrics between two log points."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.steps = 0
        self.clips = 0
        self.data_time = 0.0
        self.start = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1
        self.steps += 1

    def means(self) -> dict[str, float]:
        """Per-key means over the steps that reported the key (per-dataset losses appear in some steps)."""
        return {k: v / self.counts[k] for k, v in self.sums.items()}


def optimizer_step(run: Run) -> tuple[float, bool]:
    """Unscale, clip, step (unless non-finite). Returns (grad norm, whether the update was applied)."""
    params = [p for p in run.raw_model.parameters() if p.grad is not None]
    run.scaler.unscale_(run.optimizer)
    max_norm = run.cfg.optim.clip_grad or float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    finite = math.isfinite(grad_norm)
    if run.scaler.is_enabled():
        run.scaler.step(run.optimizer)  # skips the update itself on inf/NaN gradients
        run.scaler.update()
    elif finite:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm, finite


def train_one_epoch(run: Run, progress: tqdm) -> str | None:
    """Train until the epoch ends or a stop is requested; returns the request ("stop", "requeue") or None."""
    cfg, state, accum = run.cfg, run.state, run.cfg.optim.accum_steps
    run.data.sampler.set_epoch(state.epoch, state.batch_in_epoch)
    window, step_losses = _Window(), {}
    fetch_start = time.perf_counter()
    for batch in run.data.loader:
        window.data_time += time.perf_counter() - fetch_start
        run.data.monitor.update(batch["bad"])  # logs new bad files; raises past data.max_bad_fraction
        source = run.data.names[int(batch["dataset"][0])]  # batches are homogeneous in dataset
        clip = batch["clip"].to(run.device, non_blocking=True)
        mask = batch["masks"]["encoder"].to(run.device, non_blocking=True)
        sync = (state.batch_in_epoch + 1) % accum == 0
        with run.model.no_sync() if (run.dist.world_size > 1 and not sync) else nullcontext():
            with autocast(run.device, run.precision):
                losses = run.model(clip, mask)
            run.scaler.scale(losses["loss"] / accum).backward()
        losses[f"loss_by_dataset/{source}"] = losses["loss"]
        for k, v in losses.items():  # stays on the device: one transfer per optimizer step, below
            step_losses[k] = step_losses.get(k, 0.0) + v.detach() / accum
        state.batch_in_epoch += 1
        window.clips += clip.shape[0] * run.dist.world_size
        if not sync:
            fetch_start = time.perf_counter()
            continue

        step_losses = dict(zip(step_losses, torch.stack(list(step_losses.values())).tolist()))
        set_lr(run.optimizer, cosine_lr(state.step, run.total_steps, run.warmup_steps, run.peak_lr, run.final_lr))
        grad_norm, applied = optimizer_step(run)
        finite = applied and math.isfinite(step_losses["loss"])
        state.nonfinite_in_row = 0 if finite else state.nonfinite_in_row + 1
        state.skipped_steps += 0 if finite else 1
        if state.nonfinite_in_row >= cfg.train.nan_patience:
            raise NonFiniteLossError(
                f"{state.nonfinite_in_row} steps in a row with a non-finite loss or gradient (last loss "
                f"{step_losses['loss']}, grad norm {grad_norm}) at step {state.step}; existing checkpoints are "
                f"untouched. Lower optim.lr, set optim.clip_grad, or use train.precision=bf16.")
        state.step += 1
        progress.update(1)
        if finite:
            window.add({**step_losses, "grad_norm": grad_norm})
        step_losses = {}
        if state.step % cfg.log.every_steps == 0:
            log_window(run, window, progress)
        if cfg.log.image_every_steps and state.step % cfg.log.image_every_steps == 0 and run.dist.is_main:
            log_preview(run, batch)
        mid_epoch = state.batch_in_epoch < len(run.data.sampler)  # the epoch end saves anyway
        if state.step % cfg.checkpoint.every_steps == 0 and mid_epoch and state.nonfinite_in_row == 0:
            save(run)  # never during a non-finite streak: the last good checkpoint stays the newest
        if run.stop is not None and (request := run.stop.agreed(run.dist, run.device)):
            return request  # every rank stops after this same step
        fetch_start = time.perf_counter()
    return None


def log_window(run: Run, window: _Window, progress: tqdm) -> None:
    elapsed = time.perf_counter() - window.start
    values = window.means()
    values.update({
        "lr": run.optimizer.param_groups[0]["lr"], "epoch": run.state.epoch,
        "skipped_steps": float(run.state.skipped_steps),
        "perf/clips_per_s": window.clips / elapsed, "perf/data_wait": window.data_time / elapsed,
        **run.data.monitor.scalars(),
    })
    values = all_reduce_mean(values, run.dist, run.device)
    run.metrics.scalars(run.state.step, values)
    if "loss" in values:
        progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
        run.log.info(f"step {run.state.step}/{run.total_steps} epoch {run.state.epoch} loss {values['loss']:.5f} "
                     f"lr {values['lr']:.3e} grad {values.get('grad_norm', float('nan')):.3f} "
                     f"{values['perf/clips_per_s']:.1f} clips/s data-wait {values['perf/data_wait']:.0%}")
    window.reset()


def log_preview(run: Run, batch: dict) -> None:
    run.raw_model.eval()
    with autocast(run.device, run.precision):
        grid = run.raw_model.preview(batch["clip"].to(run.device), batch["masks"]["encoder"].to(run.device))
    run.raw_model.train()
    if grid is not None:
        run.metrics.image("reconstruction", run.state.step, grid)


def pretrain(cfg: Config) -> TrainState:
    """Run (or continue) a pretraining run; returns the final state."""
    run = setup(cfg)
    try:
        with StopSignals() as run.stop:  # SIGTERM / SIGUSR2: checkpoint at the next step, then stop
            restore(run)
            run.metrics.text("config", run.state.step, "```\n" + config_to_yaml(cfg) + "\n```")
            run.model.train()
            disable = None if cfg.log.progress_bar and run.dist.is_main else True
            with tqdm(total=run.total_steps, initial=run.state.step, disable=disable, desc="pretrain",
                      dynamic_ncols=True) as progress:
                while run.state.epoch < cfg.train.epochs:
                    request = train_one_epoch(run, progress)
                    if run.state.batch_in_epoch >= len(run.data.sampler):
                        run.state.epoch += 1
                        run.state.batch_in_epoch = 0
                    save(run)  # at the epoch end, or mid-epoch where a stop was requested
                    if request:
                        run.log.warning(f"{run.stop.signal_name or 'a signal'} on some rank: stopping after step "
                                        f"{run.state.step} ({request})")
                        raise StopRequested(request, run.stop.signal_name or "a stop signal", run.state.step,
                                            run.run_dir)
            run.log.info(f"done: {run.state.step} steps, {run.state.skipped_steps} skipped")
            return run.state
    finally:
        run.metrics.close()
        cleanup()
