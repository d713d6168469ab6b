"""Typed run configuration, torch-free: the loader (YAML, ``_base_``, overrides, one error naming the key), the run
sections every task shares, the task schemas and the one registration table of kinds.

==================  ==========================================================================================
module              what it holds
==================  ==========================================================================================
``checks``          :class:`ConfigError`, one-line checks, :class:`Entry` (base of every kinded entry)
``registry``        the registration table: ``register(family, name, schema, builder)``, families, lazy registries
``entries``         building one kinded entry from a mapping (its kind picks the dataclass)
``run``             data / optim / train / log / checkpoint sections, :class:`RunConfig`, token grids, common checks
``pretrain``        the pretraining schema :class:`Config` and its checks
``finetune``        the supervised schema :class:`FinetuneConfig` (fine-tuning, eval, probe) and its checks
``tasks``           the TASKS table: task -> schema and runner
``loader``          YAML files, ``_base_``, overrides -> a validated config
==================  ==========================================================================================

Kind schemas (ViT, maskings, targets, heads, losses, datasets) live beside their code in the torch-free
``schemas.py`` of each package and register themselves (:mod:`vmim.config.registry`).

Validation covers every value used at run time (issue 19): a value that passes here must not fail later. Decisions:
  * Every float key must be finite (:func:`check_finite`, over the whole config tree): an ``inf`` learning rate or a
    ``nan`` mean passes every range check written as ``x > 0`` and poisons the run much later.
  * Sizes are checked first (``data.img_size``, ``data.num_frames`` >= 1), before any check divides by them.
  * Geometry the checks need (a backbone's depth, an MViT's stages) is read from the size tables in
    ``vmim/models/schemas.py``, which the models build from: one table, no copy.
  * Seeds are in ``0..2**31-1``: numpy refuses a negative seed (``np.random.seed``, ``default_rng``), and the trainer
    adds ``1000 x rank`` to ``train.seed``.
  * Disk checks (lists, folders, ``output_dir``) are :mod:`vmim.preflight`'s, not this package's.
"""

from .checks import ConfigError, Entry, check_data_sizes, check_finite
from .entries import build_entry, fill_kinded_defaults
from .finetune import FinetuneConfig
from .loader import apply_overrides, build_config, config_to_yaml, load_config, load_dataclass
from .pretrain import MASK_SECTIONS, Config, token_sets
from .registry import LazyRegistry, family, kinds, register, schemas
from .run import (IMAGENET_MEAN, IMAGENET_STD, CheckpointConfig, DataConfig, LogConfig, OptimConfig, RunConfig,
                  TrainConfig, stage_grids, video_grid)
from .tasks import TASKS, task_schemas

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "MASK_SECTIONS", "TASKS", "CheckpointConfig", "Config", "ConfigError",
    "DataConfig",
    "Entry", "FinetuneConfig", "LazyRegistry", "LogConfig", "OptimConfig", "RunConfig", "TrainConfig",
    "apply_overrides", "build_config", "build_entry", "check_data_sizes", "check_finite", "config_to_yaml", "family",
    "fill_kinded_defaults", "kinds", "load_config", "load_dataclass", "register", "schemas", "stage_grids",
    "task_schemas", "token_sets", "video_grid",
]

_FAMILY_MAPPINGS = {"BACKBONES": "backbones", "MASKINGS": "maskings", "DECODER_MASKINGS": "decoder_maskings",
                    "TARGETS": "targets", "HEADS": "heads", "LOSSES": "losses", "DATASETS": "datasets"}


def __getattr__(name: str):
    """Names of earlier versions, for code written against the single ``vmim/config.py``: the per-family
    ``{kind: dataclass}`` mappings (``vmim.config.MASKINGS`` ...), ``FAMILIES`` and ``TOKEN_SETS``, derived from the
    registration table on access, and the schemas and tables that moved beside their code (``ViTConfig``,
    ``POS_EMBEDS``, ...), found in the schema modules. vmim's own code imports them from where they live."""
    if name in _FAMILY_MAPPINGS:
        return family(_FAMILY_MAPPINGS[name]).kinds
    if name == "FAMILIES":
        from .registry import families

        return families()
    if name == "TOKEN_SETS":
        return token_sets()
    if not name.startswith("_"):  # a name that moved to a package's schema module (ViTConfig, POS_EMBEDS, ...)
        import importlib

        from .registry import schema_modules

        for module in schema_modules():
            found = getattr(importlib.import_module(module), name, None)
            if found is not None:
                return found
    raise AttributeError(f"module 'vmim.config' has no attribute '{name}'")
