"""Shared test set-up and helpers.

Set-up: one intra-op thread per process. The suite runs under ``pytest -n 2`` on 2 cores; two processes each
spinning 2 OpenMP threads slow training steps by an order of magnitude, so every test process (and the
subprocesses it starts, through the environment) uses one thread.

Helpers (import them: ``from tests.conftest import make_mask, clip_batch, TINY_OVERRIDES``), shared so that test
files agree on what a mask, a clip batch and a tiny config are:

* :func:`make_mask` -- a bool ``(B, N)`` mask with the same count per sample (the batch contract);
* :func:`clip_batch` -- a uint8 ``(B, C, T, H, W)`` clip batch (T = 1: images), as the loaders ship it;
* :func:`rng` -- the ``numpy.random.Generator`` a mask generator receives;
* :data:`TINY_OVERRIDES` -- config overrides for the smallest valid model (ViT ``vit_test``, 4 px patches,
  16 px x 4 frames, a one-block decoder), and :data:`TINY_RUN_OVERRIDES` for an in-process training run;
* :data:`HOLD_AT_STEP` -- ``python -c HOLD_AT_STEP N vmim ARGS``: a CLI run that waits after step N for the test's
  signal, so a signal lands after exactly that step whatever the machine's load;
* :func:`pretrain_with_falling_loss` -- a method config, shrunk, pretrained in-process on the digit images for 40
  steps at a constant lr, its loss checked to fall.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TINY_OVERRIDES = [
    "model.backbone=vit_test", "model.patch_size=4", "model.tubelet_size=2", "model.drop_path=0",
    "targets.pixel.head.depth=1", "targets.pixel.head.dim=32", "targets.pixel.head.heads=2",
    "data.img_size=16", "data.num_frames=4", "data.datasets.digits_images.weight=1",
]
"""Smallest valid config (with ``load_config(None, TINY_OVERRIDES)``): a pixel target with a one-block decoder,
16x16 images of the built-in digits; token grid (2, 4, 4) for clips, (1, 4, 4) for images."""

TINY_RUN_OVERRIDES = TINY_OVERRIDES + [
    "data.num_workers=0", "train.precision=fp32", "log.every_steps=1", "log.progress_bar=false",
    "log.image_every_steps=0",
]
""":data:`TINY_OVERRIDES` plus what an in-process test run wants: no loader workers, fp32, a log line per step."""


HOLD_AT_STEP = """
import sys, time
from vmim.cli import main
from vmim.engine import finetune, pretrain
from vmim.engine.hooks import Hook

class HoldAt(Hook):  # after step N (logged by then: LogMetrics runs first), wait for the test's signal
    def after_step(self, trainer, batch):
        deadline = time.monotonic() + 120
        while trainer.state.step == N and trainer.stop.requested is None and time.monotonic() < deadline:
            time.sleep(0.01)

N = int(sys.argv[1])
for task in (pretrain.PretrainTask, finetune.FinetuneTask):
    task.hooks = (lambda hooks: lambda self: [*hooks(self), HoldAt()])(task.hooks)
sys.exit(main(sys.argv[2:]))
"""
"""``python -c HOLD_AT_STEP N ARGS``: ``vmim ARGS``, whose run (pretraining or fine-tuning) waits after step N until a
stop signal is recorded (or SIGKILL ends it; 120 s at most). The test's signal then lands after step N whatever the
machine's load: sent as soon as step N is logged, it used to land a few steps later when the test process was
descheduled, sometimes past the checkpoint that the test must see the run resume *before*."""


def make_mask(batch: int, n: int, n_masked: int, seed: int = 0) -> torch.Tensor:
    """Bool ``(batch, n)``, exactly ``n_masked`` True (masked) per row, a different random pattern per row."""
    if not 0 <= n_masked <= n:
        raise ValueError(f"n_masked={n_masked} must be in [0, {n}]")
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(n, generator=gen)[:n_masked]] = True
    return mask


def clip_batch(b: int = 2, t: int = 4, size: int = 16, seed: int = 0, chans: int = 3) -> torch.Tensor:
    """Random uint8 clips ``(b, chans, t, size, size)``; ``t = 1`` gives images."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, chans, t, size, size), generator=gen, dtype=torch.uint8)


def rng(seed: int) -> np.random.Generator:
    """The per-sample generator a mask generator is called with."""
    return np.random.default_rng(seed)


def pytest_collection_modifyitems(config, items):
    """Slurm tests first: they mostly wait on cluster jobs, and the longest should overlap the rest of the suite."""
    items.sort(key=lambda item: item.path.name != "test_slurm.py")  # stable: the order is otherwise kept


def pretrain_with_falling_loss(config, run_dir, *overrides: str, steps: int = 40):
    """Pretrain ``config`` shrunk to ``vit_test`` with 4 px patches on the built-in digit images (plus ``overrides``),
    in this process, for ``steps`` steps at a constant lr of 2e-2; asserts finite losses whose last 8 average under
    0.8 x the first 8. Returns the resolved config."""
    from vmim.config import load_config
    from vmim.engine.metrics import read_metrics
    from vmim.engine.pretrain import pretrain

    cfg = load_config(config, [
        f"output_dir={run_dir}", "model.backbone=vit_test", "model.patch_size=4", "data.img_size=16",
        "data.num_workers=0", "data.datasets.digits_images.weight=1", "data.batch_size=16",
        f"train.steps_per_epoch={steps}", "train.epochs=1", "train.precision=fp32", "optim.warmup_epochs=0",
        "optim.lr=2e-2", "optim.min_lr=2e-2", "log.every_steps=1", "log.progress_bar=false",
        "log.image_every_steps=0", *overrides])
    assert pretrain(cfg).step == steps
    losses = [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
    assert len(losses) == steps and all(np.isfinite(losses))
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])
    assert last < 0.8 * first, (first, last)
    return cfg
