"""Methods: backbone + heads + targets + losses (pretraining); the classifier for fine-tuning comes next."""

from .losses import LOSSES, build_loss
from .masked_modeling import MaskedModeling
from .token_sets import TOKEN_SETS

__all__ = ["LOSSES", "TOKEN_SETS", "MaskedModeling", "build_loss", "build_method"]


def build_method(cfg) -> MaskedModeling:
    """The pretraining method of a :class:`vmim.config.Config`."""
    return MaskedModeling.from_config(cfg)
