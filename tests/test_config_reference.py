"""docs/config-reference.md: generated from the schemas, complete, and up to date.

Completeness is checked against ``dataclasses.fields`` (what the loader accepts), not against the generator's own
reading of the class bodies, so a field the AST pass misses, or a kind left out, fails here.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import gen_config_reference as gen  # noqa: E402


@pytest.fixture(scope="module")
def text() -> str:
    return gen.generate()


def _tables(text: str) -> list[tuple[str, list[str]]]:
    """(heading line, the keys in the first column of the table under it), in order."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            out.append((line, []))
        elif line.startswith("| `") and out:
            out[-1][1].append(re.match(r"\| `([^`]+)`", line).group(1))
    return out


def test_every_key_of_every_registered_kind(text):
    tables = _tables(text)
    families = gen._families()
    assert {"backbones", "maskings", "targets", "heads", "losses", "datasets"} <= set(families)
    for family, kinds in families.items():
        for name, schema in kinds.items():
            if schema is None:  # a kind without keys: listed by name
                assert any(h.startswith("#### ") and f"`{name}`" in h for h, _ in tables), (family, name)
                continue
            found = [keys for h, keys in tables if h.startswith("#### ") and f"`{name}`" in h.split("(")[0]
                     and h.endswith(f"({schema.__name__})")]
            assert found, f"{family} kind {name} ({schema.__name__}) has no section"
            expected = {f.name for f in dataclasses.fields(schema)}
            assert any(set(keys) == expected for keys in found), (family, name, found)


def test_every_key_of_every_task(text):
    tables = _tables(text)
    for task, schema in gen._task_schemas().items():
        start = next(i for i, (h, _) in enumerate(tables) if h == f"### `task: {task}` ({schema.__name__})")
        block = tables[start:]
        end = next((i for i, (h, _) in enumerate(block[1:], 1) if h.startswith(("### ", "## "))), len(block))
        documented = [key for _, keys in block[:end] for key in keys]
        assert len(documented) == len(set(documented)), task

        def leaves(cls: type, prefix: str) -> set[str]:
            out = set()
            for f in dataclasses.fields(cls):
                value = getattr(cls(), f.name)
                if dataclasses.is_dataclass(value) and f.name not in getattr(cls, "KINDED", {}):
                    out |= leaves(type(value), f"{prefix}{f.name}.")
                else:
                    out.add(f"{prefix}{f.name}")
            return out

        assert set(documented) == leaves(schema, ""), task


def test_field_docstrings_are_read_inherited_and_overridden():
    @dataclasses.dataclass
    class Base:
        a: int = 1
        """Base's a."""
        b: str = "x"
        """Base's b."""
        c: float = 0.5

    @dataclasses.dataclass
    class Child(Base):
        b: str = "y"
        """Child's b."""
        d: bool = False
        """Child's d,
        on two lines."""

    assert gen.field_docstrings(Child) == {"a": "Base's a.", "b": "Child's b.", "d": "Child's d,\non two lines."}


def test_rows_carry_type_default_and_docstring(text):
    assert ("| `patch_size` | `int` | `16` | Spatial patch size in pixels; must divide data.img_size. |" in text)
    # An inherited field (TargetConfig.weight) documented under a subclass's kind, and a task's own default
    # (fine-tuning's batch 8, not DataConfig's 32).
    pixel = text.split("#### `pixel` (PixelTargetConfig)")[1].split("####")[0]
    assert "| `weight` | `float` | `1.0` | Weight of this target's loss in the total loss. |" in pixel
    finetune = text.split("### `task: finetune`")[1].split("### ")[0]
    assert "| `data.batch_size` | `int` | `8` |" in text.split("### `task: finetune`")[1]
    assert "| `init` | `Optional[str]` |" in finetune


def test_committed_reference_is_up_to_date(text):
    committed = gen.OUTPUT.read_text() if gen.OUTPUT.exists() else ""
    assert committed == text, f"docs/config-reference.md is stale: run {gen.COMMAND} (or make docs) and commit it"
