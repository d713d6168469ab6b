"""The one registration table: every kind of every family (a backbone, a masking, a target, ...) is registered once,
as its config schema plus a lazy path to the code that builds it.

``register("maskings", "tube", TubeMaskingConfig, "vmim.masking.strategies:tube_mask", count=...)`` is the only line
a new kind adds to existing files. Everything else derives from this table:

* the config loader picks an entry's dataclass by its ``kind`` (:func:`schemas`), so validation knows every kind;
* each package's registry (``vmim.masking.MASKINGS``, ``vmim.models.BACKBONES``, ``vmim.targets.TARGETS``, ...)
  is a :class:`LazyRegistry` over this table, resolving a path when a kind is first built;
* ``vmim list`` and ``docs/config-reference.md`` print it.

Decisions, and why:

* **Schemas live beside their code, in torch-free ``schemas.py`` modules** (``vmim/models/schemas.py``,
  ``vmim/masking/schemas.py``, ...), which hold the registration lines. Builders are named by a ``module:attr``
  string and imported only when a kind is built, so loading and validating a config never imports torch (a broken
  config still fails in well under a second).
* **The table finds the schema modules by name** in :data:`SCHEMA_PACKAGES`: each package's ``schemas.py``, then
  any ``<name>_schema.py`` beside it (imported on the first lookup, not when ``vmim.config`` is imported). This is
  the entry-point pattern: the loader sits at the bottom of the import order and must not import the packages above
  it, and the packages' schema modules import the loader's checks. So a new kind is new files only: its code, and a
  ``<name>_schema.py`` holding its dataclass and its one ``register`` line (V-JEPA's multi-block masking is the
  example, ``vmim/masking/multi_block_schema.py``).
* **A kind may carry extra lazy paths** (a masking's token count) and plain data (the masks a token set reads) as
  keywords of the same registration, so one line says everything about it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

SCHEMA_PACKAGES = ("vmim.models", "vmim.masking", "vmim.targets", "vmim.meta_arch", "vmim.data")
"""Packages whose torch-free ``schemas`` module, then every ``*_schema`` module (by name), hold ``register`` lines;
in ``vmim list``'s order."""


@dataclass(frozen=True)
class Kind:
    """One registered kind: ``schema`` is its config dataclass (None for a kind without keys), ``builder`` the
    ``module:attr`` path of what builds it, ``paths`` further lazy paths and ``info`` plain data."""

    family: str
    name: str
    schema: Optional[type]
    builder: Optional[str]
    paths: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    module: str = ""
    """The schema module that registered it (what orders the table)."""

    def load(self, role: str = "builder") -> Any:
        """The object at the ``builder`` path (or at ``paths[role]``), imported now."""
        path = self.builder if role == "builder" else self.paths[role]
        if path is None:
            raise LookupError(f"{self.family} kind '{self.name}' has no {role}")
        module, _, attr = path.partition(":")
        return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Family:
    """How a family's entries name their kind: ``noun`` for messages, ``kind_field`` (``kind``; a backbone's is
    ``backbone``), ``default_kind`` for an entry that names none (None: the entry's own key, as targets and datasets
    do), ``nested`` kinded sub-entries as (field, family name), and ``extends``: another family whose kinds this one
    also admits when their schema's ``admit_attr`` class attribute is not False (decoder maskings)."""

    name: str
    noun: str
    module: str = ""
    kind_field: str = "kind"
    default_kind: Optional[str] = None
    nested: tuple = ()
    plural: str = ""
    extends: Optional[str] = None
    admit_attr: str = ""

    @property
    def kinds(self) -> dict[str, type]:
        """Name -> config dataclass of every kind this family admits."""
        own = schemas(self.name)
        if self.extends is None:
            return own
        other = {n: c for n, c in schemas(self.extends).items() if getattr(c, self.admit_attr, True) is not False}
        return {**own, **other}


_TABLE: dict[str, dict[str, Kind]] = {}
_FAMILIES: dict[str, Family] = {}
_loaded = False


