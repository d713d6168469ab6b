"""``vmim eval RUN``: the multi-view test of a fine-tuned run (:mod:`vmim.engine.eval_run`).

``--test LIST`` (repeatable) scores other data than the run's ``eval.datasets``: each word is a list file, an image
folder or ``KIND:SPLIT`` of a built-in dataset (:func:`vmim.data.list_entry.entry_for`), named by its file stem
(``KIND_SPLIT``). The words are read here, before torch is imported: a bad one stops at once, naming ``--test``.
"""

from __future__ import annotations

import argparse
import os
import re

from . import accept_intermixed

HELP = ("multi-view test of a fine-tuned run: eval.num_views x eval.num_crops views per video, softmax averaged, "
        "predictions file, top-1 / top-5")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="fine-tuning run directory, or a checkpoint file")
    p.add_argument("--checkpoint", help="best, last, or a file (default: best.pt if it was selected on a validation "
                                        "set, else last.pt)")
    p.add_argument("--output", help="folder for <dataset>.predictions.tsv (default: <run>/eval)")
    p.add_argument("--test", action="append", metavar="LIST",
                   help="score this data instead of the run's eval.datasets: a list file, an image folder or "
                        "KIND:SPLIT (digits_motion:test); repeatable; named by the file stem")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run's config (eval.num_views=...)")
    accept_intermixed(p)


def word_name(word: str) -> str:
    """The dataset name of a ``--test`` word: a file's stem, a folder's name, ``KIND_SPLIT``; characters other than
    letters, digits, ``-`` and ``_`` become ``_``."""
    kind, sep, split = word.partition(":")
    if sep and not os.path.exists(word):
        name = f"{kind}_{split}"
    else:
        base = os.path.basename(os.path.normpath(word))
        name = base if os.path.isdir(word) else os.path.splitext(base)[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "test"


def entries_for(words: list[str]) -> dict[str, dict]:
    """{name: dataset entry} of the ``--test`` words, in order.

    Raises:
        ConfigError: a word names no readable data, or two words get the same name.
    """
    from ..config import ConfigError
    from ..data.list_entry import entry_for

    out: dict[str, dict] = {}
    given: dict[str, str] = {}
    for word in words:
        name = word_name(word)
        if name in out:
            raise ConfigError("--test", f"'{given[name]}' and '{word}' are both named '{name}' (the file stem): "
                                        "give the lists different names")
        out[name], given[name] = entry_for(word, "--test"), word
    return out


def run(args: argparse.Namespace) -> int:
    """Refusals (exit 2), too many bad files (1) and a stop signal (128 + signal: Interrupted) are one-line
    :class:`~vmim.errors.VmimError` s, printed by :func:`vmim.cli.main`."""
    tests = entries_for(args.test) if args.test else None
    from ..engine.eval_run import run_eval

    run_eval(args.target, args.checkpoint, args.overrides, args.output, tests)
    return 0
