"""The generic training loop: autocast, accumulation, clipping, NaN guard, checkpoints, stop signals, metrics.

What is trained comes from a :class:`~vmim.engine.task.Task` (pretraining now, fine-tuning next); this module knows
neither targets nor masks nor labels. Resume is exact because every source of randomness is either derived from
(seed, epoch, index) in the data pipeline or stored in the checkpoint (model, optimizer, scaler, data-side state,
torch/numpy/python RNG of every rank), the learning rate is a pure function of the step, and the data skips the
micro-batches the epoch had already consumed.

Ending early: a hook may end training before ``train.epochs`` (:meth:`Trainer.request_finish`, e.g. fine-tuning's
early stopping). The request is honoured at the end of the epoch, after the epoch-end hooks; the reason goes into
:class:`TrainState` (``finished``) before the epoch-end checkpoint is saved, so a run that ended early and is started
again (resume=auto) restores it, says so and trains no further. The trainer knows no reason by name.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..config import Config, config_to_yaml
from ..errors import RunError
from ..preflight import check_data_paths
from .checkpoint import CheckpointManager, load, rng_state, set_rng_state
from .compile import compile_blocks
from .distributed import cleanup, init_distributed
from .fsdp import full_state, load_full, load_sharded, native_optimizer_state, shard_model, sharded_state
from .hooks import Hook, LogMetrics, MetricsWindow
from .metrics import MetricsLogger, setup_text_log
from .optim import build_optimizer, cosine_lr, scaled_lr, set_lr
from .precision import autocast, describe_precision, resolve_device
from .preemption import Interrupted, StopSignals
from .task import Task


class NonFiniteLossError(RunError):
    """Raised after ``train.nan_patience`` optimizer steps in a row with a non-finite loss or gradient."""


class StopRequested(Interrupted):
    """Raised after a checkpoint was saved because SIGTERM ("stop") or SIGUSR2 ("requeue") arrived; or, with
    ``starting``, when one arrived while the run was being built (nothing new to save)."""

    def __init__(self, request: str, signal_name: str, step: int, run_dir: Path, starting: bool = False):
        if starting:
            message = (f"{signal_name} received while the run was starting: stopped before training (any checkpoint "
                       f"in {run_dir} is as it was); the same command continues")
        else:
            message = (f"{signal_name} received: stopped after step {step} with a checkpoint in {run_dir}; the same "
                       f"command (resume=auto) continues from there")
        super().__init__(message, request, signal_name)
        self.step = step


@contextmanager
def starting(run_dir: str | Path):
    """Start-up: a stop signal stops at once (StopRequested, ``starting``): nothing is trained yet, so nothing is lost,
    and reading lists or building the model can take minutes (:mod:`vmim.engine.preemption`)."""
    try:
        with StopSignals(immediate="start-up"):
            yield
    except StopRequested:
        raise
    except Interrupted as stop:
        raise StopRequested(stop.request, stop.signal_name, 0, Path(run_dir), starting=True) from None


@dataclass
class TrainState:
    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (always a multiple of accum_steps)."""
    skipped_steps: int = 0
    nonfinite_in_row: int = 0
    finished: str = ""
    """Why training ended before ``train.epochs`` (a hook's :meth:`Trainer.request_finish`); empty while it goes on.
    Absent from checkpoints written before it existed (read as empty)."""


