"""tools/demo_methods.py (the probe and motion fine-tune figures of SimMIM, FastMIM-P and LoMaR): each method's
demo-scale pretraining config is valid and builds, and its fine-tuning architecture matches it, so ``load_init``
takes the run (the tool itself takes ~50 CPU minutes and is run by hand)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import demo_methods  # noqa: E402
from vmim.config import load_config, video_grid  # noqa: E402
from vmim.meta_arch import build_method  # noqa: E402
from vmim.models.vit_init import ARCH_KEYS  # noqa: E402


@pytest.mark.parametrize("name", sorted(demo_methods.METHODS))
def test_demo_method_configs_build_and_match_their_finetuning(name):
    method = demo_methods.METHODS[name]
    pre = load_config(REPO / method["config"], [*demo_methods.DEMO_SCALE, *method["pretrain"]])
    ft = load_config(REPO / "configs/demo/motion_finetune.yaml", method["finetune"], task="finetune")
    assert video_grid(pre) == video_grid(ft) == (2, 4, 4)
    assert list(pre.data.datasets) == ["digits_motion"] and pre.train.epochs == 20
    for key in (*ARCH_KEYS, "tubelet_size", "rel_pos_bias" if pre.model.rel_pos_bias == "per_block" else "in_chans",
                "layer_scale"):
        assert getattr(pre.model, key) == getattr(ft.model, key), f"model.{key}"
    with torch.device("meta"):
        assert build_method(pre).backbone.embed_dim == 192
