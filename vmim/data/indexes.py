"""Dataset indexes: the list formats users bring, parsed into one in-memory list of :class:`Entry`.

Formats (``read_index(fmt, path, root, **kwargs)`` dispatches on the name):

* ``space``: VideoMAE-style ``path [label]`` lines (whitespace-separated; paths may contain spaces).
* ``csv``: ``path,label`` rows, with or without a header row; quoted paths may contain commas.
* ``kinetics_csv``: the official Kinetics-400/600/700 annotation CSV, videos looked up in the usual layouts.
* ``ssv2``: Something-Something v2 annotation JSON + labels JSON.
* ``ucf101``: UCF101 ``trainlist0N.txt`` / ``testlist0N.txt`` + ``classInd.txt``.
* ``hmdb51``: the folder of HMDB51 ``{class}_test_split{N}.txt`` files.
* ``image_folder``: ImageNet-style ``root/{class}/{image}`` folders, or a flat folder of unlabeled images.

Every entry holds an absolute path; relative paths are resolved against ``root`` (by default the list
file's folder). Labels are 0-based ints, -1 when unlabeled. In the text formats blank lines and lines
starting with ``#`` are skipped. A malformed line raises :class:`IndexFormatError` naming the file, the
1-based line number and the offending text. Nothing here opens a video or image; :func:`check_missing`
finds listed files that do not exist, with one directory listing per folder instead of one stat per file.
This module is pure standard library.

Labels in a list are integers >= 0; a negative one is a malformed line (it used to read as "unlabeled" and be
reported later as "has no label"): an unlabeled sample has no label field. A listed entry that is a folder is
refused by :func:`check_missing`, naming the list and line (it used to count as present and fail at decode). The
line grammar of the space and csv formats lives in :mod:`vmim.preflight` (torch-free), which reads the lists with it
before any work; the readers here use the same functions, so the two never disagree.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import InputError
from ..preflight import CSV_HEADER_LABELS as CSV_HEADER_LABELS  # re-exported: the header words a CSV list may use
from ..preflight import IMAGE_EXTENSIONS, as_int, csv_rows, list_lines, split_csv_row, split_space_line
from .schemas import INDEX_FORMATS as INDEX_FORMATS  # the config's choices are the readers' keys (asserted below)

PathLike = str | os.PathLike

MISSING_POLICIES = ("error", "drop")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm")
"""Kinetics file extensions, in order of preference when several exist."""
KINETICS_COLUMNS = ("youtube_id", "time_start", "time_end")
"""Required Kinetics CSV columns; ``label`` and ``split`` are used when present, other columns ignored."""
MISSING_SHOWN = 10


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed sample: absolute file path, 0-based label (-1 = unlabeled), optional time span in seconds, and where
    it was listed (``list_file``, 1-based ``line`` or JSON item; 0 = not from a line) for messages about its label."""

    path: str
    label: int
    start_sec: float | None = None
    end_sec: float | None = None
    list_file: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)

    def where(self) -> str:
        """``list.txt line 12`` (or the path when the entry has no line)."""
        return f"{self.list_file} line {self.line}" if self.line else self.path


class IndexFormatError(InputError):
    """A malformed index line: ``"{file} line {n}: {problem}, got '{text}'"``.

    JSON indexes report the 1-based item number instead (``unit="item"``); ``line=None`` means the whole file.
    """

    def __init__(self, path: PathLike, line: int | None, problem: str, text: str, unit: str = "line"):
        self.path, self.line, self.text = str(path), line, text
        where = f"{path}" if line is None else f"{path} {unit} {line}"
        super().__init__(f"{where}: {problem}, got {text!r}")


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


_as_int = as_int  # the grammar's, from vmim.preflight


def _root_of(list_path: PathLike, root: PathLike | None) -> str:
    """Absolute root: the given one, or the list file's folder."""
    base = os.path.dirname(os.path.abspath(list_path)) if root is None else os.fspath(root)
    return os.path.abspath(os.path.expanduser(base))


def _resolve(root: str, path: str) -> str:
    """Absolute, normalised ``path``; relative paths are taken from ``root`` (already absolute)."""
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(root, path))


_lines = list_lines  # (line number, stripped text) of the non-blank, non-comment lines
_csv_rows = csv_rows  # (line number, stripped fields) of the non-blank, non-comment CSV rows


