"""The momentum target's collapse gauge (``extra_metrics()["target_spread"]``, :mod:`vmim.targets.momentum`): the
per-channel std of its latest targets over samples and tokens, averaged over channels, consumed when read."""

from __future__ import annotations

import torch

from vmim.models import InputNormalizer
from vmim.models.vit import vit_test
from vmim.targets.momentum import MomentumTarget


def _target(norm: bool = True, pos_embed: str = "sincos_3d") -> tuple[MomentumTarget, torch.nn.Module]:
    torch.manual_seed(0)
    encoder = vit_test(patch_size=4, tubelet_size=2, pos_embed=pos_embed).eval()
    normalizer = InputNormalizer([0.5] * 3, [0.25] * 3, 2)
    return MomentumTarget((2, 4, 4), 3, norm=norm, encoder=encoder, normalizer=normalizer), encoder


def test_spread_is_the_std_over_samples_and_tokens_and_is_consumed():
    target, _ = _target()
    assert target.extra_metrics() == {}
    out = target(torch.rand(3, 3, 4, 16, 16))
    expected = out.reshape(-1, out.shape[-1]).std(dim=0).mean()
    spread = target.extra_metrics()["target_spread"]
    assert abs(spread - float(expected)) < 1e-6 and 0.05 < spread < 1.0
    assert target.extra_metrics() == {}  # read once


def test_spread_is_zero_when_the_encoder_maps_everything_to_one_vector():
    """A collapsed encoder (every token the same output: weights zeroed, no position table) has spread 0, whatever
    the clip."""
    target, encoder = _target(norm=False, pos_embed="none")
    with torch.no_grad():
        for p in encoder.parameters():
            p.zero_()
    target(torch.rand(2, 3, 4, 16, 16))
    assert target.extra_metrics()["target_spread"] < 1e-6
