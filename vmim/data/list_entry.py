"""A dataset entry from one command-line word: ``vmim probe RUN --train LIST --test LIST`` and ``vmim eval RUN --test
LIST`` take data without a config file. Torch-free.

Decisions:

* **What the word means** is read from the path, never guessed from its content beyond the first listed file:
  a folder is an ImageFolder tree (``kind: image``, ``format: image_folder``); a ``.csv`` file is a ``path,label``
  CSV; any other file is a ``path label`` list (``format: space``). A list whose first entry ends in an image
  extension is an image list (``kind: image``), otherwise a video list (``kind: video``).
* **A built-in dataset** is ``KIND:SPLIT`` (``digits_motion:test``, ``digits_images:train``), so the demos' data
  can be named the same way.
* **Anything else a kind takes** (decoder, stride, root, ...) stays an override (``eval.datasets.<name>.stride=2``):
  the word names the data, the overrides tune how it is read.
* **An unreadable word stops at once**, naming the flag and the path (:class:`~vmim.config.ConfigError`): a missing
  file, an empty list.
"""

from __future__ import annotations

import os

from ..config.checks import ConfigError
from ..config.registry import kinds
from ..preflight import CSV_HEADER_LABELS, IMAGE_EXTENSIONS, csv_rows, list_lines


def entry_for(word: str, flag: str) -> dict:
    """``{"kind": ..., ...}`` for a list file, an image folder or ``KIND:SPLIT`` of a built-in dataset; ``flag`` names
    the option in errors (``--test``).

    Raises:
        ConfigError: the path does not exist, the list is empty, or ``KIND`` is not a built-in dataset kind.
    """
    builtin, sep, split = word.partition(":")
    if sep and not os.path.exists(word):
        known = sorted(name for name in kinds("datasets") if name.startswith("digits"))
        if builtin not in known:
            raise ConfigError(flag, f"'{word}' is neither a list file, an image folder nor KIND:SPLIT of a built-in "
                                    f"dataset ({', '.join(known)})")
        return {"kind": builtin, "split": split}
    if os.path.isdir(word):
        return {"kind": "image", "format": "image_folder", "path": word}
    if not os.path.isfile(word):
        raise ConfigError(flag, f"{word} does not exist (a list file, an image folder, or KIND:SPLIT)")
    fmt = "csv" if word.lower().endswith(".csv") else "space"
    first = _first_path(word, fmt)
    if first is None:
        raise ConfigError(flag, f"{word} lists no file")
    kind = "image" if first.lower().endswith(IMAGE_EXTENSIONS) else "video"
    return {"kind": kind, "format": fmt, "path": word}


def _first_path(path: str, fmt: str) -> str | None:
    """The first listed path of a ``space`` or ``csv`` list (a CSV header ``path,label`` is skipped), or None."""
    if fmt == "csv":
        for _, fields in csv_rows(path):
            if not (len(fields) > 1 and fields[1].lower() in CSV_HEADER_LABELS):  # a header row
                return fields[0]
        return None
    for _, text in list_lines(path):
        return text.rsplit(maxsplit=1)[0] if len(text.split()) > 1 else text
    return None