class _DirCache:
    """Existence checks from one ``os.scandir`` per directory, cached (the files must not change meanwhile)."""

    def __init__(self):
        self._names: dict[str, frozenset[str] | None] = {}
        self._dirs: dict[str, frozenset[str]] = {}
        self._stems: dict[tuple[str, tuple[str, ...]], dict[str, str]] = {}

    def names(self, directory: str) -> frozenset[str] | None:
        """Names in ``directory`` (empty if it does not exist); None if it cannot be listed."""
        if directory not in self._names:
            try:
                with os.scandir(directory or ".") as it:
                    found = [e for e in it if not e.is_symlink() or os.path.exists(e.path)]  # no broken links
                self._names[directory] = frozenset(e.name for e in found)
                self._dirs[directory] = frozenset(e.name for e in found if e.is_dir())
            except (FileNotFoundError, NotADirectoryError):
                self._names[directory] = frozenset()
            except OSError:  # e.g. no read permission: fall back to one stat per file
                self._names[directory] = None
        return self._names[directory]

    def exists(self, path: str) -> bool:
        directory, name = os.path.split(path)
        names = self.names(directory)
        return os.path.exists(path) if names is None else name in names

    def is_dir(self, path: str) -> bool:
        """Whether ``path`` is an existing folder (from the same listing as :meth:`exists`)."""
        directory, name = os.path.split(path)
        if self.names(directory) is None:
            return os.path.isdir(path)
        return name in self._dirs.get(directory, frozenset())

    def stems(self, directory: str, extensions: tuple[str, ...]) -> dict[str, str]:
        """``{stem: file name}`` of the files in ``directory`` with one of ``extensions`` (earlier ones win)."""
        key = (directory, extensions)
        if key not in self._stems:
            names = self.names(directory) or frozenset()  # an unreadable folder yields no candidates
            rank = {ext: i for i, ext in enumerate(extensions)}
            best: dict[str, str] = {}
            for name in names:
                stem, ext = os.path.splitext(name)
                if ext in rank and (stem not in best or rank[ext] < rank[os.path.splitext(best[stem])[1]]):
                    best[stem] = name
            self._stems[key] = best
        return self._stems[key]


# ----------------------------------------------------------------------------------------------------
# Generic lists
# ----------------------------------------------------------------------------------------------------


def _space_line(list_path: PathLike, number: int, text: str) -> tuple[str, int]:
    """``path [label]`` -> (path, label); the label is the last field when it is an int (>= 0)."""
    try:
        return split_space_line(text)
    except ValueError as err:
        raise IndexFormatError(list_path, number, str(err), text) from None


def read_space_list(list_path: PathLike, root: PathLike | None = None) -> list[Entry]:
    """VideoMAE-style ``path [label]`` lines separated by whitespace; a missing label is -1.

    A path may contain spaces when the line ends with an int label (the split is on the last whitespace run).
    Lines with several int fields after the path (VideoMAEv2's ``path start total label``) are rejected.
    """
    base = _root_of(list_path, root)
    entries = []
    for number, text in _lines(list_path):
        path, label = _space_line(list_path, number, text)
        entries.append(Entry(_resolve(base, path), label, list_file=str(list_path), line=number))
    return entries


def read_csv_list(list_path: PathLike, root: PathLike | None = None) -> list[Entry]:
    """``path,label`` rows (csv quoting: paths may hold commas); an empty label is -1; a header row is skipped."""
    base = _root_of(list_path, root)
    entries = []
    for row, (number, fields) in enumerate(_csv_rows(list_path)):
        try:
            parsed = split_csv_row(fields, row == 0)
        except ValueError as err:
            raise IndexFormatError(list_path, number, str(err), ",".join(fields)) from None
        if parsed is None:
            continue  # header row
        path, label = parsed
        entries.append(Entry(_resolve(base, path), label, list_file=str(list_path), line=number))
    return entries


# ----------------------------------------------------------------------------------------------------
# Kinetics
# ----------------------------------------------------------------------------------------------------


def _kinetics_columns(csv_path: PathLike, number: int, header: list[str]) -> dict[str, int]:
    """Column positions by lower-case name; the required ones must be there."""
    columns = {name.lower(): i for i, name in enumerate(header)}
    if not all(name in columns for name in KINETICS_COLUMNS):
        raise IndexFormatError(csv_path, number, "expected a header 'label,youtube_id,time_start,time_end,split'",
                               ",".join(header))
    return columns


