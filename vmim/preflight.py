"""Pre-flight checks: the files and folders a config names exist, before torch is imported or a run folder made.

Decision: ``vmim.config`` validates values alone (types, ranges, choices) and never touches the disk, so a config
can be loaded, printed or submitted from a machine that does not hold the data. The run's own start checks the
disk here instead: ``vmim pretrain`` calls :func:`check_data_paths` right after loading the config, and the trainer
calls it for runs started otherwise. Found this early, a wrong path is a :class:`vmim.config.ConfigError` naming the
key and the path in milliseconds, instead of a traceback seconds later (after importing torch and building the
model) that names neither and leaves an empty run folder behind.

Paths are checked (exists, file or folder, readable), following the index readers' conventions: ``~`` is expanded in
``root`` and in an image folder's ``path``, as the readers do, and not elsewhere.

Lists are read once up front as well (:func:`check_list`, issue 19), because the index readers
(``vmim.data.indexes``) run only when the data is built, after torch is imported and the run folder made. For the
line formats (``space``, ``csv``) every line is parsed with the readers' own grammar (:func:`split_space_line`,
:func:`split_csv_row`, defined here because ``vmim.data`` imports torch, and used by the readers too): a malformed
line, a label that is not an integer >= 0 (or not below ``head.num_classes`` when that is set), a sample without a
label in a supervised list, and a listed entry that is an existing folder stop the run naming the key, the file and
the line. Folders are found with one ``os.scandir`` per listed folder, not one ``stat`` per entry (a 300k-line
list in 400 folders checks in ~0.4 s on a busy 2-core machine). The other formats
are checked for what makes them empty (no data row, ``[]``, no split files, no image or class folder). Whether the
listed files exist stays the readers' job (``data.datasets.<name>.missing``).

:func:`check_output_dir` says whether ``output_dir`` exists as a writable folder or can be made (its nearest existing
ancestor is a writable folder), without making it: a run refused later must leave nothing behind. Each function can
be called on its own (``vmim eval`` checks the datasets of its overrides with :func:`check_dataset_paths`).

Standard library only, and ``vmim.config`` (omegaconf, ~0.1 s) is imported only to raise, so importing this module
costs milliseconds.  The one exception is a set ``init`` or teacher ``path`` (:func:`check_weights`): its file is read
safely (``weights_only=True``, memory-mapped) to refuse a file that would run code, random bytes or a dict without
a backbone before the run folder is made; that imports torch, which the run needs anyway.
"""

from __future__ import annotations

import csv
import os
import re
from typing import TYPE_CHECKING, Any, Iterator, NoReturn

if TYPE_CHECKING:
    from .config import Config
    from .data.schemas import DatasetConfig

FILE_KINDS = ("video", "image")
"""Dataset kinds read from files; the built-in ones (digits_*) need nothing on disk."""
PATH_IS_FOLDER = {"image_folder": "the image folder", "hmdb51": "the folder of HMDB51 *_test_split<N>.txt files"}
"""Formats whose ``path`` is a folder, with what it holds."""
PATH_IS_FILE = {"space": "the list file", "csv": "the CSV list", "kinetics_csv": "the Kinetics annotation CSV",
                "ssv2": "the SSv2 annotation JSON", "ucf101": "the UCF101 split file"}
"""Formats whose ``path`` is a file, with what it holds."""
LABELS = {"ssv2": "the SSv2 labels JSON", "ucf101": "the UCF101 classInd.txt"}
"""Formats that also read ``labels``."""
CSV_HEADER_LABELS = ("label", "labels", "class", "class_id", "class_idx", "class_index", "target", "category")
"""A first CSV row whose label field is one of these (any case) is a header and is skipped."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""Image folder extensions, matched case-insensitively (``vmim.data.indexes`` reads them from here)."""

_INT = re.compile(r"[+-]?\d+")


# ----------------------------------------------------------------------------------------------------
# The line grammar of the space and csv lists (shared with vmim.data.indexes)
# ----------------------------------------------------------------------------------------------------


def as_int(text: str) -> int | None:
    """The int a field spells (``[+-]digits``), else None."""
    text = text.strip()
    return int(text) if _INT.fullmatch(text) else None


def _label(text: str) -> int:
    label = as_int(text)
    if label is None:
        raise ValueError("expected an integer label")
    if label < 0:
        raise ValueError(f"label {label} is negative (labels are 0-based; leave the label out for an unlabeled "
                         "sample)")
    return label


