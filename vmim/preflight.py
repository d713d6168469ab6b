"""Pre-flight checks: the files and folders a config names exist, before torch is imported or a run folder made.

Decision: ``vmim.config`` validates values alone (types, ranges, choices) and never touches the disk, so a config
can be loaded, printed or submitted from a machine that does not hold the data. The run's own start checks the
disk here instead: ``vmim pretrain`` calls :func:`check_data_paths` right after loading the config, and the trainer
calls it for runs started otherwise. Found this early, a wrong path is a :class:`vmim.config.ConfigError` naming the
key and the path in milliseconds, instead of a traceback seconds later (after importing torch and building the
model) that names neither and leaves an empty run folder behind.

Only paths are checked (exists, file or folder, readable); what a list holds, and whether the files it lists
exist, is the index readers' job (``vmim.data.indexes``), which follow the same conventions: ``~`` is expanded in
``root`` and in an image folder's ``path``, as the readers do, and not elsewhere.

Standard library only, and ``vmim.config`` (omegaconf, ~0.1 s) is imported only to raise, so importing this module
costs milliseconds.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from .config import Config, DatasetConfig

FILE_KINDS = ("video", "image")
"""Dataset kinds read from files; the built-in ones (digits_*) need nothing on disk."""
PATH_IS_FOLDER = {"image_folder": "the image folder", "hmdb51": "the folder of HMDB51 *_test_split<N>.txt files"}
"""Formats whose ``path`` is a folder, with what it holds."""
PATH_IS_FILE = {"space": "the list file", "csv": "the CSV list", "kinetics_csv": "the Kinetics annotation CSV",
                "ssv2": "the SSv2 annotation JSON", "ucf101": "the UCF101 split file"}
"""Formats whose ``path`` is a file, with what it holds."""
LABELS = {"ssv2": "the SSv2 labels JSON", "ucf101": "the UCF101 classInd.txt"}
"""Formats that also read ``labels``."""


def _fail(key: str, message: str) -> NoReturn:
    from .config import ConfigError  # here, not at the top: see the module docstring

    raise ConfigError(key, message)


def _check_path(key: str, path: str, folder: bool, what: str) -> None:
    """``path`` (given under ``key``) exists, is a folder or not as ``folder`` says, and can be read."""
    if not path:
        _fail(key, f"{what} is required")
    if not os.path.exists(path):
        _fail(key, f"{path} does not exist ({what})")
    if folder and not os.path.isdir(path):
        _fail(key, f"{path} is not a folder ({what})")
    if not folder and os.path.isdir(path):
        _fail(key, f"{path} is a folder, expected a file ({what})")
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        _fail(key, f"{path} is not readable ({what})")


def check_dataset_paths(key: str, ds: DatasetConfig) -> None:
    """The paths one dataset entry (``key`` = ``data.datasets.<name>``) names; built-in kinds name none."""
    if ds.kind not in FILE_KINDS:
        return
    if ds.format in PATH_IS_FOLDER:
        path = os.path.expanduser(ds.path) if ds.format == "image_folder" else ds.path
        _check_path(f"{key}.path", path, True, PATH_IS_FOLDER[ds.format])
    elif ds.format in PATH_IS_FILE:
        _check_path(f"{key}.path", ds.path, False, PATH_IS_FILE[ds.format])
    if ds.root:
        _check_path(f"{key}.root", os.path.expanduser(ds.root), True, "the folder that listed paths are relative to")
    if ds.format in LABELS:  # only video entries have a labels key
        _check_path(f"{key}.labels", getattr(ds, "labels", ""), False, LABELS[ds.format])


def check_data_paths(cfg: Config) -> None:
    """Every file dataset's ``path``, ``root`` (if set) and ``labels`` (ssv2, ucf101) exist with the right type.

    Raises :class:`vmim.config.ConfigError` naming the first bad key (``data.datasets.<name>.path`` ...) and path.
    An unknown format is left to config validation.
    """
    for name, ds in cfg.data.datasets.items():
        check_dataset_paths(f"data.datasets.{name}", ds)
    for name, ds in getattr(getattr(cfg, "eval", None), "datasets", {}).items():  # a fine-tuning config's
        check_dataset_paths(f"eval.datasets.{name}", ds)
    init = getattr(cfg, "init", "")
    if init and not os.path.exists(os.path.expanduser(init)):
        _fail("init", f"{init} does not exist (a vmim run directory, a checkpoint, or a `vmim convert` file)")
