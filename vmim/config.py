"""Typed run configuration: dataclass schema, YAML files with ``_base_`` inheritance, CLI overrides.

Precedence is ``CLI overrides > experiment YAML > its _base_ files (in order) > dataclass defaults``.
Every key has a type and a default; an unknown key, a wrong type or an invalid value raises
:class:`ConfigError` naming the key (and, for a typo, the closest valid key) before any work starts.

This module deliberately imports neither torch nor the model code, so a broken config fails in well
under a second. Registered names (backbones, maskings, targets, datasets) are listed here and the
registries in the package are tested to agree with these lists.

YAML conventions:
  * ``_base_: path`` or a list of paths, relative to the file, merged before the file's own keys.
  * A mapping holding ``_replace_: true`` replaces the inherited mapping instead of merging into it
    (for example to swap the set of targets).
  * CLI overrides are ``key.sub=value``; ``~key.sub`` deletes an entry of a free-form mapping
    (``~targets.hog`` removes the inherited HOG target).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

BACKBONES = ("vit_test", "vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge")
MASKINGS = ("random", "tube", "cube")
TARGETS = ("pixel", "hog")
PIXEL_NORMS = ("per_channel", "joint", "none")
TOKEN_SETS = ("masked", "visible")
DATASETS = ("digits_images", "digits_clips", "video", "image")
INDEX_FORMATS = ("space", "csv", "kinetics_csv", "ssv2", "ucf101", "hmdb51", "image_folder")
DECODERS = ("decord", "pyav", "auto")
CROPS = ("multi_scale", "random_resized")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ConfigError(ValueError):
    """A config problem, reported with the dotted key it concerns."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


# ----------------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    backbone: str = "vit_base"
    """Registered backbone name, one of BACKBONES."""
    patch_size: int = 16
    """Spatial patch size in pixels; must divide data.img_size."""
    tubelet_size: int = 2
    """Frames per token; must divide data.num_frames. Images are repeated to this many frames."""
    in_chans: int = 3
    drop_path: float = 0.0
    """Stochastic depth rate at the last block (linearly increasing from 0)."""
    grad_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (saves memory, costs ~30% time)."""


@dataclass
class MaskingConfig:
    name: str = "tube"
    """One of MASKINGS: random (MAE), tube (VideoMAE), cube (MaskFeat/BEiT space-time blocks)."""
    ratio_video: float = 0.9
    """Fraction of tokens masked in clips with more than one token in time."""
    ratio_image: float = 0.75
    """Fraction of tokens masked in images (and clips with one token in time)."""
    unit_size: List[int] = field(default_factory=lambda: [1, 1, 1])
    """cube only: mask unit in tokens (t, h, w); MaskFeat uses [1, 2, 2] (32x32 px x 2 frames)."""
    block_min_area: float = 0.2
    """cube only: smallest block area as a fraction of a frame's mask units (MaskFeat: 9 of 49)."""
    block_aspect: float = 0.3
    """cube only: block aspect ratios are log-uniform in [block_aspect, 1 / block_aspect]."""


@dataclass
class TargetConfig:
    kind: str = ""
    """One of TARGETS; empty means the entry's key (``targets.hog`` is a HOG target)."""
    weight: float = 1.0
    """Weight of this target's loss in the total loss."""
    token_set: str = "masked"
    """Tokens the loss is taken over: masked (MAE, MaskFeat) or visible (MR-MAE feature mimicking)."""
    norm: str = "per_channel"
    """pixel only: per_channel (VideoMAE, OmniMAE; eps on the std), joint (MAE, MaskFeat; eps in the
    variance) or none."""
    nbins: int = 9
    """hog only: orientation bins over 0..pi."""
    cell_size: int = 8
    """hog only: cell size in pixels; must divide model.patch_size."""
    decoder_depth: int = 4
    """Transformer blocks in this target's decoder; 0 makes it a linear head (after mask tokens)."""
    decoder_dim: int = 384
    decoder_heads: int = 6


