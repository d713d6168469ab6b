"""SimMIM (configs/methods/simmim_vit_b.yaml): its masking draws 2x2-token units uniformly at random on images, and
the method, shrunk, pretrains on the built-in digits with a falling loss and starts a per-block fine-tuning backbone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import pretrain_with_falling_loss
from vmim.config import load_config
from vmim.masking import build_mask_generator

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "configs/methods/simmim_vit_b.yaml"


def test_masking_is_uniform_random_mask_units_on_images():
    """Random masking of 2x2-token units: whole units, the exact count, each unit masked with probability 29/49 and
    two neighbouring units both masked with probability 29/49 x 28/48 = 0.35 (block masking gives far more)."""
    cfg = load_config(METHOD, ["data.datasets.digits_images.weight=1"])
    assert cfg.masking.kind == "random"
    gen = build_mask_generator(cfg.masking)
    assert gen.num_masked((1, 14, 14)) == 29 * 4
    grid = (1, 14, 14)
    rng = np.random.default_rng(0)
    masks = np.stack([gen(grid, rng).reshape(14, 14) for _ in range(400)])
    units = masks[:, ::2, ::2]  # one token per 2x2 unit
    assert (masks == units.repeat(2, 1).repeat(2, 2)).all(), "masks are whole 32 px units"
    assert (units.reshape(400, -1).sum(1) == 29).all()  # round(0.6 x 49)
    assert np.abs(units.mean(0) - 29 / 49).max() < 0.1
    pairs = (units[:, :, 1:] & units[:, :, :-1]).mean()
    assert abs(pairs - 29 / 49 * 28 / 48) < 0.02, pairs


@pytest.mark.slow
def test_simmim_pretrains_on_builtin_digits_with_a_falling_loss(tmp_path):
    from vmim.engine.checkpoint import load

    cfg = pretrain_with_falling_loss(METHOD, tmp_path)
    state = load(tmp_path / "checkpoints" / "last.pt")["model"]
    assert "backbone.rel_pos.table" in state and not any(k.startswith("backbone.pos_embed") for k in state)
    assert "backbone.blocks.0.ls1.gamma" in state
    assert torch.count_nonzero(state["backbone.rel_pos.table"]) > 0  # the shared table learned
    # the run directory starts a per-block fine-tuning backbone: every block gets the shared table
    from vmim.models.loading import load_init
    from vmim.models.registry import create_backbone

    ft = dataclasses.replace(cfg.model, dense=False, rel_pos_bias="per_block", fc_norm=True)
    backbone = create_backbone(ft, (1, 4, 4))
    report = load_init(backbone, tmp_path, ft)
    assert any("copied into each of the 2 blocks" in line for line in report), report
    for block in backbone.blocks:
        torch.testing.assert_close(block.rel_pos.table.detach(), state["backbone.rel_pos.table"])
