"""What ``vmim list`` prints: every family of the registration table (:mod:`vmim.config.registry`), with each kind's
one-line summary (its config dataclass's docstring, where a user reads about its keys) and each backbone's size."""

from __future__ import annotations

import inspect

from .config import registry
from .data.schemas import DECODERS, INDEX_FORMATS

SECTIONS = (
    ("maskings", "maskings (masking.kind, decoder_masking.kind)"),
    ("targets", "targets (targets.<name>.kind)"),
    ("heads", "heads (targets.<name>.head.kind)"),
    ("losses", "losses (targets.<name>.loss.kind)"),
    ("datasets", "dataset kinds (data.datasets.<name>.kind)"),
    ("poolings", "poolings (head.pooling)"),
)
"""Families printed with a summary per kind, in order, after the backbones."""


def package_registries() -> dict[str, list[str]]:
    """Family -> names the package builds (imports torch and the model code: each builder is resolved)."""
    from .data import DATASET_KINDS
    from .data.indexes import INDEX_FORMATS as PACKAGE_INDEX_FORMATS
    from .data.video_decoders import DECODERS as PACKAGE_DECODERS
    from .masking import MASKINGS
    from .meta_arch import LOSSES, TOKEN_SETS
    from .models import BACKBONES, HEADS
    from .targets import TARGETS

    POOLINGS = registry.LazyRegistry("poolings")
    out = {"backbones": BACKBONES, "maskings": MASKINGS, "targets": TARGETS, "heads": HEADS, "losses": LOSSES,
           "token_sets": TOKEN_SETS, "datasets": DATASET_KINDS, "poolings": POOLINGS}
    built = {family: [name for name in reg if callable(reg[name])] for family, reg in out.items()}
    return {**built, "index_formats": list(PACKAGE_INDEX_FORMATS), "decoders": list(PACKAGE_DECODERS)}


def config_registries() -> dict[str, list[str]]:
    """Family -> names the config accepts (torch-free)."""
    out = {name: list(registry.kinds(name)) for name in ("backbones", "maskings", "targets", "heads", "losses",
                                                           "token_sets", "datasets", "poolings")}
    return {**out, "index_formats": list(INDEX_FORMATS), "decoders": list(DECODERS)}


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
    out += backbone_rows() if with_params else [f"  {n}" for n in registry.kinds("backbones")]
    for family, title in SECTIONS:
        out += ["", f"{title}:"] + [f"  {name:<14} {_summary(kind.schema)}"
                                    for name, kind in registry.kinds(family).items()]
    out += ["", "token sets (targets.<name>.token_set):"] + [f"  {n}" for n in registry.kinds("token_sets")]
    out += ["", "index formats (data.datasets.<name>.format):"] + [f"  {n}" for n in INDEX_FORMATS]
    out += ["", "video decoders (data.datasets.<name>.decoder):"] + [f"  {n}" for n in DECODERS]
    return "\n".join(out)