@dataclass
class DatasetConfig:
    kind: str = ""
    """One of DATASETS (digits_images, digits_clips, video, image); empty means the entry's key."""
    weight: float = 1.0
    """Passes over this dataset per epoch (a repeat factor; 0.5 = half of it each epoch)."""
    split: str = "train"
    """Built-in datasets: train or test."""
    format: str = "space"
    """video / image: index format, one of INDEX_FORMATS ('path label' lines, CSV, Kinetics CSV, SSv2 JSON,
    UCF101 / HMDB51 split files, an ImageFolder tree)."""
    path: str = ""
    """video / image: the list or annotation file (the class-folder root for image_folder)."""
    root: str = ""
    """Folder that relative paths in the list point into; empty = the list file's folder."""
    labels: str = ""
    """ssv2: the labels JSON; ucf101: classInd.txt."""
    missing: str = "error"
    """Listed files that do not exist at start-up: error (stop, listing the first 10) or drop (report, go on)."""
    decoder: str = "decord"
    """decord, pyav, or auto (decord, falling back to PyAV for what decord cannot read, e.g. AV1)."""
    stride: int = 4
    """Source frames between sampled frames (K400: 4, SSv2: 2)."""
    target_fps: float = 0.0
    """Resample to this frame rate before striding; 0 keeps each video's own rate."""
    sampling: str = "window"
    """window: num_frames frames ``stride`` apart at a random start (VideoMAE, MaskFeat); segments: one random
    frame in each of num_frames equal segments of the whole video (TSN / SSv2 fine-tuning style)."""
    overflow: str = "loop"
    """A window longer than the video: loop it, or pad with the last frame."""
    crop: str = ""
    """multi_scale (VideoMAE) or random_resized (MaskFeat, images); empty = multi_scale for video,
    random_resized for images."""
    crop_scale: List[float] = field(default_factory=lambda: [0.2, 1.0])
    """random_resized only: range of the crop's area as a fraction of the frame (MAE / FastMIM: [0.2, 1])."""
    flip: Optional[bool] = None
    """Random horizontal flip; None = on for images, off for video (never flip SSv2: labels have a direction)."""


@dataclass
class DataConfig:
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
    img_size: int = 224
    """Side of the square crop fed to the model."""
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
    """Decoupled weight decay; never applied to norms, biases, position or mask tokens."""
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad: float = 0.0
    """Max global gradient norm; 0 disables clipping (the norm is still logged)."""
    accum_steps: int = 1
    """Micro-batches per optimizer step."""


@dataclass
class TrainConfig:
    epochs: int = 800
    steps_per_epoch: int = 0
    """Optimizer steps per epoch; 0 = one pass over the weighted data mix."""
    seed: int = 0
    precision: str = "auto"
    """auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 (autocast) or fp16 (autocast + GradScaler, CUDA only).
    bf16 on CPU pays off only with AVX512-BF16/AMX; on AVX2-only CPUs its matmuls are ~70x slower."""
    device: str = "auto"
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
class Config:
    output_dir: str = "runs/default"
    resume: str = "auto"
    """auto: continue from output_dir's newest complete checkpoint if any; never; or a checkpoint path."""
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    targets: Dict[str, TargetConfig] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: List[str] | None = None) -> Config:
    """Load, merge and validate a config; raises ConfigError on any problem."""
    raw = _load_yaml_tree(Path(path)) if path is not None else {}
    sets, deletes = _split_overrides(overrides or [])
    for key in deletes:
        _delete_key(raw, key)
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    for free_form in (schema.targets, schema.data.datasets):  # user-named entries; each entry stays strict
        OmegaConf.set_struct(free_form, False)
    merged = _merge_checked(schema, raw, schema)
    if sets:
        merged = _merge_checked(merged, OmegaConf.from_dotlist(sets), schema)
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    _fill_kinds(cfg)
    validate(cfg)
    return cfg


def load_dataclass(schema_cls: type, path: str | Path | None, overrides: List[str]) -> Any:
    """Any strict dataclass config (e.g. a cluster profile) from YAML (``_base_`` allowed) plus key=value overrides."""
    raw = _load_yaml_tree(Path(path)) if path is not None else {}
    schema = OmegaConf.structured(schema_cls)
    OmegaConf.set_struct(schema, True)
    merged = _merge_checked(schema, raw, schema)
    if overrides:
        merged = _merge_checked(merged, OmegaConf.from_dotlist(overrides), schema)
    return OmegaConf.to_object(merged)