def split_space_line(text: str) -> tuple[str, int]:
    """A stripped ``path [label]`` line -> (path, label), label -1 when absent; the label is the last field.

    Raises:
        ValueError: the problem (a last field that is not an integer, a negative label, VideoMAEv2's
            ``path start total label``).
    """
    parts = text.rsplit(None, 1)
    if len(parts) == 1:
        return text, -1
    path, last = parts
    plain = last.isascii() and last.isdigit()  # the common case, without the regex
    if not plain and as_int(last) is None:
        raise ValueError("expected 'path [label]' with an integer label")
    if (" " in path or "\t" in path) and all(as_int(f) is not None for f in path.split()[1:]):
        raise ValueError("expected 'path [label]' (VideoMAEv2 'path start total label' lines are not supported)")
    return path, int(last) if plain else _label(last)


def split_csv_row(fields: list[str], first: bool) -> tuple[str, int] | None:
    """Stripped CSV ``fields`` -> (path, label), label -1 when empty; None for a header (only as the ``first`` row).

    Raises:
        ValueError: the problem (not two fields, no path, a label that is not an integer >= 0).
    """
    if len(fields) != 2:
        raise ValueError("expected 'path,label'")
    path, label_text = fields
    if first and as_int(label_text) is None and label_text.lower() in CSV_HEADER_LABELS:
        return None
    if not path or (label_text and as_int(label_text) is None):
        raise ValueError("expected 'path,label' with an integer label")
    return path, (_label(label_text) if label_text else -1)


def list_lines(path: str, comments: bool = True) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines, skipping ``#`` comments if ``comments``."""
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if text and not (comments and text.startswith("#")):
                yield number, text


def csv_rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped fields) of the non-blank, non-comment CSV rows."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            fields = [field.strip() for field in row]
            if any(fields) and not fields[0].startswith("#"):
                yield reader.line_num, fields


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


def check_dataset_paths(key: str, ds: DatasetConfig, num_classes: int = 0, labeled: bool = False) -> None:
    """The paths one dataset entry (``key`` = ``data.datasets.<name>``) names, then its list (:func:`check_list`, with
    ``num_classes`` and ``labeled``); built-in kinds name none."""
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
    check_list(key, ds, num_classes, labeled)


class _Folders:
    """Which names in a folder are folders: one ``os.scandir`` per folder, cached (no ``stat`` per listed entry)."""

    def __init__(self) -> None:
        self._dirs: dict[str, frozenset[str]] = {}

    def is_dir(self, folder: str, name: str) -> bool:
        dirs = self._dirs.get(folder)
        if dirs is None:
            try:
                with os.scandir(folder) as it:
                    dirs = frozenset(e.name for e in it if e.is_dir())
            except OSError:  # missing or unreadable: the readers report missing files
                dirs = frozenset()
            self._dirs[folder] = dirs
        return name in dirs


class _LineError(Exception):
    """A malformed list line: args (line number, problem, text)."""


def _line_entries(ds: Any) -> Iterator[tuple[int, str, str, int]]:
    """(line number, line text, path, label) of a space or csv list; raises :class:`_LineError`."""
    if ds.format == "space":
        for number, text in list_lines(ds.path):
            try:
                yield (number, text, *split_space_line(text))
            except ValueError as err:
                raise _LineError(number, str(err), text) from None
    else:
        for row, (number, fields) in enumerate(csv_rows(ds.path)):
            try:
                entry = split_csv_row(fields, row == 0)
            except ValueError as err:
                raise _LineError(number, str(err), ",".join(fields)) from None
            if entry is not None:
                yield (number, ",".join(fields), *entry)