class Trainer:
    """Builds the run for ``task`` (device, DDP, optimizer, data, logs) and trains it with :meth:`fit`.

    Attributes a hook may read: ``cfg``, ``task``, ``state``, ``model`` (DDP-wrapped when distributed),
    ``raw_model``, ``optimizer``, ``data``, ``metrics``, ``log``, ``window``, ``progress``, ``device``, ``precision``,
    ``dist``, ``run_dir``, ``total_steps``; a hook may call :meth:`request_finish`.
    """

    def __init__(self, cfg: Config, task: Task):
        try:
            with starting(cfg.output_dir):  # a stop signal while building stops at once
                self._build(cfg, task)
        except BaseException:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """A failed or stopped start-up: end whatever was started (loader side, logs, process group)."""
        for part in ("data", "metrics"):
            if getattr(self, part, None) is not None:
                getattr(self, part).close()
        cleanup()

    def _build(self, cfg: Config, task: Task) -> None:
        check_data_paths(cfg)  # a missing list or folder stops here, naming its key, before the run folder exists
        self.cfg, self.task = cfg, task
        self.device = resolve_device(cfg.train.device)
        self.precision, precision_why = describe_precision(cfg.train.precision, self.device)
        self.dist = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.run_dir = Path(cfg.output_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = setup_text_log(self.run_dir, self.dist.is_main)
        self.log.info(f"precision {self.precision} ({precision_why})")
        if self.dist.is_main:
            (self.run_dir / "config.yaml").write_text(config_to_yaml(cfg))

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.raw_model = task.build_model().to(self.device)
        if cfg.train.compile:
            self.log.info(f"torch.compile: {compile_blocks(self.raw_model)} blocks (compiled at their first step)")
        # per-rank stochastic depth (torch) and batch-level augmentation such as timm's Mixup (numpy, python): every
        # generator the main process draws from is seeded here and saved in checkpoints, so runs repeat and resume
        torch.manual_seed(cfg.train.seed + 1000 * self.dist.rank)
        np.random.seed(cfg.train.seed + 1000 * self.dist.rank)
        random.seed(cfg.train.seed + 1000 * self.dist.rank)
        self.data = task.build_data(self.raw_model, self.dist)
        accum = cfg.optim.accum_steps
        self.global_batch = cfg.data.batch_size * cfg.data.repeat * self.dist.world_size * accum
        self.optimizer = build_optimizer(self.raw_model, cfg.optim, self.global_batch)
        self.steps_per_epoch = len(self.data) // accum
        if self.steps_per_epoch == 0:
            raise RuntimeError(f"an epoch has {len(self.data)} batches, fewer than optim.accum_steps={accum}")
        self.model: nn.Module = self.raw_model
        self.sharded = cfg.train.parallel == "fsdp" and self.dist.world_size > 1  # one process: never sharded
        if self.sharded:  # in place; the optimizer must hold the sharded (DTensor) parameters, so it is rebuilt
            self.model = self.raw_model = shard_model(self.raw_model, self.precision, self.device)
            self.optimizer = build_optimizer(self.raw_model, cfg.optim, self.global_batch)
        elif self.dist.world_size > 1:
            ids = [self.device.index] if self.device.index is not None else None
            self.model = nn.parallel.DistributedDataParallel(self.raw_model, device_ids=ids)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.checkpoints = CheckpointManager(self.run_dir, cfg.checkpoint.keep_every_steps)
        self.metrics = MetricsLogger(self.run_dir, self.dist.is_main)
        self.state = TrainState()
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.peak_lr = scaled_lr(cfg.optim.lr, self.global_batch)
        self.final_lr = scaled_lr(cfg.optim.min_lr, self.global_batch)
        self.stop: StopSignals | None = None
        self.window = MetricsWindow()
        self.progress: tqdm | None = None
        self.hooks: list[Hook] = [LogMetrics(self.device, self.precision), *task.hooks()]
        self._finish_request = ""
        self._log_setup()

    def _log_setup(self) -> None:
        cfg, n_params = self.cfg, sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad)
        self.log.info(f"{self.task.name}: run dir {self.run_dir} | device {self.device} x {self.dist.world_size} | "
                      f"{self.precision} | {n_params / 1e6:.2f}M trainable parameters")
        self.log.info(f"global batch {self.global_batch} (= {cfg.data.batch_size} x {cfg.data.repeat} repeat x "
                      f"{self.dist.world_size} ranks x {cfg.optim.accum_steps} accum) | lr {self.peak_lr:.3g} (= "
                      f"{cfg.optim.lr:g} x {self.global_batch}/256) | {self.steps_per_epoch} steps/epoch | "
                      f"{self.total_steps} steps | warm-up {self.warmup_steps} steps | AdamW {self.optimizer.impl}")
        for hook in self.hooks:
            if isinstance(hook, LogMetrics) and hook.throughput is not None:
                self.log.info(hook.throughput.summary())
        for line in self.task.summary_lines():  # what the run trains on, in the task's words
            self.log.info(line)

    def request_finish(self, reason: str) -> None:
        """End training early, for ``reason`` (one line, logged): honoured at the end of the current epoch, after the
        epoch-end hooks (a request from ``before_train`` ends the run before its first epoch); recorded in the
        epoch-end checkpoint, so a resumed run does not train on. Every rank must request it alike (from data every
        rank shares, e.g. a validation score merged over ranks)."""
        self._finish_request = self._finish_request or reason

    def _finish_if_requested(self) -> bool:
        """Move a pending :meth:`request_finish` into the state (saved next); whether training has ended early."""
        if self._finish_request and not self.state.finished:
            self.state.finished = self._finish_request
            self.log.info(f"training ends early after epoch {self.state.epoch} of {self.cfg.train.epochs} (step "
                          f"{self.state.step}): {self.state.finished}")
        return bool(self.state.finished)

    # ------------------------------------------------------------------------------------------------
    # Checkpoints
    # ------------------------------------------------------------------------------------------------

    def checkpoint_state(self) -> dict:
        """Everything needed to continue exactly (collective when distributed: every rank calls it)."""
        rngs = [rng_state()]
        if self.dist.world_size > 1:
            rngs = [None] * self.dist.world_size
            dist.all_gather_object(rngs, rng_state())
        tensors = (sharded_state(self.raw_model, self.optimizer) if self.sharded else  # this rank's shards
                   {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict()})
        return {
            **tensors, "scaler": self.scaler.state_dict(), "train_state": dataclasses.asdict(self.state),
            "data": self.data.state_dict(), "step": self.state.step, "rng": rngs, "task": self.task.name,
            "config": config_to_yaml(self.cfg),
            "hooks": {type(h).__name__: h.state_dict() for h in self.hooks if h.state_dict() is not None},
        }

    def save(self) -> None:
        """``checkpoints/last.pt`` (or, sharded, ``last/``; at the end of training also a whole ``last.pt`` that
        ``vmim convert`` / ``probe`` / ``eval`` and ``init`` read). Collective when distributed."""
        state = self.checkpoint_state()
        where = f"step {self.state.step}, epoch {self.state.epoch}, batch {self.state.batch_in_epoch}"
        if self.sharded:
            tensors = {k: state.pop(k) for k in ("model", "optimizer")}
            path = self.checkpoints.save_sharded(tensors, state, self.state.step, self.dist.is_main)
            self.log.info(f"saved {path} ({where}, sharded over {self.dist.world_size} ranks)")
            if self.state.epoch >= self.cfg.train.epochs:  # the end: one file for the single-process tools
                model_sd, optim_sd = full_state(self.raw_model, self.optimizer)
                if self.dist.is_main:
                    path = self.checkpoints.save({**state, "model": model_sd, "optimizer": optim_sd},
                                                 self.state.step, keep=False)
                    self.log.info(f"saved {path} ({where}, gathered whole)")
        elif self.dist.is_main:
            path = self.checkpoints.save(state, self.state.step)
            self.log.info(f"saved {path} ({where})")

    def restore(self) -> None:
        """Continue from a checkpoint per ``cfg.resume``; 'never' refuses to overwrite an existing run."""
        resume = self.cfg.resume
        if resume == "never":
            if self.checkpoints.candidates():
                raise RuntimeError(f"{self.run_dir} already holds checkpoints; use resume=auto or another output_dir")
            return
        state = self.checkpoints.load_latest(self.sharded) if resume == "auto" else load(resume, self.sharded)
        if state is None:
            return
        legacy = getattr(self.raw_model, "legacy_state_names", None)  # keys a method moved since (its EMA copies)
        upgrade = getattr(self.raw_model, "upgrade_state_dict", None)
        if "sharded" in state:  # a DCP folder, read in place: every rank its own shards
            load_sharded(self.raw_model, self.optimizer, state["sharded"], legacy() if legacy else None)
        elif self.sharded:  # a whole checkpoint (a ddp run's last.pt) into the sharded model
            model_sd = upgrade(state["model"]) if upgrade else state["model"]
            load_full(self.raw_model, self.optimizer, model_sd, state["optimizer"])
        else:  # a file, or a sharded folder read whole (its optimizer keyed by parameter name)
            self.raw_model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(native_optimizer_state(state["optimizer"], self.raw_model, self.optimizer))
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(**state["train_state"])
        if "data" in state:
            self.data.load_state_dict(state["data"])
        for hook in self.hooks:
            if type(hook).__name__ in state.get("hooks", {}):
                hook.load_state_dict(state["hooks"][type(hook).__name__])
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        if state["config"] != config_to_yaml(self.cfg):
            self.log.warning("resuming with a config that differs from the checkpoint's (see config.yaml)")
        self.log.info(f"resumed at step {self.state.step} (epoch {self.state.epoch}, "
                      f"batch {self.state.batch_in_epoch})")

    # ------------------------------------------------------------------------------------------------
    # Loop
    # ------------------------------------------------------------------------------------------------

    def optimizer_step(self) -> tuple[float, bool]:
        """Unscale, clip, step (unless non-finite). Returns (grad norm, whether the update was applied)."""
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.optim.clip_grad or float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        finite = math.isfinite(grad_norm)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips the update itself on inf/NaN gradients
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, finite

    def train_epoch(self) -> str | None:
        """Train until the epoch ends or a stop is requested; returns the request ("stop", "requeue") or None."""
        cfg, state, accum = self.cfg, self.state, self.cfg.optim.accum_steps
        self.data.set_epoch(state.epoch, state.batch_in_epoch)
        self.window.reset()
        step_losses: dict[str, torch.Tensor] = {}
        fetch_start = time.perf_counter()
        for batch in self.data:
            self.window.data_time += time.perf_counter() - fetch_start
            sync = (state.batch_in_epoch + 1) % accum == 0
            if self.sharded:  # FSDP2's no_sync: gradients stay unreduced until the accumulation's last micro-batch
                self.model.set_requires_gradient_sync(sync)
            ddp_accumulating = self.dist.world_size > 1 and not sync and not self.sharded
            with self.model.no_sync() if ddp_accumulating else nullcontext():
                with autocast(self.device, self.precision):
                    losses = self.task.forward(self.model, batch, self.device)
                self.scaler.scale(losses["loss"] / accum).backward()
            for k, v in losses.items():  # stays on the device: one transfer per optimizer step, below
                step_losses[k] = step_losses.get(k, 0.0) + v.detach() / accum
            state.batch_in_epoch += 1
            self.window.samples += self.task.batch_size(batch) * self.dist.world_size
            if not sync:
                fetch_start = time.perf_counter()
                continue

            values = dict(zip(step_losses, torch.stack(list(step_losses.values())).tolist()))
            step_losses = {}
            set_lr(self.optimizer, cosine_lr(state.step, self.total_steps, self.warmup_steps, self.peak_lr,
                                             self.final_lr))
            grad_norm, applied = self.optimizer_step()
            finite = applied and math.isfinite(values["loss"])
            state.nonfinite_in_row = 0 if finite else state.nonfinite_in_row + 1
            state.skipped_steps += 0 if finite else 1
            if state.nonfinite_in_row >= cfg.train.nan_patience:
                raise NonFiniteLossError(
                    f"{state.nonfinite_in_row} steps in a row with a non-finite loss or gradient (last loss "
                    f"{values['loss']}, grad norm {grad_norm}) at step {state.step}; existing checkpoints are "
                    f"untouched. Lower optim.lr, set optim.clip_grad, or use train.precision=bf16.")
            state.step += 1
            if self.progress is not None:
                self.progress.update(1)
            if finite:
                self.window.add({**values, "grad_norm": grad_norm})
            for hook in self.hooks:
                hook.after_step(self, batch)
            mid_epoch = state.batch_in_epoch < len(self.data)  # the epoch end saves anyway
            if state.step % cfg.checkpoint.every_steps == 0 and mid_epoch and state.nonfinite_in_row == 0:
                self.save()  # never during a non-finite streak: the last good checkpoint stays the newest
            if self.stop is not None and (request := self.stop.agreed(self.dist, self.device)):
                return request  # every rank stops after this same step
            fetch_start = time.perf_counter()
        return None

    def fit(self) -> TrainState:
        """Run (or continue) training to ``train.epochs``, or until a hook ends it early (:meth:`request_finish`);
        returns the final state.

        Raises:
            StopRequested: a stop signal arrived; a checkpoint was saved at that step.
            NonFiniteLossError: ``train.nan_patience`` non-finite steps in a row.
        """
        cfg = self.cfg
        with StopSignals() as self.stop:  # SIGTERM / SIGUSR2: checkpoint at the next step, then stop
            try:
                self.restore()
                self.metrics.resume_at(self.state.step)  # logs read as one run: drop what was logged past it
                self.metrics.text("config", self.state.step, "```\n" + config_to_yaml(cfg) + "\n```")
                self.model.train()
                try:
                    for hook in self.hooks:  # a validation left pending by a stop runs here (Validation)
                        hook.before_train(self)
                except Interrupted as stop:  # stopped again: the checkpoint it resumed from still says so
                    raise StopRequested(stop.request, stop.signal_name or "a stop signal", self.state.step,
                                        self.run_dir) from None
                if request := self.stop.agreed(self.dist, self.device):  # arrived while restoring
                    raise StopRequested(request, self.stop.signal_name or "a stop signal", self.state.step,
                                        self.run_dir)
                if self.state.finished:  # a run that ended early (request_finish), started again
                    self.log.info(f"training ended early at epoch {self.state.epoch} of {cfg.train.epochs} (step "
                                  f"{self.state.step}): {self.state.finished}; nothing left to train")
                elif self._finish_if_requested():  # requested in before_train (a validation left pending)
                    self.save()
                disable = None if cfg.log.progress_bar and self.dist.is_main else True
                with tqdm(total=self.total_steps, initial=self.state.step, disable=disable, desc=self.task.name,
                          dynamic_ncols=True) as self.progress:
                    while self.state.epoch < cfg.train.epochs and not self.state.finished:
                        request = self.train_epoch()
                        if self.state.batch_in_epoch >= len(self.data):
                            self.state.epoch += 1
                            self.state.batch_in_epoch = 0
                            try:
                                for hook in self.hooks:
                                    hook.after_epoch(self)
                            except Interrupted as stop:  # a validation pass, stopped: saved with it pending
                                request = stop.request
                            self._finish_if_requested()  # recorded in the epoch-end checkpoint below
                        self.save()  # at the epoch end, or mid-epoch where a stop was requested
                        if request:
                            name = self.stop.signal_name or "a stop signal"
                            self.log.warning(f"{name} on some rank: stopping after step {self.state.step} ({request})")
                            raise StopRequested(request, name, self.state.step, self.run_dir)
                for hook in self.hooks:
                    hook.after_train(self)
                self.log.info(f"done: {self.state.step} steps, {self.state.skipped_steps} skipped")
                if self.dist.world_size > 1:  # leave together: a rank tearing down its process group while another
                    dist.barrier()  # still writes the gathered last.pt aborted once ("terminate called ...", CI)
                return self.state
            finally:  # inside: a late signal (Slurm repeats its time-limit warning) while the workers shut down
                self.close()  # is recorded and dropped, never handed to the launcher's requeue handler

    def close(self) -> None:
        """Flush logs, end the data side's workers and decode children, leave the process group."""
        self.metrics.close()
        self.data.close()
        cleanup()