def config_to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _load_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError("_base_" if seen else "--config", f"file not found: {path}")
    if path in seen:
        raise ConfigError("_base_", f"inheritance cycle through {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping at the top level")
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, _load_yaml_tree(path.parent / base, seen + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and "_replace_" in value:
            replace = value["_replace_"]
            value = {k: v for k, v in value.items() if k != "_replace_"}
            out[key] = value if replace else _deep_merge(out.get(key) or {}, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _split_overrides(overrides: List[str]) -> tuple[List[str], List[str]]:
    sets, deletes = [], []
    for item in overrides:
        if item.startswith("~"):
            deletes.append(item[1:])
        elif "=" in item:
            sets.append(item)
        else:
            raise ConfigError(item, "overrides are written key.sub=value (or ~key.sub to delete)")
    return sets, deletes


def _delete_key(raw: dict, dotted: str) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            break
    if not isinstance(node, dict) or last not in node:
        raise ConfigError(dotted, "cannot delete: no such entry in the config files")
    del node[last]


def _merge_checked(base: DictConfig, new: Any, schema: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(base, new)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        raise ConfigError(key, f"unknown key{_suggest_key(schema, key)}") from None
    except ValidationError as err:
        raise ConfigError(err.full_key or "?", f"invalid value: {err.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(getattr(err, "full_key", None) or "?", str(err).splitlines()[0]) from None


def _suggest_key(schema: DictConfig, full_key: str) -> str:
    """' (did you mean 'model.patch_size'?)' for a misspelled key, else ''."""
    parts = full_key.split(".")
    node: Any = schema
    for part in parts[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        elif isinstance(node, DictConfig) and node._metadata.element_type not in (Any, None):
            node = OmegaConf.structured(node._metadata.element_type)  # free-form mapping of dataclasses
        else:
            return ""
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(parts[-1], [str(k) for k in node.keys()], n=1, cutoff=0.5)
    return f" (did you mean '{'.'.join(parts[:-1] + close)}'?)" if close else ""


def _fill_kinds(cfg: Config) -> None:
    for name, target in cfg.targets.items():
        target.kind = target.kind or name
    for name, dataset in cfg.data.datasets.items():
        dataset.kind = dataset.kind or name


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(key, f"'{value}' is not one of {', '.join(options)}{hint}")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


def validate(cfg: Config) -> None:
    """Semantic checks that types alone cannot express. Raises ConfigError naming the key."""
    m, d = cfg.model, cfg.data
    _choice("model.backbone", m.backbone, BACKBONES)
    _check(m.patch_size > 0 and d.img_size % m.patch_size == 0, "model.patch_size",
           f"{m.patch_size} does not divide data.img_size={d.img_size}")
    _check(m.tubelet_size > 0 and d.num_frames % m.tubelet_size == 0, "model.tubelet_size",
           f"{m.tubelet_size} does not divide data.num_frames={d.num_frames}")
    _check(0.0 <= m.drop_path < 1.0, "model.drop_path", f"{m.drop_path} is outside [0, 1)")

    k = cfg.masking
    _choice("masking.name", k.name, MASKINGS)
    for key in ("ratio_video", "ratio_image"):
        ratio = getattr(k, key)
        _check(0.0 < ratio < 1.0, f"masking.{key}", f"{ratio} is outside (0, 1)")
    _check(len(k.unit_size) == 3 and all(u > 0 for u in k.unit_size), "masking.unit_size",
           f"{k.unit_size} must be three positive ints (t, h, w)")
    grid = (d.num_frames // m.tubelet_size, d.img_size // m.patch_size, d.img_size // m.patch_size)
    _check(all(g % u == 0 for g, u in zip(grid, k.unit_size)), "masking.unit_size",
           f"{k.unit_size} does not tile the video token grid {list(grid)}")
    _check(0.0 < k.block_min_area <= 1.0, "masking.block_min_area", f"{k.block_min_area} is outside (0, 1]")
    _check(0.0 < k.block_aspect <= 1.0, "masking.block_aspect", f"{k.block_aspect} is outside (0, 1]")

    _check(len(cfg.targets) > 0, "targets", "at least one target is required (e.g. targets.pixel.weight=1)")
    for name, t in cfg.targets.items():
        key = f"targets.{name}"
        _choice(f"{key}.kind", t.kind, TARGETS)
        _choice(f"{key}.token_set", t.token_set, TOKEN_SETS)
        _choice(f"{key}.norm", t.norm, PIXEL_NORMS)
        _check(t.weight > 0 and math.isfinite(t.weight), f"{key}.weight", f"{t.weight} must be positive")
        _check(t.decoder_depth >= 0, f"{key}.decoder_depth", f"{t.decoder_depth} must be >= 0")
        _check(t.decoder_dim > 0 and t.decoder_heads > 0 and t.decoder_dim % t.decoder_heads == 0,
               f"{key}.decoder_heads", f"{t.decoder_heads} must divide decoder_dim={t.decoder_dim}")
        _check((t.decoder_dim // 4) % 2 == 0 and (t.decoder_dim - t.decoder_dim // 4) % 4 == 0,
               f"{key}.decoder_dim", f"{t.decoder_dim} cannot carry the space-time sin-cos table "
               "(a multiple of 16 always can)")
        if t.kind == "hog":
            _check(t.nbins > 0, f"{key}.nbins", f"{t.nbins} must be positive")
            _check(t.cell_size > 0 and m.patch_size % t.cell_size == 0, f"{key}.cell_size",
                   f"{t.cell_size} does not divide model.patch_size={m.patch_size}")

    _check(len(d.datasets) > 0, "data.datasets", "at least one dataset is required")
    for name, ds in d.datasets.items():
        key = f"data.datasets.{name}"
        _choice(f"{key}.kind", ds.kind, DATASETS)
        _check(ds.weight > 0, f"{key}.weight", f"{ds.weight} must be positive")
        _choice(f"{key}.split", ds.split, ("train", "test"))
        if ds.kind in ("video", "image"):
            _choice(f"{key}.format", ds.format, INDEX_FORMATS)
            _check(bool(ds.path), f"{key}.path", "a list / annotation file (or image folder) is required")
            _choice(f"{key}.missing", ds.missing, ("error", "drop"))
            _choice(f"{key}.decoder", ds.decoder, DECODERS)
            _check(ds.stride >= 1, f"{key}.stride", f"{ds.stride} must be >= 1")
            _check(ds.target_fps >= 0, f"{key}.target_fps", f"{ds.target_fps} must be >= 0")
            _choice(f"{key}.sampling", ds.sampling, ("window", "segments"))
            _choice(f"{key}.overflow", ds.overflow, ("loop", "pad"))
            if ds.crop:
                _choice(f"{key}.crop", ds.crop, CROPS)
    _check(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", f"{d.max_bad_fraction} is outside [0, 1]")
    _check(d.decode_timeout_s >= 0, "data.decode_timeout_s", f"{d.decode_timeout_s} must be >= 0")
    _check(d.batch_size > 0, "data.batch_size", f"{d.batch_size} must be positive")
    _check(d.repeat >= 1, "data.repeat", f"{d.repeat} must be >= 1")
    _check(d.num_workers >= 0, "data.num_workers", f"{d.num_workers} must be >= 0")
    _check(len(d.mean) == m.in_chans, "data.mean", f"needs {m.in_chans} values (model.in_chans)")
    _check(len(d.std) == m.in_chans and all(s > 0 for s in d.std), "data.std",
           f"needs {m.in_chans} positive values (model.in_chans)")

    o = cfg.optim
    _check(o.lr > 0, "optim.lr", f"{o.lr} must be positive")
    _check(0 <= o.min_lr <= o.lr, "optim.min_lr", f"{o.min_lr} must be in [0, optim.lr]")
    _check(o.warmup_epochs >= 0, "optim.warmup_epochs", f"{o.warmup_epochs} must be >= 0")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", f"{o.betas} must be 2 values in [0, 1)")
    _check(o.clip_grad >= 0, "optim.clip_grad", f"{o.clip_grad} must be >= 0")
    _check(o.accum_steps >= 1, "optim.accum_steps", f"{o.accum_steps} must be >= 1")

    t = cfg.train
    _check(t.epochs >= 1, "train.epochs", f"{t.epochs} must be >= 1")
    _check(t.steps_per_epoch >= 0, "train.steps_per_epoch", f"{t.steps_per_epoch} must be >= 0")
    _choice("train.precision", t.precision, PRECISIONS)
    _choice("train.device", t.device, DEVICES)
    _check(t.nan_patience >= 1, "train.nan_patience", f"{t.nan_patience} must be >= 1")
    _check(cfg.log.every_steps >= 1, "log.every_steps", f"{cfg.log.every_steps} must be >= 1")
    _check(cfg.checkpoint.every_steps >= 1, "checkpoint.every_steps", f"{cfg.checkpoint.every_steps} must be >= 1")
    _check(cfg.resume in ("auto", "never") or cfg.resume.endswith((".pt", ".pth")), "resume",
           f"'{cfg.resume}' must be auto, never, or a path to a .pt checkpoint")


__all__ = [
    "Config", "ConfigError", "ModelConfig", "MaskingConfig", "TargetConfig", "DatasetConfig", "DataConfig",
    "OptimConfig", "TrainConfig", "LogConfig", "CheckpointConfig", "load_config", "validate", "config_to_yaml",
    "MISSING",
]