def check_list(key: str, ds: Any, num_classes: int = 0, labeled: bool = False) -> None:
    """What a file dataset's list holds, read once before any work (the readers read it again when the data is built).

    ``space`` / ``csv`` lists: every line parses (the readers' grammar), labels are integers >= 0, below
    ``num_classes`` when it is > 0, present on every line when ``labeled`` (a supervised run), and no listed entry
    is an existing folder; the list holds at least one sample. ``kinetics_csv`` / ``ucf101`` / ``ssv2``: at least one
    sample; ``hmdb51``: split files of ``split_number``; ``image_folder``: images or class folders.

    Raises :class:`vmim.config.ConfigError` naming ``key.path`` (and the file and line where there is one).
    """
    if getattr(ds, "kind", "") not in FILE_KINDS:
        return
    where = f"{key}.path"
    if ds.format in ("space", "csv"):
        root = os.path.abspath(os.path.expanduser(ds.root)) if ds.root else os.path.dirname(os.path.abspath(ds.path))
        folders, parents, count = _Folders(), {}, 0
        try:
            for number, text, path, label in _line_entries(ds):
                count += 1
                problem = ""
                if label < 0 and labeled:
                    problem = "has no label (a supervised run needs 'path label' lines)"
                elif num_classes and label >= num_classes:
                    problem = f"has label {label}, outside 0..{num_classes - 1} (head.num_classes={num_classes})"
                else:
                    parent_text, _, name = path.rpartition("/") if os.sep == "/" else path.rpartition(os.sep)
                    parent = parents.get(parent_text)
                    if parent is None:
                        parent = parents[parent_text] = os.path.normpath(os.path.join(root, parent_text))
                    if folders.is_dir(parent, name or "."):
                        problem = f"lists a folder, not a file: {os.path.join(parent, name)}"
                if problem:
                    _fail(where, f"{ds.path} line {number} {problem}: {text!r}")
        except _LineError as err:
            number, problem, text = err.args
            _fail(where, f"{ds.path} line {number}: {problem}, got {text!r}")
        except UnicodeDecodeError as err:
            _fail(where, f"{ds.path} is not UTF-8 text ({err.reason} at byte {err.start})")
        if not count:
            _fail(where, f"{ds.path} lists no samples (only blank or # comment lines)")
    elif ds.format == "kinetics_csv":
        if sum(1 for _ in zip(range(2), csv_rows(ds.path))) < 2:
            _fail(where, f"{ds.path} lists no videos (a header and at least one row)")
    elif ds.format == "ucf101":
        if next(list_lines(ds.path), None) is None:
            _fail(where, f"{ds.path} lists no videos")
    elif ds.format == "ssv2":
        with open(ds.path, encoding="utf-8-sig") as f:
            head = f.read(4096).strip()
        if not head or re.fullmatch(r"\[\s*\]", head):
            _fail(where, f"{ds.path} lists no videos (an empty JSON list)")
    elif ds.format == "hmdb51":
        suffix = f"_test_split{getattr(ds, 'split_number', 1)}.txt"
        if not any(name.endswith(suffix) for name in os.listdir(ds.path)):
            _fail(where, f"{ds.path} holds no *{suffix} files (split_number={getattr(ds, 'split_number', 1)})")
    elif ds.format == "image_folder":
        folder = os.path.expanduser(ds.path)
        with os.scandir(folder) as it:
            if not any(e.is_dir() or e.name.lower().endswith(IMAGE_EXTENSIONS) for e in it):
                _fail(where, f"{folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) and no class folders")


