"""Backbone weights from disk: a whole backbone (:func:`load_backbone`) or a fine-tuning start (:func:`load_init`).

Three sources are read alike (:func:`read_weights`): a ``vmim convert`` file (``format: vmim-backbone``), one of our
checkpoints (pretraining or fine-tuning: the keys under ``backbone.`` of its ``model``, the architecture from its
resolved ``config``; a file, or a sharded ``train.parallel=fsdp`` folder read whole), or a run directory (its newest
readable checkpoint, by the layout the trainer resumes from: :func:`vmim.checkpoint_files.candidates`). Reference
checkpoints (VideoMAE, MAE, MVD, timm, SlowFast) are converted first.

Every file is read by :func:`vmim.safe_load.load` (``weights_only=True``): one that holds more than tensors and
plain data raises :class:`~vmim.errors.UnsafeFileError` naming it, and in a run directory it is never skipped for an
older checkpoint (that would hide the tampering); random bytes, an empty file, or a dict without the keys a source
needs raise :class:`~vmim.errors.InputError` (a ``ValueError``) naming the file and the key. ``vmim finetune``
checks ``init`` this way before its run folder exists (:func:`vmim.preflight.check_data_paths`, with ``mmap``).

:func:`load_init` reads the weights and hands them to the backbone family's init loader, registered beside the
model (``register("backbones", name, schema, builder, init="module:function")``): :mod:`vmim.models.vit_init` and
:mod:`vmim.models.mvit_init` hold what each family refuses, adapts, drops or leaves fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ..checkpoint_files import candidates, is_sharded_checkpoint
from ..checkpoint_files import load as load_checkpoint
from ..config import build_config, build_entry, family, kinds, video_grid
from ..convert import FORMATS
from ..convert.common import FILE_FORMAT, FILE_VERSION, check_and_load
from ..errors import InputError, UnsafeFileError
from ..safe_load import load
from .registry import create_backbone

Grid = tuple[int, int, int]


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


def _read_one(path: Path, mmap: bool) -> Any:
    """A checkpoint file, or a sharded checkpoint folder read whole (:func:`vmim.checkpoint_files.load`)."""
    return load_checkpoint(path) if is_sharded_checkpoint(path) else load(path, mmap=mmap)


def _load_file(path: Path, mmap: bool = False) -> tuple[Any, Path]:
    """(loaded object, file) for a file or a sharded checkpoint folder, or the newest readable checkpoint of a run
    directory (a file that would run code is refused, never skipped)."""
    if is_sharded_checkpoint(path):
        return _read_one(path, mmap), path
    if path.is_dir():
        found = candidates(path / "checkpoints")
        if not found:
            raise FileNotFoundError(f"no checkpoint in {path / 'checkpoints'} (no last.pt, last/, step_*.pt or "
                                    "step_*/)")
        errors = []
        for file in found:
            try:
                return _read_one(file, mmap), file
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
    """Load starting weights into a built backbone: read them (:func:`read_weights`), then hand them to the
    backbone family's own init loader, registered as the kind's ``init`` path (``vmim.models.vit_init``,
    ``vmim.models.mvit_init``: what each adapts, drops or refuses).

    Args:
        backbone: built from ``model_cfg`` (and the fine-tuning run's video grid).
        init: a run directory, one of our checkpoints, or a converted file.
        model_cfg: the fine-tuning config's backbone entry.
    Returns:
        report lines: what was loaded from where, what was adapted, dropped or left fresh.
    Raises:
        ValueError: an architecture mismatch (naming ``model.<key>`` and both values) or keys that do not fit.
    """
    weights = read_weights(init)
    return kinds("backbones")[model_cfg.backbone].load("init")(backbone, weights, model_cfg)


__all__ = ["BackboneWeights", "load_backbone", "load_init", "read_weights"]
