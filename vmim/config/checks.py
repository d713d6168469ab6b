"""What every schema uses: :class:`ConfigError` (a key and a message), one-line checks, and :class:`Entry`, the base of
every kinded entry. Stdlib only."""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from ..errors import InputError

class ConfigError(InputError):
    """A config problem, reported with the dotted key it concerns."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


def choice(key: str, value: str, options: tuple[str, ...] | list[str]) -> None:
    if value not in options:
        close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(key, f"'{value}' is not one of {', '.join(options)}{hint}")


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


SEED_LIMIT = 2**31
"""Seeds are in ``0..SEED_LIMIT-1``: numpy refuses negative seeds, and the trainer adds ``1000 x rank``."""


def check_seed(key: str, seed: int) -> None:
    check(0 <= seed < SEED_LIMIT, key, f"{seed} must be in 0..{SEED_LIMIT - 1} (numpy refuses negative seeds)")


def check_finite(node: Any, prefix: str = "") -> None:
    """Every float of a config tree (dataclasses, lists, dicts) is finite; raises ConfigError naming the first that is
    not. ``inf`` and ``nan`` pass checks written as ``x > 0`` or ``x >= 0`` and fail only at run time."""
    if isinstance(node, float):
        check(math.isfinite(node), prefix, f"{node} is not a finite number")
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            check_finite(getattr(node, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(node, dict):
        for name, value in node.items():
            check_finite(value, f"{prefix}.{name}" if prefix else str(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_finite(value, f"{prefix}[{i}]")


def check_data_sizes(cfg: Any) -> None:
    """data.img_size and data.num_frames are >= 1: checked before any check divides by them."""
    d = cfg.data
    check(d.img_size >= 1, "data.img_size", f"{d.img_size} must be >= 1 (pixels)")
    check(d.num_frames >= 1, "data.num_frames", f"{d.num_frames} must be >= 1")


class Entry:
    """Base of every kinded entry: :meth:`check` validates what types alone cannot (nothing, by default)."""

    def check(self, key: str, cfg: Any) -> None:
        """Raise :class:`ConfigError` naming ``key`` + the sub-key for a bad value; ``cfg`` is the whole config."""



_check, _choice, _check_seed = check, choice, check_seed  # the names the schemas were written with