def _kinetics_rows(csv_path: PathLike) -> list[tuple[int, str, str, str, float, float]]:
    """(line, label, split, youtube_id, start, end) per data row; label and split are '' when absent."""
    out = []
    with open(csv_path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next((row for row in reader if any(row) and not row[0].lstrip().startswith("#")), None)
        if header is None:
            return out
        columns = _kinetics_columns(csv_path, reader.line_num, [name.strip() for name in header])
        c_label, c_split = columns.get("label"), columns.get("split")
        c_id, c_start, c_end = (columns[name] for name in KINETICS_COLUMNS)
        width = max(columns.values()) + 1
        for row in reader:
            if not row or row[0].lstrip().startswith("#") or not "".join(row).strip():
                continue  # blank line or comment
            try:
                if len(row) < width:
                    raise ValueError
                start, end = float(row[c_start]), float(row[c_end])
                if not (math.isfinite(start) and math.isfinite(end)):
                    raise ValueError
            except ValueError:
                raise IndexFormatError(csv_path, reader.line_num, f"expected {width} fields with numeric time_start, "
                                       "time_end", ",".join(row)) from None
            label = row[c_label].strip() if c_label is not None else ""
            split = row[c_split].strip() if c_split is not None else ""
            out.append((reader.line_num, label, split, row[c_id].strip(), start, end))
    return out


def _kinetics_dirs(root: str, label: str, split: str) -> list[str]:
    """Candidate folders, in order: root/label, root/label_with_underscores, root/split/label, root."""
    if not label:
        return [root]
    dirs = [os.path.join(root, label), os.path.join(root, label.replace(" ", "_"))]
    if split:
        dirs.append(os.path.join(root, split, label))
    return dirs + [root]


def read_kinetics_csv(csv_path: PathLike, root: PathLike | None = None,
                      class_names: Sequence[str] | None = None) -> list[Entry]:
    """Official Kinetics-400/600/700 CSV (``label,youtube_id,time_start,time_end,split``, extra columns ignored).

    Class index = position in ``class_names`` if given (an unknown label raises), else in the sorted unique
    labels of the CSV. The video ``{youtube_id}_{start:06d}_{end:06d}`` (.mp4, .mkv or .webm) is looked up
    under ``root/{label}/``, ``root/{label_with_underscores}/``, ``root/{split}/{label}/`` and ``root/``; the
    first match wins, and a video found nowhere gets the first layout's .mp4 path. A CSV without a label
    column (test splits) gives label -1 and only the ``root/`` layout. Each folder is listed once.
    """
    base = _root_of(csv_path, root)
    rows = _kinetics_rows(csv_path)
    names = list(class_names) if class_names is not None else sorted({r[1] for r in rows if r[1]})
    index = {name: i for i, name in enumerate(names)}
    cache = _DirCache()
    layouts: dict[tuple[str, str], tuple[int, str, list[tuple[str, dict[str, str]]]]] = {}
    entries = []
    for number, label, split, youtube_id, start, end in rows:
        layout = layouts.get((label, split))
        if layout is None:
            if label and label not in index:
                raise IndexFormatError(csv_path, number, f"label not among the {len(names)} given class names", label)
            dirs = [d + os.sep for d in _kinetics_dirs(base, label, split)]
            found_in = [(d, stems) for d in dirs if (stems := cache.stems(d[:-1], VIDEO_EXTENSIONS))]
            layout = layouts[label, split] = (index[label] if label else -1, dirs[0], found_in)
        label_index, default_dir, found_in = layout
        stem = f"{youtube_id}_{int(start):06d}_{int(end):06d}"
        path = None
        for directory, stems in found_in:
            name = stems.get(stem)
            if name is not None:
                path = directory + name
                break
        entries.append(Entry(path or default_dir + stem + VIDEO_EXTENSIONS[0], label_index, start, end,
                             str(csv_path), number))
    return entries


# ----------------------------------------------------------------------------------------------------
# Something-Something v2, UCF101, HMDB51
# ----------------------------------------------------------------------------------------------------


def _load_json(path: PathLike, kind: type) -> object:
    """The parsed JSON file, which must be a ``kind`` (list or dict)."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        line = (text.splitlines() or [""])[min(err.lineno, len(text.splitlines()) or 1) - 1]
        raise IndexFormatError(path, err.lineno, f"invalid JSON ({err.msg})", line.strip()[:80]) from None
    if not isinstance(data, kind):
        raise IndexFormatError(path, None, f"expected a JSON {kind.__name__}", type(data).__name__)
    return data


def read_ssv2(annotation_json: PathLike, labels_json: PathLike, root: PathLike | None = None,
              ext: str = ".webm") -> list[Entry]:
    """Something-Something v2: ``[{"id", "template", ...}]`` items -> ``root/{id}.webm``.

    The labels file maps each template with its brackets removed (``Holding [something]`` -> ``Holding
    something``) to a class index written as a string. Items without a template (test split) get -1.
    """
    base = _root_of(annotation_json, root)
    classes = {name: int(index) for name, index in _load_json(labels_json, dict).items()}
    entries = []
    for number, item in enumerate(_load_json(annotation_json, list), 1):
        if not isinstance(item, dict) or "id" not in item:
            raise IndexFormatError(annotation_json, number, "expected an object with an 'id'", str(item)[:80], "item")
        template = item.get("template")
        label = -1
        if template is not None:
            label = classes.get(template.replace("[", "").replace("]", ""), None)
            if label is None:
                raise IndexFormatError(annotation_json, number, f"template not in {labels_json}", template, "item")
        entries.append(Entry(_resolve(base, f"{item['id']}{ext}"), label, list_file=str(annotation_json), line=number))
    return entries


def read_ucf101_class_ind(class_ind_file: PathLike) -> dict[str, int]:
    """``classInd.txt`` (``1 ApplyEyeMakeup``) -> {lower-case class name: 0-based index}."""
    classes = {}
    for number, text in _lines(class_ind_file):
        fields = text.split()
        index = _as_int(fields[0]) if len(fields) == 2 else None
        if index is None:
            raise IndexFormatError(class_ind_file, number, "expected 'index ClassName'", text)
        classes[fields[1].lower()] = index - 1
    return classes


def read_ucf101_split(split_file: PathLike, class_ind_file: PathLike, root: PathLike | None = None) -> list[Entry]:
    """UCF101 ``trainlist0N.txt`` (``Class/v_Class_g08_c01.avi 1``, 1-based) or ``testlist0N.txt`` (no label).

    Labels are 0-based; a line without a label takes its class from the folder name via ``classInd.txt``,
    and a line with one must agree with it.
    """
    base = _root_of(split_file, root)
    classes = read_ucf101_class_ind(class_ind_file)
    entries = []
    for number, text in _lines(split_file):
        fields = text.split()
        given = _as_int(fields[1]) if len(fields) == 2 else None
        if len(fields) > 2 or (len(fields) == 2 and given is None):
            raise IndexFormatError(split_file, number, "expected 'Class/video.avi [label]'", text)
        from_folder = classes.get(fields[0].replace("\\", "/").split("/")[0].lower())
        label = given - 1 if given is not None else from_folder
        if label is None or (from_folder is not None and label != from_folder):
            raise IndexFormatError(split_file, number, f"class folder and label disagree with {class_ind_file}",
                                   text)
        entries.append(Entry(_resolve(base, fields[0]), label, list_file=str(split_file), line=number))
    return entries


def read_hmdb51_split(split_dir: PathLike, split: int = 1, train: bool = True,
                      root: PathLike | None = None) -> list[Entry]:
    """HMDB51 ``{class}_test_split{split}.txt`` files (``video.avi 1|2|0``: train, test, unused).

    Keeps the 1s (``train``) or the 2s; class index = position in the sorted class names; the video is
    ``root/{class}/{video}`` (``root`` defaults to ``split_dir``). Video names may start with ``#``.
    """
    split_dir = os.fspath(split_dir)
    base = os.path.abspath(os.path.expanduser(os.fspath(root) if root is not None else split_dir))
    pattern = re.compile(rf"(.+)_test_split{split}\.txt")
    files = {m.group(1): name for name in os.listdir(split_dir) if (m := pattern.fullmatch(name))}
    if not files:
        raise FileNotFoundError(f"no *_test_split{split}.txt files in {split_dir}")
    wanted = "1" if train else "2"
    entries = []
    for index, name in enumerate(sorted(files)):
        path = os.path.join(split_dir, files[name])
        for number, text in _lines(path, comments=False):
            fields = text.rsplit(None, 1)
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise IndexFormatError(path, number, "expected 'video.avi 0|1|2'", text)
            if fields[1] == wanted:
                entries.append(Entry(_resolve(base, os.path.join(name, fields[0])), index, list_file=path, line=number))
    return entries


# ----------------------------------------------------------------------------------------------------
# Image folders and dispatch
# ----------------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_image_folder(root: PathLike) -> list[Entry]:
    """An image folder, in one of two layouts, files with an image extension (any case) in sorted order:

    * classes: ImageNet-style ``root/{class}/.../{image}``; class index = position in the sorted subfolders, as
      in torchvision's ImageFolder (files directly in ``root`` are then ignored, as there).
    * flat: images directly in ``root`` and no subfolder (hidden ones such as ``.ipynb_checkpoints`` aside), as
      pretraining sets often come; every image is unlabeled (-1).

    Raises FileNotFoundError naming the folder when it holds neither images nor class subfolders, or when its
    class subfolders hold no image: the run would otherwise stop later with an empty dataset.
    """
    base = os.path.abspath(os.path.expanduser(os.fspath(root)))
    with os.scandir(base) as it:
        found = [(e.name, e.is_dir()) for e in it]
    classes = sorted(name for name, is_dir in found if is_dir)
    images = sorted(name for name, is_dir in found if not is_dir and _is_image(name))
    if images and all(name.startswith(".") for name in classes):
        return [Entry(os.path.join(base, name), -1) for name in images]
    if not classes:
        raise FileNotFoundError(f"image folder {base}: no image files ({', '.join(IMAGE_EXTENSIONS)}) and no class "
                                "subfolders; expected images directly in it (unlabeled) or in one subfolder per class")
    entries = []
    for index, name in enumerate(classes):
        for directory, subdirs, files in sorted(os.walk(os.path.join(base, name), followlinks=True)):
            subdirs.sort()
            entries.extend(Entry(os.path.join(directory, f), index) for f in sorted(files) if _is_image(f))
    if not entries:
        raise FileNotFoundError(f"image folder {base}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its "
                                f"{len(classes)} class subfolder(s)")
    return entries


_READERS: dict[str, Callable[..., list[Entry]]] = {
    "space": lambda path, root: read_space_list(path, root),
    "csv": lambda path, root: read_csv_list(path, root),
    "kinetics_csv": lambda path, root, **kw: read_kinetics_csv(path, root, **kw),
    "ssv2": lambda path, root, **kw: read_ssv2(path, root=root, **kw),
    "ucf101": lambda path, root, **kw: read_ucf101_split(path, root=root, **kw),
    "hmdb51": lambda path, root, **kw: read_hmdb51_split(path, root=root, **kw),
    "image_folder": lambda path, root: read_image_folder(path or root),
}
assert tuple(_READERS) == INDEX_FORMATS


def read_index(fmt: str, path: PathLike | None, root: PathLike | None = None, **kwargs) -> list[Entry]:
    """Parse an index of format ``fmt`` (one of INDEX_FORMATS); ``kwargs`` go to the format's reader:
    ``class_names`` (kinetics_csv), ``labels_json`` (ssv2), ``class_ind_file`` (ucf101), ``split`` and
    ``train`` (hmdb51). For image_folder, ``path`` is the folder (``root`` if ``path`` is empty)."""
    if fmt not in _READERS:
        raise KeyError(f"unknown index format '{fmt}' (valid: {', '.join(INDEX_FORMATS)})")
    return _READERS[fmt](path, root, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Missing files
# ----------------------------------------------------------------------------------------------------


def missing_summary(name: str, missing: Sequence[str], total: int) -> str:
    """``"dataset 'k400': 12 of 240000 listed files are missing:"`` + the first 10 paths + ``... and N more``."""
    lines = [f"dataset '{name}': {len(missing)} of {total} listed files are missing:"]
    lines += [f"  {path}" for path in missing[:MISSING_SHOWN]]
    if len(missing) > MISSING_SHOWN:
        lines.append(f"  ... and {len(missing) - MISSING_SHOWN} more")
    return "\n".join(lines)


def check_missing(entries: Iterable[Entry], policy: str, name: str) -> tuple[list[Entry], list[str]]:
    """(entries whose file exists, paths of the missing ones). ``policy="error"`` raises FileNotFoundError
    with :func:`missing_summary` if any is missing; ``"drop"`` returns the rest (the caller logs the summary).
    A listed entry that is a folder raises :class:`IndexFormatError` naming the list and line, whatever the policy:
    the list is wrong, not the disk."""
    if policy not in MISSING_POLICIES:
        raise ValueError(f"unknown missing-file policy '{policy}' (valid: {', '.join(MISSING_POLICIES)})")
    cache, kept, missing = _DirCache(), [], []
    entries = list(entries)
    for entry in entries:
        (kept if cache.exists(entry.path) else missing).append(entry)
        if kept and kept[-1] is entry and cache.is_dir(entry.path):
            raise IndexFormatError(entry.list_file or entry.path, entry.line or None, "lists a folder, not a file",
                                   entry.path)
    missing_paths = [entry.path for entry in missing]
    if missing and policy == "error":
        raise FileNotFoundError(missing_summary(name, missing_paths, len(entries)))
    return kept, missing_paths
