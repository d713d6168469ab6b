"""Lazy package faces (PEP 562): a package's ``__init__`` names what it exports and the module each name lives in,
and a name is imported from there on first use. So importing a package's torch-free schema module (config
validation) does not import the package's torch code."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``exports`` maps a public name to its submodule (relative name)."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f".{exports[name]}", package), name)

    return __getattr__