def define_family(name: str, noun: str, **spec: Any) -> Family:
    """Declare a family (once, in the schema module of the package that builds it)."""
    if name in _FAMILIES:
        raise ValueError(f"family '{name}' is defined twice")
    _FAMILIES[name] = family = Family(name, noun, _caller_module(), **spec)
    _TABLE.setdefault(name, {})
    return family


def family(name: str) -> Family:
    """The :class:`Family` called ``name`` (e.g. "targets")."""
    _discover()
    if name not in _FAMILIES:
        raise KeyError(f"no family '{name}'; defined: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def register(family: str, name: str, schema: Optional[type] = None, builder: Optional[str] = None,
             info: Optional[dict] = None, **paths: str) -> None:
    """Register ``name`` in ``family``; a name registered twice is an error (two modules claiming one kind)."""
    kinds = _TABLE.setdefault(family, {})
    if name in kinds:
        raise ValueError(f"{family} kind '{name}' is registered twice")
    kinds[name] = Kind(family, name, schema, builder, dict(paths), dict(info or {}), _caller_module())


def _caller_module() -> str:
    return sys._getframe(2).f_globals.get("__name__", "")


def schema_modules() -> list[str]:
    """The modules :func:`_discover` imports: each package's ``schemas``, then its ``*_schema`` modules by name."""
    out = []
    for package in SCHEMA_PACKAGES:
        path = importlib.import_module(package).__path__
        extra = sorted(m.name for m in pkgutil.iter_modules(path) if m.name.endswith("_schema"))
        out += [f"{package}.schemas", *(f"{package}.{name}" for name in extra)]
    return out


def _discover() -> None:
    """Import every schema module once, then order families and kinds by :func:`schema_modules` (registration order
    inside a module): a test or tool that imports one schema module first must not change ``vmim list``'s order."""
    global _loaded
    if not _loaded:
        _loaded = True
        modules = schema_modules()
        for module in modules:
            importlib.import_module(module)
        rank = {m: i for i, m in enumerate(modules)}
        order = sorted(_FAMILIES, key=lambda f: (rank.get(_FAMILIES[f].module, len(rank)), list(_FAMILIES).index(f)))
        _FAMILIES.update({f: _FAMILIES.pop(f) for f in order})
        for family_name, table in list(_TABLE.items()):
            names = sorted(table, key=lambda n: (rank.get(table[n].module, len(rank)), list(table).index(n)))
            _TABLE[family_name] = {n: table[n] for n in names}


def kinds(family: str) -> dict[str, Kind]:
    """Name -> :class:`Kind` of ``family``, in registration order."""
    _discover()
    if family not in _TABLE:
        raise KeyError(f"no family '{family}'; registered families: {', '.join(_TABLE)}")
    return _TABLE[family]


def families() -> dict[str, Family]:
    """Every defined family, by name."""
    _discover()
    return dict(_FAMILIES)


def schemas(family: str) -> dict[str, type]:
    """Name -> config dataclass of ``family`` (what the loader accepts)."""
    return {name: kind.schema for name, kind in kinds(family).items()}


def names(family: str) -> tuple[str, ...]:
    return tuple(kinds(family))


class LazyRegistry(Mapping):
    """A package's registry as a read-only mapping over one family: ``REG[name]`` imports and returns the kind's
    builder (or its ``role`` path). Iteration order is registration order."""

    def __init__(self, family: str, role: str = "builder"):
        self.family, self.role = family, role

    def __getitem__(self, name: str) -> Callable[..., Any]:
        table = kinds(self.family)
        if name not in table:
            noun = _FAMILIES[self.family].noun if self.family in _FAMILIES else self.family
            raise KeyError(f"unknown {noun} kind '{name}'; registered: {', '.join(sorted(table))}")
        return table[name].load(self.role)

    def __iter__(self) -> Iterator[str]:
        return iter(kinds(self.family))

    def __len__(self) -> int:
        return len(kinds(self.family))

    def __contains__(self, name: object) -> bool:
        return name in kinds(self.family)

    def __repr__(self) -> str:
        return f"LazyRegistry({self.family!r}: {', '.join(self)})"
