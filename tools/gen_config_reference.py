"""Write docs/config-reference.md from the config schemas: every key, its type, default and docstring.

    .venv/bin/python tools/gen_config_reference.py            # rewrite docs/config-reference.md
    .venv/bin/python tools/gen_config_reference.py --check    # exit 1 if the committed file is stale

The reference is generated, never written by hand, so it cannot drift from the code (the way ``vmim list`` is
derived from the registries); ``tests/test_config_reference.py`` fails when the committed file is stale.

Decisions:
  * Two functions are the only places that know where schemas live: :func:`_families` (family -> registered
    name -> schema dataclass) and :func:`_task_schemas` (task -> top-level dataclass). Everything else works on
    plain dataclasses, so moving the schemas (one registration table, ``schemas.py`` per package) means editing
    those two functions only.
  * Field docs are attribute docstrings (a string literal right after the field in the class body). Python
    keeps none of them at run time, so they are read with :mod:`ast` from each class's own source
    (:func:`inspect.getsource`); the MRO is walked so an inherited field keeps its base class's docstring, and a
    subclass that re-documents a field wins.
  * Defaults of a task's sections come from an instance of the task schema (``FinetuneConfig().data.batch_size``
    is 8, not DataConfig's 32), so a section shared by two tasks is listed under each with that task's defaults.
    A kinded section (``model``, ``masking``) shows the kind it defaults to and links to its family.
  * Kinds that share one schema (``vit_tiny`` ... ``vit_giant``) are listed together with one table.
  * Torch-free: only the config modules are imported, so generating takes well under a second.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "docs" / "config-reference.md"
COMMAND = ".venv/bin/python tools/gen_config_reference.py"


def _families() -> dict[str, dict[str, type | None]]:
    """Family (``backbones``, ``maskings``, ...) -> registered name -> the kind's schema dataclass (None: a kind
    without keys)."""
    from vmim.config.registry import families

    return {name: dict(entry.kinds) for name, entry in families().items()}


def _task_schemas() -> dict[str, type]:
    """``task`` value -> its top-level config dataclass."""
    from vmim.config import task_schemas

    return dict(task_schemas())


# ----------------------------------------------------------------------------------------------------
# Reading a dataclass: field docstrings, types, defaults
# ----------------------------------------------------------------------------------------------------


def _own_docstrings(cls: type) -> dict[str, str]:
    """Field name -> the string literal right after its annotated assignment in ``cls``'s own body."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = next((node.body for node in ast.parse(source).body if isinstance(node, ast.ClassDef)), [])
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_docstrings(cls: type) -> dict[str, str]:
    """Field name -> docstring for every field of dataclass ``cls``, inherited ones included (the most derived
    class that documents a field wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_docstrings(klass))
    return docs


def _type_text(cls: type, f: dataclasses.Field) -> str:
    """The field's annotation as written (``Optional[int]``, ``List[float]``)."""
    if isinstance(f.type, str):
        return f.type
    if isinstance(f.type, type):
        return f.type.__name__
    return str(f.type).replace("typing.", "")


