"""Backbone weights from disk: a whole backbone (:func:`load_backbone`) or a fine-tuning start (:func:`load_init`).

Three sources are read alike (:func:`read_weights`): a ``vmim convert`` file (``format: vmim-backbone``), one of our
checkpoints (pretraining or fine-tuning: the keys under ``backbone.`` of its ``model``, the architecture from its
resolved ``config``), or a run directory (its newest readable checkpoint, ``checkpoints/last.pt`` first, then the
kept ``step_*.pt``, newest first; this mirrors ``vmim.engine.checkpoint.CheckpointManager``, which this package may
not import: models sit below the engine). Reference checkpoints (VideoMAE, MAE, MVD, timm, SlowFast) are converted
first.

Every file is read by :func:`vmim.safe_load.load` (``weights_only=True``): one that holds more than tensors and
plain data raises :class:`~vmim.errors.UnsafeFileError` naming it, and in a run directory it is never skipped for an
older checkpoint (that would hide the tampering); random bytes, an empty file, or a dict without the keys a source
needs raise :class:`~vmim.errors.InputError` (a ``ValueError``) naming the file and the key. ``vmim finetune``
checks ``init`` this way before its run folder exists (:func:`vmim.preflight.check_data_paths`, with ``mmap``).

:func:`load_init` is strict about what changes a weight's shape or meaning and lenient, out loud, about what the
fine-tuning recipes change on purpose. An MViT (:func:`vmim.convert.mvit_init.mvit_init_state`):

* refused, naming the config key and both values: ``model.backbone``, ``in_chans``, ``cls_token`` and
  ``dim_mul_in_att`` (None resolved to the size's own: the MaskFeat and supervised layouts are not
  interchangeable); ``patch_size`` is not compared, it follows ``q_pool_blocks``;
* adapted: another ``q_pool_blocks`` (MaskFeat pre-training drops the last stage's q pooling, fine-tuning restores
  it): every ``attn.rel_pos_{h,w,t}`` table whose length differs is linearly resampled to the model's, as
  SlowFast's ``load_checkpoint`` does, one report line per table;
* left fresh, reported: a ``mask_token`` the weights lack;
* anything else missing, unexpected or mis-shaped: one ``ValueError`` listing every key.

A ViT:

* refused, naming the config key and both values: ``model.backbone``, ``patch_size``, ``in_chans``, ``cls_token``,
  ``pos_embed`` (kind), a tubelet change other than 1 -> t, ``layer_scale`` switched on or off, and a
  ``rel_pos_bias`` the weights have that the model drops (none) or turns from per-block tables into one shared;
* adapted, as ``vmim convert`` does: a 2-D (tubelet 1) patch weight inflated to the model's tubelet (repeat over t,
  divide by t: identical frames give the 2-D embedding), a learned position table resampled to the model's grid
  (repeated over time when its slices are equal, else linearly interpolated; bicubic in space); relative position
  tables: a ``shared`` one copied into every block of a ``per_block`` model (SimMIM / BEiT fine-tuning), and each
  resized to the model's grid (:func:`vmim.models.rel_pos.resize_table`: bicubic over space offsets, linear over
  time offsets), one report line per kind of change, as the MViT tables above;
* dropped, reported: ``norm.*`` when the model normalizes pooled features (``fc_norm``) and the weights have no
  ``fc_norm`` (MAE and VideoMAE fine-tuning drop the pretrained norm and learn a fresh ``fc_norm``); a dense
  ``mask_token`` the model does not have;
* left fresh, reported: a missing ``fc_norm.*``; a ``mask_token`` the weights lack; relative position tables the
  weights lack (zero: no bias, so the loaded model computes what the weights did);
* anything else missing, unexpected or mis-shaped: one ``ValueError`` listing every key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..config import build_config, build_entry, family, video_grid
from .schemas import MViTConfig
from ..convert import FORMATS
from ..convert.common import FILE_FORMAT, FILE_VERSION, check_and_load, inflate_patch_weight
from ..convert.mvit_init import mvit_init_state
from ..errors import InputError, UnsafeFileError
from ..safe_load import load
from .pos_embed import resample_table
from .registry import create_backbone
from .rel_pos import resize_table

Grid = tuple[int, int, int]
ARCH_KEYS = ("backbone", "patch_size", "in_chans", "cls_token", "pos_embed")
"""ViT config keys whose difference changes what the weights mean: never adapted (MViT: ``MVIT_ARCH_KEYS``)."""


@dataclass
class BackboneWeights:
    """A backbone's weights and the architecture they belong to.

    Attributes:
        config: the backbone's ViTConfig (or MViTConfig).
        video_grid: the token grid (T', H', W') its learned position table (if any) is for.
        state_dict: backbone keys (no ``backbone.`` prefix).
        origin: where they came from, for messages.
        data: img_size, num_frames, mean, std of the source.
    """

    config: Any
    video_grid: Grid
    state_dict: dict[str, torch.Tensor]
    origin: str
    data: dict


def _checkpoint_files(run_dir: Path) -> list[Path]:
    ckpt = run_dir / "checkpoints"
    last = ckpt / "last.pt"
    return ([last] if last.exists() else []) + sorted(ckpt.glob("step_*.pt"), reverse=True)


def _load_file(path: Path, mmap: bool = False) -> tuple[Any, Path]:
    """(loaded object, file) for a file, or the newest readable checkpoint of a run directory (a file that would run
    code is refused, never skipped)."""
    if path.is_dir():
        files = _checkpoint_files(path)
        if not files:
            raise FileNotFoundError(f"no checkpoint in {path / 'checkpoints'} (neither last.pt nor step_*.pt)")
        errors = []
        for file in files:
            try:
                return load(file, mmap=mmap), file
            except UnsafeFileError:
                raise
            except (InputError, OSError) as err:  # a file damaged outside our atomic writes: try the next one
                errors.append(str(err))
        raise InputError(f"no readable checkpoint in {path / 'checkpoints'}: " + "; ".join(errors))
    if not path.is_file():
        raise FileNotFoundError(f"no such file or run directory: {path}")
    return load(path, mmap=mmap), path


BACKBONE_FILE_KEYS = ("version", "model", "video_grid", "state_dict", "data")
"""Keys of a ``vmim-backbone`` file besides ``format``."""


def _need(obj: dict, file: Path, keys: tuple[str, ...], kinds: tuple[type, ...], what: str) -> None:
    """Each of ``keys`` is in ``obj`` with the type at the same place in ``kinds``, else one InputError naming it."""
    for key, kind in zip(keys, kinds):
        if not isinstance(obj.get(key), kind):
            found = "no such key" if key not in obj else f"a {type(obj[key]).__name__}"
            raise InputError(f"{file}: {what} without a valid {key!r} ({found}, expected a {kind.__name__})")


def read_weights(path: str | Path, mmap: bool = False) -> BackboneWeights:
    """The backbone weights of a converted file, one of our checkpoints, or a run directory.

    Args:
        path: the file or run directory.
        mmap: map a zip-format file's tensors instead of reading them (a cheap check before a run).
    Raises:
        FileNotFoundError: nothing at ``path`` (or no checkpoint in the run directory).
        UnsafeFileError: the file holds more than tensors and plain data (named); nothing of it was built.
        InputError: anything else (not a torch file, a reference checkpoint not yet converted, a checkpoint without
            a backbone, a missing key: each named with the file).
    """
    obj, file = _load_file(Path(path), mmap)
    if isinstance(obj, dict) and obj.get("format") == FILE_FORMAT:
        _need(obj, file, BACKBONE_FILE_KEYS, (int, dict, list, dict, dict), f"a {FILE_FORMAT} file")
        if obj.get("version") != FILE_VERSION:
            raise InputError(f"{file}: {FILE_FORMAT} version {obj.get('version')}, this vmim reads {FILE_VERSION}")
        cfg = build_entry("model", obj["model"], family("backbones"))
        source = obj.get("source", {})
        origin = f"converted {source.get('format', '?')} file {file}"
        return BackboneWeights(cfg, tuple(obj["video_grid"]), dict(obj["state_dict"]), origin, dict(obj["data"]))
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("config"), str):
        cfg = build_config(yaml.safe_load(obj["config"]))
        sd = {k[len("backbone."):]: v for k, v in obj["model"].items() if k.startswith("backbone.")}
        if not sd:
            raise InputError(f"{file}: its 'model' has no 'backbone.*' keys")
        origin = f"{obj.get('task', cfg.task)} checkpoint {file} (step {obj.get('step', '?')})"
        data = {"img_size": cfg.data.img_size, "num_frames": cfg.data.num_frames, "mean": list(cfg.data.mean),
                "std": list(cfg.data.std)}
        return BackboneWeights(cfg.model, video_grid(cfg), sd, origin, data)
    keys = f"its keys: {', '.join(sorted(map(str, obj))[:12])}" if isinstance(obj, dict) else \
        f"it holds a {type(obj).__name__}"
    raise InputError(f"{file} is neither a vmim checkpoint (a 'model' dict and a 'config' string) nor a "
                     f"'{FILE_FORMAT}' file ({keys}); convert reference checkpoints first: vmim convert --from "
                     f"{{{','.join(FORMATS)}}} SRC DST")


def load_backbone(path: str | Path) -> nn.Module:
    """The backbone recorded in a converted file, one of our checkpoints or a run directory, loaded strictly, in eval
    mode. ``forward_features`` then gives the source's pooled ``(B, D)`` features."""
    weights = read_weights(path)
    model = create_backbone(weights.config, weights.video_grid)
    check_and_load(model, weights.state_dict, weights.origin)
    return model.eval()


def load_init(backbone: nn.Module, init: str | Path, model_cfg: Any) -> list[str]:
    """Load starting weights into a built backbone (rules in the module docstring).

    Args:
        backbone: built from ``model_cfg`` (and the fine-tuning run's video grid).
        init: a run directory, one of our checkpoints, or a converted file.
        model_cfg: the fine-tuning config's ViTConfig or MViTConfig.
    Returns:
        report lines: what was loaded from where, what was adapted, dropped or left fresh.
    Raises:
        ValueError: an architecture mismatch (naming ``model.<key>`` and both values) or keys that do not fit.
    """
    weights = read_weights(init)
    if isinstance(model_cfg, MViTConfig):
        return _load_mvit_init(backbone, weights, model_cfg)
    src = weights.config
    for key in ARCH_KEYS:
        ours, theirs = getattr(model_cfg, key), getattr(src, key)
        if ours != theirs:
            raise ValueError(f"model.{key}: the model has {ours!r}, the init weights ({weights.origin}) have "
                             f"{theirs!r}")
    sd = dict(weights.state_dict)
    report = [f"init: {len(sd)} backbone tensors from {weights.origin}"]
    report += _rel_pos_init(sd, backbone, weights, model_cfg)
    if src.tubelet_size != model_cfg.tubelet_size:
        if src.tubelet_size != 1:
            raise ValueError(f"model.tubelet_size: the model has {model_cfg.tubelet_size}, the init weights "
                             f"({weights.origin}) have {src.tubelet_size}; only 2-D weights (tubelet 1) are inflated")
        sd["patch_embed.proj.weight"] = inflate_patch_weight(sd["patch_embed.proj.weight"], model_cfg.tubelet_size)
        report.append(f"init: patch_embed.proj.weight inflated from tubelet 1 to {model_cfg.tubelet_size} "
                      f"(repeated over t, divided by {model_cfg.tubelet_size})")
    if model_cfg.pos_embed == "learned" and "pos_embed.table" in sd:
        grid = tuple(backbone.pos_embed.video_grid)
        if tuple(weights.video_grid) != grid:
            sd["pos_embed.table"] = resample_table(sd["pos_embed.table"], tuple(weights.video_grid), grid)
            report.append(f"init: learned position table resampled from the grid {tuple(weights.video_grid)} to "
                          f"{grid}")
    if model_cfg.fc_norm and not any(k.startswith("fc_norm.") for k in sd):
        norm = sorted(k for k in sd if k.startswith("norm."))
        for k in norm:
            del sd[k]
        if norm:
            report.append(f"init: dropped {', '.join(norm)} (model.fc_norm: the pooled features get a fresh fc_norm, "
                          "as in MAE / VideoMAE fine-tuning)")
    own = backbone.state_dict()
    if "mask_token" in sd and "mask_token" not in own:
        del sd["mask_token"]
        report.append("init: dropped mask_token (the weights are from a dense encoder, the model is not)")
    fresh = sorted(k for k in own if k not in sd and (k.startswith("fc_norm.") or k == "mask_token"
                                                      or k.endswith("rel_pos.table")))
    if fresh:
        report.append(f"init: left fresh {', '.join(fresh)}")
    try:
        check_and_load(backbone, {**{k: own[k] for k in fresh}, **sd}, f"the init weights ({weights.origin})")
    except ValueError as err:
        if bool(src.fc_norm) != bool(model_cfg.fc_norm):
            raise ValueError(f"{err} (model.fc_norm: the model has {model_cfg.fc_norm}, the init weights have "
                             f"{src.fc_norm})") from None
        raise
    if src.global_pool != model_cfg.global_pool or src.fc_norm != model_cfg.fc_norm:
        report.append(f"init: pooling {model_cfg.global_pool}{' + fc_norm' if model_cfg.fc_norm else ''} "
                      f"(the weights' own: {src.global_pool}{' + fc_norm' if src.fc_norm else ''})")
    return report


def _rel_pos_init(sd: dict[str, torch.Tensor], backbone: nn.Module, weights: BackboneWeights, model_cfg: Any
                  ) -> list[str]:
    """Fit the weights' relative position tables to the model in place (module docstring); report lines."""
    ours = getattr(model_cfg, "rel_pos_bias", "none")
    theirs = getattr(weights.config, "rel_pos_bias", "none")
    ls_ours, ls_theirs = getattr(model_cfg, "layer_scale", 0.0), getattr(weights.config, "layer_scale", 0.0)
    if (ls_ours > 0) != (ls_theirs > 0):
        raise ValueError(f"model.layer_scale: the model has {ls_ours!r}, the init weights ({weights.origin}) have "
                         f"{ls_theirs!r}; both on or both off")
    if theirs == "none" or ours == theirs == "none":
        return []
    if ours == "none" or (ours, theirs) == ("shared", "per_block"):
        raise ValueError(f"model.rel_pos_bias: the model has {ours!r}, the init weights ({weights.origin}) have "
                         f"{theirs!r}; use per_block (or {theirs!r}) to keep the learned relative positions")
    src_grid, lines = tuple(weights.video_grid), []
    if (theirs, ours) == ("shared", "per_block"):
        table = sd.pop("rel_pos.table")
        sd.update({f"blocks.{i}.rel_pos.table": table.clone() for i in range(backbone.depth)})
        lines.append(f"init: the shared relative position table copied into each of the {backbone.depth} blocks "
                     "(model.rel_pos_bias: per_block, as SimMIM / BEiT fine-tuning)")
    grid = tuple(backbone.rel_pos.grid if ours == "shared" else backbone.blocks[0].rel_pos.grid)
    if grid != src_grid:
        for name in [k for k in sd if k.endswith("rel_pos.table")]:
            sd[name] = resize_table(sd[name], src_grid, grid)
        lines.append(f"init: relative position tables resized from the grid {src_grid} to {grid} (bicubic over "
                     "space offsets, linear over time offsets)")
    return lines


def _load_mvit_init(backbone: nn.Module, weights: BackboneWeights, model_cfg: MViTConfig) -> list[str]:
    """:func:`load_init` for an MViT (rules in the module docstring)."""
    sd, lines = mvit_init_state(weights.state_dict, weights.config, model_cfg, backbone.state_dict(),
                                weights.origin)
    check_and_load(backbone, sd, f"the init weights ({weights.origin})")
    report = [f"init: {len(weights.state_dict)} backbone tensors from {weights.origin}", *lines]
    theirs = weights.config.global_pool
    if theirs is None:  # the size's own
        with torch.device("meta"):
            theirs = create_backbone(weights.config).global_pool
    if theirs != backbone.global_pool:
        report.append(f"init: pooling {backbone.global_pool} (the weights' own: {theirs})")
    return report


__all__ = ["ARCH_KEYS", "BackboneWeights", "load_backbone", "load_init", "read_weights"]
