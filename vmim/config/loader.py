"""Loading a config: YAML files with ``_base_`` inheritance, CLI overrides, kinded entries, one error per problem.

Precedence is ``CLI overrides > experiment YAML > its _base_ files (in order) > dataclass defaults``.
Every key has a type and a default; an unknown key, a key of another kind, a wrong type or an invalid value
raises :class:`~vmim.config.checks.ConfigError` naming the key (and, for a typo, the closest valid key) before any
work starts. An entry's ``kind`` picks its dataclass from the registration table (:mod:`vmim.config.registry`), so
each entry holds exactly the keys of its kind (``norm`` is a key of a pixel target, and a HOG target rejects it,
saying so), and each builder receives only its own sub-config. This module imports neither torch nor model code.

YAML conventions:
  * ``_base_: path`` or a list of paths, relative to the file, merged before the file's own keys.
  * A mapping holding ``_replace_: true`` replaces the inherited mapping instead of merging into it
    (for example to swap the set of targets).
  * CLI overrides are ``key.sub=value``; ``~key.sub`` deletes an entry of a free-form mapping
    (``~targets.hog`` removes the inherited HOG target).
  * Changing an entry's ``kind`` (``targets.pixel.head.kind=linear`` over an inherited decoder head) starts that
    entry afresh from the new kind's defaults plus the keys given with it: keys of the old kind do not carry over.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, List

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .checks import ConfigError, _check, _choice
from . import registry
from .entries import _build_mapping, _merge_checked, build_entry
from .registry import schemas
from .tasks import task_schemas

def load_config(path: str | Path | None = None, overrides: List[str] | None = None, task: str | None = None) -> Any:
    """Load, merge and validate a config; raises ConfigError on any problem.

    The file's ``task`` key (default pretrain) picks the schema; ``task`` given here must match it (a fine-tuning
    command refuses a pretraining file, naming the key)."""
    raw = apply_overrides(_load_yaml_tree(Path(path)) if path is not None else {}, overrides or [])
    if task is not None:
        found = raw.get("task", "pretrain")
        _check(found == task, "task", f"this command takes a '{task}' config, and this one is '{found}'"
               + (f" ({path})" if path is not None else "") + f"; set task: {task}")
    return build_config(raw)


def apply_overrides(raw: dict, overrides: List[str]) -> dict:
    """``raw`` with ``key.sub=value`` overrides merged in and ``~key.sub`` entries deleted."""
    sets, deletes = _split_overrides(overrides)
    for key in deletes:
        _delete_key(raw, key)
    if sets:
        try:
            dotlist = OmegaConf.to_container(OmegaConf.from_dotlist(sets))
        except OmegaConfBaseException as err:
            raise ConfigError(getattr(err, "full_key", None) or "?", str(err).splitlines()[0]) from None
        raw = _deep_merge(raw, dotlist)
    return raw


def build_config(raw: dict) -> Any:
    """A validated config from a merged plain mapping (YAML + overrides); its ``task`` key picks the schema."""
    raw = dict(raw)
    schemas = task_schemas()
    task = raw.get("task", "pretrain")
    _choice("task", str(task), list(schemas))
    cls = schemas[task]
    kinded = {section: raw.pop(section, None) for section in cls.KINDED}
    mappings = {path: _pop_dotted(raw, path) for path in cls.MAPPINGS}
    schema = OmegaConf.structured(cls)
    OmegaConf.set_struct(schema, True)
    merged = _merge_checked(schema, raw, schema, "")
    cfg = OmegaConf.to_object(merged)
    for section, fam in cls.KINDED.items():
        setattr(cfg, section, build_entry(section, kinded[section], registry.family(fam)))
    for path, fam in cls.MAPPINGS.items():
        *parents, last = path.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        setattr(node, last, _build_mapping(path, mappings[path], registry.family(fam)))
    cfg.validate()
    return cfg


def _pop_dotted(raw: dict, path: str) -> Any:
    """Remove and return ``raw[a][b]`` for ``path`` 'a.b' ({} when absent), copying the parents it walks through."""
    *parents, last = path.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        child = dict(child) if isinstance(child, dict) else {}
        node[part] = child
        node = child
    return node.pop(last, None) or {}


def load_dataclass(schema_cls: type, path: str | Path | None, overrides: List[str]) -> Any:
    """Any strict dataclass config (e.g. a cluster profile) from YAML (``_base_`` allowed) plus key=value overrides."""
    raw = _load_yaml_tree(Path(path)) if path is not None else {}
    schema = OmegaConf.structured(schema_cls)
    OmegaConf.set_struct(schema, True)
    merged = _merge_checked(schema, raw, schema, "")
    if overrides:
        merged = _merge_checked(merged, OmegaConf.from_dotlist(overrides), schema, "")
    return OmegaConf.to_object(merged)


def config_to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(cfg)))


def _load_yaml_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError("_base_" if seen else "--config", f"file not found: {path}")
    if path in seen:
        raise ConfigError("_base_", f"inheritance cycle through {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must hold a mapping at the top level")
    bases = data.pop("_base_", [])
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, _load_yaml_tree(path.parent / base, seen + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(base: dict, new: dict) -> dict:
    out = dict(base)
    for key, value in new.items():
        if isinstance(value, dict) and "_replace_" in value:
            replace = value["_replace_"]
            value = {k: v for k, v in value.items() if k != "_replace_"}
            out[key] = value if replace else _deep_merge(out.get(key) or {}, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = dict(value) if _kind_changed(out[key], value) else _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _kind_changed(old: dict, new: dict) -> bool:
    """Whether ``new`` gives an entry another kind (``kind``), or a backbone of another family (``backbone``: a ViT
    size for an MViT one): its keys then start afresh instead of merging into the old kind's."""
    old_kind, new_kind = old.get("kind"), new.get("kind")
    if isinstance(old_kind, str) and isinstance(new_kind, str) and old_kind != new_kind:
        return True
    old_bb, new_bb = old.get("backbone"), new.get("backbone")
    backbones = schemas("backbones")
    return isinstance(old_bb, str) and isinstance(new_bb, str) and backbones.get(old_bb) is not backbones.get(new_bb)


def _split_overrides(overrides: List[str]) -> tuple[List[str], List[str]]:
    sets, deletes = [], []
    for item in overrides:
        if item.startswith("~"):
            deletes.append(item[1:])
        elif "=" in item:
            sets.append(item)
        else:
            raise ConfigError(item, "overrides are written key.sub=value (or ~key.sub to delete)")
    return sets, deletes


def _delete_key(raw: dict, dotted: str) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            break
    if not isinstance(node, dict) or last not in node:
        raise ConfigError(dotted, "cannot delete: no such entry in the config files")
    del node[last]
