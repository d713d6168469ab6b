"""Every registry of the package in one place: what ``vmim list`` prints and what the registry tests check.

Each family has a package registry (the code that builds a kind) and a config mapping (``vmim.config``: the kind's
dataclass). :func:`package_registries` returns the former's names so a test can assert that both agree; the
descriptions come from the config dataclasses' docstrings, where a user reads about a kind's keys.
"""

from __future__ import annotations

import inspect

from . import config


def package_registries() -> dict[str, list[str]]:
    """Family -> names registered in the package (imports torch and the model code)."""
    from .data import DATASET_KINDS
    from .data.indexes import INDEX_FORMATS
    from .data.video_decoders import DECODERS
    from .masking import MASKINGS
    from .meta_arch import LOSSES, TOKEN_SETS
    from .models import BACKBONES, HEADS
    from .targets import TARGETS

    return {"backbones": list(BACKBONES), "maskings": list(MASKINGS), "targets": list(TARGETS),
            "heads": list(HEADS), "losses": list(LOSSES), "token_sets": list(TOKEN_SETS),
            "datasets": list(DATASET_KINDS), "index_formats": list(INDEX_FORMATS), "decoders": list(DECODERS)}


def config_registries() -> dict[str, list[str]]:
    """Family -> names the config accepts (torch-free)."""
    return {"backbones": list(config.BACKBONES), "maskings": list(config.MASKINGS), "targets": list(config.TARGETS),
            "heads": list(config.HEADS), "losses": list(config.LOSSES), "token_sets": list(config.TOKEN_SETS),
            "datasets": list(config.DATASETS), "index_formats": list(config.INDEX_FORMATS),
            "decoders": list(config.DECODERS)}


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def backbone_rows() -> list[str]:
    """One line per registered backbone: name, width, depth, heads and parameter count (built on the meta device)."""
    import torch

    from .models import BACKBONES

    rows = []
    for name in BACKBONES:
        with torch.device("meta"):
            model = BACKBONES[name]()
        params = sum(p.numel() for p in model.parameters())
        t, h, w = model.patch_size
        kind = "dense only, multiscale" if not hasattr(model, "pos_embed") or not hasattr(model.pos_embed, "kind") \
            else "visible-only or dense"
        rows.append(f"  {name:<22} {params / 1e6:8.1f}M params  dim {model.embed_dim}, depth {model.depth}"
                    f"  ({t}x{h}x{w} px per output token, {kind})")
    return rows


def describe_registries(with_params: bool = True) -> str:
    """The text ``vmim list`` prints."""
    out = ["backbones (model.backbone):"]
    out += backbone_rows() if with_params else [f"  {n}" for n in config.BACKBONES]
    sections = [
        ("maskings (masking.kind, decoder_masking.kind)", config.MASKINGS),
        ("targets (targets.<name>.kind)", config.TARGETS),
        ("heads (targets.<name>.head.kind)", config.HEADS),
        ("losses (targets.<name>.loss.kind)", config.LOSSES),
        ("dataset kinds (data.datasets.<name>.kind)", config.DATASETS),
    ]
    for title, mapping in sections:
        out += ["", f"{title}:"] + [f"  {name:<14} {_summary(cls)}" for name, cls in mapping.items()]
    out += ["", "token sets (targets.<name>.token_set):"] + [f"  {n}" for n in config.TOKEN_SETS]
    out += ["", "index formats (data.datasets.<name>.format):"] + [f"  {n}" for n in config.INDEX_FORMATS]
    out += ["", "video decoders (data.datasets.<name>.decoder):"] + [f"  {n}" for n in config.DECODERS]
    return "\n".join(out)
