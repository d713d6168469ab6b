"""The errors a CLI verb reports in one line, without a traceback, and the exit code each maps to.

Decision: one small hierarchy at the bottom of the import graph (standard library only), so every layer can raise a
user-facing error without the CLI knowing each class by name. :func:`vmim.cli.main` prints ``vmim: <message>`` for
any :class:`VmimError` and exits with its ``exit_code``; anything else is a bug and keeps its traceback.

* :class:`InputError` (exit 2): what the user handed us is refused before any work (a config key, a file, a list
  line); nothing was written. :class:`vmim.config.ConfigError` is one.
* :class:`UnsafeFileError` (exit 2): a file holds objects beyond tensors and plain data, so reading it would run
  code; refused without unpickling anything.
* :class:`RunError` (exit 1): the run started and stopped on its own terms (too many bad files, a non-finite loss);
  what it had saved is kept.
"""

from __future__ import annotations


class VmimError(Exception):
    """Base of every error a verb reports in one line; ``exit_code`` is the process's exit status."""

    exit_code = 1


class InputError(VmimError, ValueError):
    """Bad input, refused before any work (exit 2)."""

    exit_code = 2


class UnsafeFileError(InputError):
    """A file would run code (or load arbitrary objects) when read; it was not unpickled."""


class RunError(VmimError, RuntimeError):
    """A run that started stopped itself with a reason (exit 1)."""
