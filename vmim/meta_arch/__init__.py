"""Methods: backbone + heads + targets + losses (pretraining). The package face is lazy (PEP 562), so the torch-free
schema module imports without torch."""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "LOSSES": "losses", "build_loss": "losses", "MaskedModeling": "masked_modeling", "TOKEN_SETS": "token_sets",
    "build_method": "build", "Classification": "classification", "build_classification": "classification",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
