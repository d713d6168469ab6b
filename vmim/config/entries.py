"""Building one kinded entry (a backbone, a masking, a target with its head and loss, a dataset) from a plain
mapping: its kind picks the dataclass from the registration table, which must hold every key given. Torch-free."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from . import registry
from .checks import ConfigError, _check, _choice
from .registry import Family


def fill_kinded_defaults(cfg: Any) -> None:
    """Each kinded section of ``cfg`` still None becomes its family's default entry."""
    for section, name in type(cfg).KINDED.items():
        if getattr(cfg, section) is None:
            setattr(cfg, section, build_entry(section, {}, registry.family(name)))

def _build_mapping(key: str, raw: Any, family: Family) -> dict:
    _check(isinstance(raw, dict), key, f"must be a mapping of named entries, got {raw!r}")
    return {str(name): build_entry(f"{key}.{name}", entry, family, default_kind=str(name))
            for name, entry in raw.items()}


def build_entry(key: str, raw: Any, family: Family, default_kind: str | None = None) -> Any:
    """One kinded entry: its kind picks the dataclass, which must hold every key given.

    Raises:
        ConfigError: unknown kind, a key of another kind of the family, an unknown key, or a bad value.
    """
    raw = dict(raw or {}) if isinstance(raw, (dict, DictConfig)) or raw is None else raw
    _check(isinstance(raw, dict), key, f"must be a mapping, got {raw!r}")
    kind = raw.get(family.kind_field) or family.default_kind or default_kind
    _choice(f"{key}.{family.kind_field}", str(kind), list(family.kinds))
    cls = family.kinds[kind]
    own = {f.name for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in own:
            owners = sorted(k for k, c in family.kinds.items() if name in {f.name for f in dataclasses.fields(c)})
            if owners:
                article = "an" if str(kind)[0] in "aeiou" else "a"
                raise ConfigError(f"{key}.{name}", f"is not a key of {article} {kind} {family.noun}; it belongs to "
                                  f"{', '.join(owners)} {family.plural or family.noun + 's'}")
            close = difflib.get_close_matches(str(name), sorted(own), n=1, cutoff=0.5)
            hint = f" (did you mean '{key}.{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}.{name}", f"unknown key{hint}")
    nested = {name: raw.pop(name, None) for name, _ in family.nested}
    raw[family.kind_field] = kind
    schema = OmegaConf.structured(cls)
    OmegaConf.set_struct(schema, True)
    entry = OmegaConf.to_object(_merge_checked(schema, raw, schema, key))
    for name, sub_family in family.nested:
        setattr(entry, name, build_entry(f"{key}.{name}", nested[name], registry.family(sub_family)))
    return entry


def _merge_checked(base: DictConfig, new: Any, schema: DictConfig, prefix: str) -> DictConfig:
    """OmegaConf merge whose errors become ConfigError with the full dotted key (``prefix`` + the node's key)."""
    def full(key: Any) -> str:
        key = str(key or "?")
        return f"{prefix}.{key}" if prefix else key

    try:
        return OmegaConf.merge(base, new)  # type: ignore[return-value]
    except ConfigKeyError as err:
        key = err.full_key or str(err.key)
        raise ConfigError(full(key), f"unknown key{_suggest_key(schema, key, prefix)}") from None
    except ValidationError as err:
        raise ConfigError(full(err.full_key), f"invalid value: {err.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(full(getattr(err, "full_key", None)), str(err).splitlines()[0]) from None


def _suggest_key(schema: DictConfig, key: str, prefix: str) -> str:
    """' (did you mean 'model.patch_size'?)' for a misspelled key, else ''."""
    parts = key.split(".")
    node: Any = schema
    for part in parts[:-1]:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
        else:
            return ""
    if not isinstance(node, DictConfig):
        return ""
    names = [str(k) for k in node.keys()]
    close = difflib.get_close_matches(parts[-1], names, n=1, cutoff=0.5)
    full = ".".join(([prefix] if prefix else []) + parts[:-1] + close)
    return f" (did you mean '{full}'?)" if close else ""
