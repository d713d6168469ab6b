"""Methods: backbone + heads + targets + losses (pretraining). The package face is lazy (PEP 562), so the torch-free
schema module imports without torch."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LOSSES": "losses", "build_loss": "losses", "MaskedModeling": "masked_modeling", "TOKEN_SETS": "token_sets",
    "build_method": "build", "Classification": "classification", "build_classification": "classification",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
