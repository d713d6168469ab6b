"""The run sections every task shares (data, optim, train, log, checkpoint), their base :class:`RunConfig`, the
token-grid helpers and the checks of what every task has (:func:`validate_common`). Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from .checks import _check, _check_seed, _choice
from .entries import fill_kinded_defaults

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PARALLELS = ("ddp", "fsdp")
OPTIM_IMPLS = ("fused", "foreach", "for_loop")
DEVICES = ("auto", "cpu", "cuda")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ResolutionStage:
    """From ``epoch`` on, clips are resized to ``img_size`` (progressive resolution: FastMIM-P)."""

    epoch: int = 0
    img_size: int = 224


@dataclass
class DataConfig:
    datasets: Dict[str, Any] = field(default_factory=dict)
    """name -> a dataset entry (its kind: digits_images, digits_clips, video, image)."""
    img_size: int = 224
    """Side of the square crop fed to the model (with img_size_schedule: the largest stage's, which sources crop at
    and the model's tables are built for)."""
    img_size_schedule: List[ResolutionStage] = field(default_factory=list)
    """Progressive resolution (FastMIM-P): ``[{epoch: 0, img_size: 128}, {epoch: 200, img_size: 160}, ...]``, from
    epoch 0, epochs increasing; each stage's clips are cropped at img_size and resized to its own (antialiased
    bilinear) in the loader, so every batch of an epoch has that epoch's size. Empty: img_size throughout."""
    num_frames: int = 16
    """Frames per video clip; images are one frame."""
    batch_size: int = 32
    """Sampled videos/images per device per micro-batch. Global batch = batch_size x repeat x world size x
    accum_steps clips; the learning rate scales with it."""
    repeat: int = 1
    """Repeated sampling: decode each sample once and return this many independently cropped and masked clips
    (VideoMAE V2 num_sample, OmniMAE Replicate); cuts decode cost per clip."""
    num_workers: int = 4
    pin_memory: bool = True
    max_bad_fraction: float = 0.01
    """Stop when a dataset's missing + undecodable files exceed this fraction of its list."""
    decode_timeout_s: float = 60.0
    """Give up on one sample after this long (counted as a bad file); 0 disables the limit."""
    decode_isolation: bool = True
    """Decode files in a child process of each loader worker, killed and replaced when it passes the timeout or
    crashes: catches decoders stuck inside C and segfaults. False: a SIGALRM limit in the worker itself, which
    interrupts Python code and blocking reads only."""
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class OptimConfig:
    lr: float = 1.5e-4
    """Peak learning rate per 256 samples; the run uses lr x global_batch / 256."""
    min_lr: float = 1e-5
    """Final learning rate per 256 samples, scaled like lr."""
    warmup_epochs: float = 40.0
    weight_decay: float = 0.05
    """Decoupled weight decay; never applied to norms, biases, or what a module lists in no_weight_decay()."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: float = 0.0
    """Max global gradient norm; 0 disables clipping (the norm is still logged)."""
    accum_steps: int = 1
    """Micro-batches per optimizer step."""
    layer_decay: float = 1.0
    """Layer-wise lr decay (MAE / VideoMAE fine-tuning: 0.65-0.75): block i of L gets lr x decay^(L - i), the stem
    decay^(L + 1), what follows the blocks (norms, head) the full lr. 1 = off."""
    head_lr_scale: float = 1.0
    """Multiplies the lr of what follows the backbone's blocks (final norm / fc_norm, pooling, the classification
    head; in pretraining the decoders and target heads), on top of layer_decay. Small labelled sets: 10 lets a fresh
    head become useful within the first epochs, before the backbone drifts on its near-zero signal (docs/small-data.md).
    1 = off."""
    impl: str = "fused"
    """AdamW's kernels: fused (one kernel for every parameter, CPU and CUDA: ~10x faster than for_loop on a ViT-B's
    ~100M parameters on CPU), foreach (one kernel per op over all parameters) or for_loop (torch's per-parameter
    loop, the reference repos' default on CPU). Where fused is unsupported (e.g. a device without the kernel) the run
    falls back to foreach and says so."""


@dataclass
class TrainConfig:
    epochs: int = 800
    steps_per_epoch: int = 0
    """Optimizer steps per epoch; 0 = one pass over the weighted data mix."""
    seed: int = 0
    precision: str = "auto"
    """auto, fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only). auto is bf16 on CUDA GPUs with bf16
    and on CPUs with AVX512-BF16 or AMX, fp32 elsewhere (AVX2-only CPUs emulate bf16, far slower); the log says
    which and why (vmim/engine/precision.py)."""
    device: str = "auto"
    compile: bool = False
    """``torch.compile`` every transformer block in place (vmim/engine/compile.py): the first steps pay the compile
    time; measure with tools/bench_pretrain.py --compile before a long run."""
    parallel: str = "ddp"
    """How several processes split the work: ddp (every rank holds the whole model, gradients all-reduced) or fsdp
    (FSDP2 ``fully_shard`` per transformer block, then the root: parameters, gradients and optimizer state sharded
    over the ranks, for ViT-L/H/g; checkpoints become folders, ``vmim.engine.fsdp``). One process runs unsharded
    either way. Pretraining only; fp32 or bf16 (fp16's loss scaling is not shard-aware here)."""
    nan_patience: int = 20
    """Stop after this many optimizer steps in a row with a non-finite loss or gradient."""


@dataclass
class LogConfig:
    every_steps: int = 20
    """Scalars to TensorBoard, metrics.jsonl and log.txt every N optimizer steps."""
    image_every_steps: int = 500
    """Input / masked / reconstruction grid every N steps (pixel targets); 0 = never."""
    progress_bar: bool = True


@dataclass
class CheckpointConfig:
    every_steps: int = 500
    """Overwrite checkpoints/last.pt every N optimizer steps (and at every epoch end)."""
    keep_every_steps: int = 0
    """Also keep checkpoints/step_XXXXXXXX.pt every N steps; 0 = keep only last.pt."""


@dataclass
class RunConfig:
    """What every task's config has: the task, where it writes, how it resumes, the backbone and the run sections.
    A task's schema subclasses it, adding its own sections and overriding defaults."""

    KINDED = {"model": "backbones"}
    """Top-level keys holding one kinded entry -> family."""
    MAPPINGS = {"data.datasets": "datasets"}
    """Dotted keys holding named kinded entries -> family."""

    task: str = ""
    """Which schema the file follows: pretrain, or finetune (fine-tuning, eval, probe)."""
    output_dir: str = "runs/default"
    resume: str = "auto"
    """auto: continue from output_dir's newest complete checkpoint if any; never; or a checkpoint path."""
    model: Any = None
    """The backbone: ``backbone`` names it and picks its keys (ViTConfig for vit_*, MViTConfig for mvitv2_*)."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:  # programmatic construction: each kinded section at its family's default
        fill_kinded_defaults(self)


def video_grid(cfg: Any) -> tuple[int, int, int]:
    """Token grid of a training clip (data.num_frames x data.img_size², the backbone's patch)."""
    m, d = cfg.model, cfg.data
    return d.num_frames // m.tubelet_size, d.img_size // m.patch_size, d.img_size // m.patch_size


def _check_img_size_schedule(cfg: Any) -> None:
    d, patch = cfg.data, getattr(cfg.model, "patch_size", None)
    for i, stage in enumerate(d.img_size_schedule):
        key = f"data.img_size_schedule[{i}]"
        _check(stage.epoch == 0 if i == 0 else stage.epoch > d.img_size_schedule[i - 1].epoch, f"{key}.epoch",
               f"{stage.epoch}: the first stage starts at epoch 0 and each later one after the one before")
        _check(0 < stage.img_size <= d.img_size, f"{key}.img_size",
               f"{stage.img_size} must be in 1..data.img_size={d.img_size} (sources crop at data.img_size, then "
               f"resize to the stage's)")
        _check(patch is None or stage.img_size % patch == 0, f"{key}.img_size",
               f"{stage.img_size} is not a multiple of model.patch_size={patch}")


def stage_grids(cfg: Any) -> list[tuple[int, int, int]]:
    """The training clip's token grid at data.img_size and at every img_size_schedule stage's size."""
    t, h, _ = video_grid(cfg)
    sizes = [cfg.data.img_size] + [s.img_size for s in cfg.data.img_size_schedule]
    return [(t, h * size // cfg.data.img_size, h * size // cfg.data.img_size) for size in sizes]


def validate_common(cfg: Any) -> None:
    """Checks of what every task's config has: model, data, optim, train, log, checkpoint, resume."""
    d = cfg.data
    _check(len(d.datasets) > 0, "data.datasets", "at least one dataset is required")
    _check_img_size_schedule(cfg)
    for name, ds in d.datasets.items():
        ds.check(f"data.datasets.{name}", cfg)
    _check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", f"{d.max_bad_fraction} is outside [0, 1]")
    _check(d.decode_timeout_s >= 0, "data.decode_timeout_s", f"{d.decode_timeout_s} must be >= 0")
    _check(d.batch_size > 0, "data.batch_size", f"{d.batch_size} must be positive")
    _check(d.repeat >= 1, "data.repeat", f"{d.repeat} must be >= 1")
    _check(d.num_workers >= 0, "data.num_workers", f"{d.num_workers} must be >= 0")
    in_chans = cfg.model.in_chans
    _check(len(d.mean) == in_chans, "data.mean", f"needs {in_chans} values (model.in_chans)")
    _check(len(d.std) == in_chans and all(s > 0 for s in d.std), "data.std",
           f"needs {in_chans} positive values (model.in_chans)")

    o = cfg.optim
    _check(o.lr > 0, "optim.lr", f"{o.lr} must be positive")
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", f"{o.min_lr} must be in [0, optim.lr]")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"{o.weight_decay} must be >= 0")
    _check(o.eps > 0, "optim.eps", f"{o.eps} must be positive")
    _check(o.warmup_epochs >= 0, "optim.warmup_epochs", f"{o.warmup_epochs} must be >= 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas",
           f"{o.betas} must be 2 values in [0, 1)")
    _check(0 < o.layer_decay <= 1, "optim.layer_decay", f"{o.layer_decay} is outside (0, 1]")
    _check(o.head_lr_scale > 0, "optim.head_lr_scale", f"{o.head_lr_scale} must be positive (1 = off)")
    _check(o.clip_grad >= 0, "optim.clip_grad", f"{o.clip_grad} must be >= 0")
    _check(o.accum_steps >= 1, "optim.accum_steps", f"{o.accum_steps} must be >= 1")
    _choice("optim.impl", o.impl, OPTIM_IMPLS)

    t = cfg.train
    _check(t.epochs >= 1, "train.epochs", f"{t.epochs} must be >= 1")
    _check(t.steps_per_epoch >= 0, "train.steps_per_epoch", f"{t.steps_per_epoch} must be >= 0")
    _choice("train.precision", t.precision, PRECISIONS)
    _choice("train.parallel", t.parallel, PARALLELS)
    _check(t.parallel == "ddp" or (t.precision != "fp16" and cfg.task == "pretrain"), "train.parallel",
           f"fsdp runs pretraining in fp32 or bf16 (this is {cfg.task} with train.precision={t.precision}); use "
           "train.parallel=ddp, or train.precision=bf16")
    _choice("train.device", t.device, DEVICES)
    _check(t.precision != "fp16" or t.device != "cpu", "train.precision",
           "fp16 (with its loss scaler) runs on CUDA only; use bf16 or fp32 with train.device=cpu")
    _check_seed("train.seed", t.seed)
    _check(t.nan_patience >= 1, "train.nan_patience", f"{t.nan_patience} must be >= 1")
    _check(cfg.log.every_steps >= 1, "log.every_steps", f"{cfg.log.every_steps} must be >= 1")
    _check(cfg.log.image_every_steps >= 0, "log.image_every_steps", f"{cfg.log.image_every_steps} must be >= 0 "
           "(0 = never)")
    _check(cfg.checkpoint.every_steps >= 1, "checkpoint.every_steps", f"{cfg.checkpoint.every_steps} must be >= 1")
    _check(cfg.checkpoint.keep_every_steps >= 0, "checkpoint.keep_every_steps",
           f"{cfg.checkpoint.keep_every_steps} must be >= 0 (0 = keep only last.pt)")
    _check(bool(cfg.output_dir and cfg.output_dir.strip()), "output_dir", "must name a folder")
    _check(cfg.resume in ("auto", "never") or cfg.resume.endswith((".pt", ".pth")) or Path(cfg.resume).is_dir(),
           "resume", f"'{cfg.resume}' must be auto, never, a path to a .pt checkpoint, or a sharded checkpoint folder "
           f"(train.parallel=fsdp)")