def check_output_dir(output_dir: str, key: str = "output_dir") -> None:
    """``output_dir`` is a writable folder, or can be made: its nearest existing ancestor is a writable folder. Makes
    nothing. Raises :class:`vmim.config.ConfigError` naming ``key`` and the blocking path."""
    path = os.path.abspath(output_dir)  # as the trainer's Path(output_dir).mkdir(parents=True): no ~ expansion
    if os.path.exists(path):
        if not os.path.isdir(path):
            _fail(key, f"{output_dir} exists and is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            _fail(key, f"{output_dir} is not writable")
        return
    ancestor = path
    while not os.path.lexists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.exists(ancestor):
        _fail(key, f"{output_dir} cannot be made: {ancestor} is a broken link")
    if not os.path.isdir(ancestor):
        _fail(key, f"{output_dir} cannot be made: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        _fail(key, f"{output_dir} cannot be made: {ancestor} is not writable")


def check_data_paths(cfg: Config) -> None:
    """Every file dataset's ``path``, ``root`` (if set) and ``labels`` (ssv2, ucf101) exist with the right type, and
    its list holds what it must (:func:`check_list`); ``resume``, a teacher's ``path`` and ``init`` exist.

    Raises :class:`vmim.config.ConfigError` naming the first bad key (``data.datasets.<name>.path`` ...) and path.
    An unknown format is left to config validation.
    """
    head = getattr(cfg, "head", None)  # a supervised config: every sample needs a label below head.num_classes
    num_classes, labeled = (head.num_classes, True) if head is not None else (0, False)
    for name, ds in cfg.data.datasets.items():
        check_dataset_paths(f"data.datasets.{name}", ds, num_classes, labeled)
    for section in ("datasets", "val_datasets"):  # a fine-tuning config's test and validation sets
        for name, ds in getattr(getattr(cfg, "eval", None), section, {}).items():
            check_dataset_paths(f"eval.{section}.{name}", ds, num_classes, labeled)
    resume = getattr(cfg, "resume", "auto")
    if resume not in ("auto", "never") and not os.path.exists(resume):
        _fail("resume", f"{resume} does not exist (a checkpoint to continue from; resume=auto continues from "
                        "output_dir's newest)")
    for name, target in getattr(cfg, "targets", {}).items():
        path = getattr(target, "path", "")
        if getattr(target, "kind", "") == "teacher" and path and not os.path.exists(os.path.expanduser(path)):
            _fail(f"targets.{name}.path", f"{path} does not exist (the teacher's weights)")
    init = getattr(cfg, "init", "")
    if init and not os.path.exists(os.path.expanduser(init)):
        _fail("init", f"{init} does not exist (a vmim run directory, a checkpoint, or a `vmim convert` file)")
    if init:
        check_weights("init", os.path.expanduser(init))
    _check_resume_file(cfg, resume)
    for name, target in getattr(cfg, "targets", {}).items():  # teacher weights: read safely, before the run folder
        path = getattr(target, "path", "") if getattr(target, "kind", "") == "teacher" else ""
        if path:
            check_weights(f"targets.{name}.path", os.path.expanduser(path),
                          state_dict_only=bool(getattr(target, "timm_model", "")))


def _check_resume_file(cfg: Config, resume: str) -> None:
    """The checkpoint a resume would read is safe, before the trainer touches the run folder: ``resume=FILE``
    reads safely; with ``resume=auto`` an existing ``checkpoints/last.pt`` holds no code (a damaged one is left to
    the trainer, which falls back to an older checkpoint). A sharded folder is checked when it is read."""
    if resume not in ("auto", "never"):
        if os.path.isfile(resume):
            check_weights("resume", resume, state_dict_only=True)
        return
    last = os.path.join(getattr(cfg, "output_dir", ""), "checkpoints", "last.pt")
    if resume == "auto" and os.path.isfile(last):
        from .errors import UnsafeFileError

        try:
            check_weights("resume", last, state_dict_only=True)
        except UnsafeFileError:
            raise
        except ValueError:  # damaged, not dangerous: the trainer reports it and takes the newest readable one
            pass


def _backbone_source(obj: dict) -> bool:
    """Whether a file's top level is a ``vmim convert`` file or one of our checkpoints (what ``read_weights`` reads)."""
    return obj.get("format") == "vmim-backbone" or (isinstance(obj.get("model"), dict)
                                                    and isinstance(obj.get("config"), str))


def check_weights(key: str, path: str, state_dict_only: bool = False) -> None:
    """The weights file (or run directory's newest checkpoint) at ``path``, given under ``key``, reads safely and
    has the keys a backbone source needs (``state_dict_only``: any torch or safetensors file, a timm teacher's).

    An unsafe, empty or random file, or a file that is not a backbone source, is refused without torch, in
    milliseconds (:func:`vmim.safe_load.peek`). The one check here that imports torch (only when such a key is set
    and the file looks right): the file is read with
    :func:`vmim.models.loading.read_weights` (``weights_only=True``, tensors memory-mapped, so cheap). Raises
    :class:`vmim.errors.UnsafeFileError` (a file that would run code) or :class:`vmim.config.ConfigError`, both naming
    ``key`` and the file, before the run folder exists.
    """
    from .errors import UnsafeFileError
    from .safe_load import load, peek

    try:  # torch-free first, in milliseconds: an unsafe, empty or random file, or one of the wrong kind
        skeleton = peek(path)
    except UnsafeFileError as err:
        raise UnsafeFileError(f"config key '{key}': {err}") from None
    except (ValueError, OSError) as err:
        _fail(key, str(err))
    if not state_dict_only and isinstance(skeleton, dict) and not _backbone_source(skeleton):
        _fail(key, f"{path} is neither a vmim checkpoint (keys 'model' and 'config') nor a `vmim convert` file "
                   f"(format 'vmim-backbone'); its keys: {', '.join(sorted(map(str, skeleton))[:8])}; convert a "
                   "reference checkpoint first: vmim convert --from FORMAT SRC DST")
    from .models.loading import read_weights  # torch, for what a valid-looking file holds

    try:
        if state_dict_only:
            load(path, mmap=True)
        else:
            read_weights(path, mmap=True)
    except UnsafeFileError as err:
        raise UnsafeFileError(f"config key '{key}': {err}") from None
    except (ValueError, OSError) as err:
        _fail(key, str(err))
