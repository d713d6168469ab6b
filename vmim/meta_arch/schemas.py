"""Torch-free schemas of the method's kinds: per-token losses and token sets, and their registration lines (the code:
:mod:`vmim.meta_arch.losses`, :mod:`vmim.meta_arch.token_sets`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config.checks import Entry, _check
from ..config.registry import define_family, register


@dataclass
class MSELossConfig(Entry):
    """Mean squared error per token, averaged over features (MAE, VideoMAE, MaskFeat)."""

    kind: str = "mse"


@dataclass
class SmoothL1LossConfig(Entry):
    """Huber-style smooth L1 (MVD's feature loss)."""

    kind: str = "smooth_l1"
    beta: float = 1.0
    """Below |error| = beta the loss is quadratic, above it linear."""

    def check(self, key: str, cfg: Any) -> None:
        _check(self.beta > 0, f"{key}.beta", f"{self.beta} must be positive")


@dataclass
class L1LossConfig(Entry):
    """Mean absolute error per token (SimMIM)."""

    kind: str = "l1"


@dataclass
class CosineLossConfig(Entry):
    """1 - cosine similarity per token (feature mimicking)."""

    kind: str = "cosine"


define_family("losses", "loss", default_kind="mse", plural="losses")
define_family("token_sets", "token set")

_L = "vmim.meta_arch.losses"
register("losses", "mse", MSELossConfig, f"{_L}:mse_loss")
register("losses", "smooth_l1", SmoothL1LossConfig, f"{_L}:smooth_l1_loss")
register("losses", "l1", L1LossConfig, f"{_L}:l1_loss")
register("losses", "cosine", CosineLossConfig, f"{_L}:cosine_loss")

_T = "vmim.meta_arch.token_sets"
register("token_sets", "masked", None, f"{_T}:masked", info={"reads": ("encoder",)})
register("token_sets", "visible", None, f"{_T}:visible", info={"reads": ("encoder",)})
register("token_sets", "decoder_kept", None, f"{_T}:decoder_kept", info={"reads": ("encoder", "decoder")})