def _section_class(cls: type, f: dataclasses.Field) -> type | None:
    """The dataclass of a nested plain section (``data: DataConfig``), else None."""
    try:
        hint = typing.get_type_hints(cls).get(f.name)
    except Exception:  # an annotation that does not evaluate: treat the field as a leaf
        return None
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _yaml_text(value: Any) -> str:
    """``value`` as it would be written in a config file (flow style, one line)."""
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (int,)):
        return str(value)
    if isinstance(value, str):
        return value if value and value.strip() == value and ":" not in value else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    """One table cell: a paragraph on one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(family: str) -> str:
    return f"#family-{family.replace('_', '-')}"


# ----------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------


def _kind_of(entry: Any, kinds: dict[str, type]) -> str | None:
    """The registered name an entry instance carries (its ``kind`` or ``backbone`` value)."""
    for f in dataclasses.fields(entry):
        value = getattr(entry, f.name)
        if isinstance(value, str) and kinds.get(value) is type(entry):
            return value
    return None


def _rows(cls: type, instance: Any, prefix: str, families: dict[str, dict[str, type]], kinded: dict[str, str],
          mappings: dict[str, str], sections: list[tuple[str, type, Any]]) -> list[str]:
    """Table rows of ``cls``'s leaf fields; nested plain sections are appended to ``sections`` instead."""
    docs = field_docstrings(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(instance, f.name) if instance is not None else _default(f)
        section = _section_class(cls, f)
        if section is not None:
            sections.append((key, section, value))
            continue
        type_text, default = f"`{_type_text(cls, f)}`", "required" if value is dataclasses.MISSING else None
        if key in kinded:
            family = kinded[key]
            type_text = f"a [{family}]({_anchor(family)}) entry"
            name = _kind_of(value, families[family]) if dataclasses.is_dataclass(value) else None
            default = f"`{name}`" if name else "—"
        elif key in mappings:
            family = mappings[key]
            type_text = f"name → a [{family}]({_anchor(family)}) entry"
        elif value is None and _type_text(cls, f) == "Any":
            default = "—"
        if default is None:
            default = f"`{_yaml_text(value)}`"
        rows.append(f"| `{key}` | {type_text} | {default} | {_cell(docs.get(f.name, ''))} |")
    return rows


def _table(rows: list[str]) -> list[str]:
    return ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]


def _class_doc(cls: type) -> list[str]:
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(f"{cls.__name__}("):  # dataclass's generated signature: no docstring
        return []
    return [_cell(inspect.cleandoc(doc)), ""]


def _task_section(task: str, schema: type, families: dict[str, dict[str, type]]) -> list[str]:
    kinded = dict(getattr(schema, "KINDED", {}))
    mappings = dict(getattr(schema, "MAPPINGS", {}))
    out = [f"### `task: {task}` ({schema.__name__})", "", *_class_doc(schema)]
    sections: list[tuple[str, type, Any]] = []
    out += _table(_rows(schema, schema(), "", families, kinded, mappings, sections))
    while sections:
        key, cls, instance = sections.pop(0)
        nested: list[tuple[str, type, Any]] = []
        out += [f"#### `{key}` ({cls.__name__})", "", *_class_doc(cls)]
        out += _table(_rows(cls, instance, f"{key}.", families, kinded, mappings, nested))
        sections = nested + sections
    return out


def _family_section(family: str, kinds: dict[str, type], families: dict[str, dict[str, type]]) -> list[str]:
    out = [f'<a id="{_anchor(family)[1:]}"></a>', "", f"### {family}", ""]
    groups: dict[type | None, list[str]] = {}
    for name, schema in kinds.items():
        groups.setdefault(schema, []).append(name)
    for schema, names in groups.items():
        listed = ", ".join(f"`{n}`" for n in names)
        if schema is None:
            out += [f"#### {listed} (no keys)", ""]
            continue
        out += [f"#### {listed} ({schema.__name__})", "", *_class_doc(schema)]
        out += _table(_rows(schema, None, "", families, {}, {}, []))
    return out


def generate() -> str:
    """The whole of docs/config-reference.md."""
    families, tasks = _families(), _task_schemas()
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated by tools/gen_config_reference.py from the config schemas; do not edit. Regenerate: {COMMAND}"
        " (or make docs). -->",
        "",
        "Every key a config file or a `key=value` override may set: its type, its default and what it does. A "
        "config's `task` picks its top-level schema; a kinded entry (`model`, `masking`, `targets.<name>`, "
        "`data.datasets.<name>`, a target's `head` and `loss`) takes the keys of the kind it names, listed under "
        "[Kinds](#kinds). A default of — is an entry filled with its family's default kind. How files combine "
        "(`_base_`, `_replace_`, `~key`) is in [configuration.md](configuration.md).",
        "",
        "## Tasks",
        "",
    ]
    for task, schema in tasks.items():
        out += _task_section(task, schema, families)
    out += ["## Kinds", "", "Registered names per family (the same as `vmim list`); kinds sharing a schema share a "
            "table.", ""]
    for family, kinds in families.items():
        out += _family_section(family, kinds, families)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs, write nothing")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run {COMMAND}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
