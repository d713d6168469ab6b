"""The classification method (:mod:`vmim.meta_arch.classification`) and the pooling registry
(:mod:`vmim.meta_arch.pooling_schema`, :mod:`vmim.models.pooling`).

Known answers: a registered ``mean`` / ``cls`` pooling followed by the backbone's ``fc_norm`` is by definition a ViT's
``global_pool: avg`` / ``token`` (timm's ViT pools exactly so), so the two paths must agree on the same weights; a
checkpoint written by the earlier ``Classifier`` (keys ``backbone.*``, ``head.*``) must load strictly and give
``head(forward_features((x / 255 - mean) / std))``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vmim.config import ConfigError, build_config
from vmim.config.registry import kinds
from vmim.meta_arch.batch_augment import ClipMixup
from vmim.meta_arch.classification import Classification, build_classification
from vmim.models.attentive_pool import AttentivePool
from vmim.models.flops import count_macs, module_macs, step_macs
from vmim.models.pooling import POOLINGS, ClsPool, MeanPool, build_pooling, create_pooling
from vmim.models.vit import vit_test

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def clips(b: int = 2, t: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, t, size, size), dtype=torch.uint8, generator=gen)


def finetune_cfg(**head):
    return build_config({"task": "finetune", "head": head,
                         "model": {"backbone": "vit_test", "patch_size": 4, "cls_token": True, "fc_norm": True},
                         "data": {"img_size": 16, "num_frames": 4, "datasets": {"digits_images": {}}}})


# ----------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------


def test_registered_poolings_and_the_token_only_view():
    assert list(kinds("poolings")) == ["mean", "cls", "attentive"]
    assert list(POOLINGS) == ["mean", "attentive"] and "cls" not in POOLINGS
    tokens, prefix = torch.randn(3, 7, 64), torch.randn(3, 1, 64)
    for name in kinds("poolings"):
        assert create_pooling(name, 64)(tokens, prefix).shape == (3, 64), name
    assert isinstance(create_pooling("mean", 64), MeanPool) and isinstance(create_pooling("cls", 64), ClsPool)
    assert isinstance(create_pooling("attentive", 64), AttentivePool)
    assert [create_pooling(n, 64).reads_prefix for n in kinds("poolings")] == [False, True, False]
    with pytest.raises(KeyError, match="unknown pooling kind 'max'"):
        create_pooling("max", 64)
    with pytest.raises(KeyError, match="cls reads the class token"):
        build_pooling("cls", 64)


def test_cls_pooling_reads_the_class_token():
    """Hand-built: grid tokens all 0, the class token 1..D, a second prefix token -1: the pooled row is 1..D."""
    tokens = torch.zeros(2, 5, 4)
    prefix = torch.stack([torch.arange(1.0, 5.0).expand(2, 4), -torch.ones(2, 4)], dim=1)  # (2, 2, 4)
    torch.testing.assert_close(ClsPool()(tokens, prefix), torch.arange(1.0, 5.0).expand(2, 4), rtol=0, atol=0)
    with pytest.raises(ValueError, match="class token"):
        ClsPool()(tokens, None)


@pytest.mark.parametrize("fc_norm", [True, False])
def test_mean_and_cls_poolings_equal_the_backbones_own(fc_norm):
    """The same weights pooled by the backbone (global_pool avg / token, then fc_norm) and by the registry."""
    torch.manual_seed(0)
    x = clips()
    for pooling, global_pool in (("mean", "avg"), ("cls", "token")):
        backbone = vit_test(patch_size=4, cls_token=True, global_pool=global_pool, fc_norm=fc_norm)
        with torch.no_grad():  # a class token far from the grid tokens: mean and cls pooling must differ
            backbone.cls_token.normal_(0.0, 3.0)
        own = Classification(backbone, 3, MEAN, STD).eval()
        registry = Classification(backbone, 3, MEAN, STD, pooling=pooling).eval()
        with torch.no_grad():
            expected, got = own.features(x), registry.features(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(Classification(backbone, 3, MEAN, STD, pooling="mean").features(x), expected,
                                  atol=1e-3)


def test_cls_pooling_on_a_multiscale_backbone():
    """MViT blocks return (tokens, grid): the class token after the final norm, as its global_pool token."""
    from vmim.models.mvit import mvitv2_test

    torch.manual_seed(0)
    backbone = mvitv2_test(cls_token=True, global_pool="token").eval()
    x = clips(1, t=4, size=64)
    with torch.no_grad():
        got = Classification(backbone, 3, MEAN, STD, pooling="cls").features(x)
        expected = Classification(backbone, 3, MEAN, STD).features(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_cls_pooling_needs_a_class_token():
    with pytest.raises(ValueError, match="model.cls_token=true"):
        Classification(vit_test(patch_size=4), 3, MEAN, STD, pooling="cls")
    with pytest.raises(ConfigError, match="head.pooling.*model.cls_token=true"):
        build_config({"task": "finetune", "head": {"pooling": "cls"}, "model": {"backbone": "vit_test"},
                      "data": {"datasets": {"digits_images": {}}}})
    with pytest.raises(ConfigError, match=r"head\.pooling.*'mena' is not one of mean, cls, attentive; did you mean"):
        finetune_cfg(pooling="mena")


# ----------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------


def test_attentive_pooling_trains_and_counts_its_macs():
    torch.manual_seed(0)
    model = build_classification(finetune_cfg(pooling="attentive"), 5)
    assert any(k.startswith("pool.") for k in model.state_dict())
    x = clips()
    assert module_macs(model, tuple(x.shape)) == count_macs(model, x)
    assert step_macs(model, {"clip": x}) == (module_macs(model, tuple(x.shape)), 0)
    out = model({"clip": x, "label": torch.tensor([1, 4])})
    assert out["logits"].shape == (2, 5) and out["loss"].ndim == 0
    out["loss"].backward()
    assert all(p.grad is not None for p in model.pool.parameters())


def test_training_forward_is_the_soft_target_loss():
    """Without mixing or smoothing the loss is the plain cross-entropy of the logits; with Mixup it is the loss of
    the mixed clips against the mixed targets (the same numpy draw replayed by hand)."""
    torch.manual_seed(0)
    model = Classification(vit_test(patch_size=4), 4, MEAN, STD).eval()
    x, labels = clips(), torch.tensor([0, 3])
    out = model({"clip": x, "label": labels})
    torch.testing.assert_close(out["logits"], model(x), rtol=0, atol=0)
    torch.testing.assert_close(out["loss"], F.cross_entropy(out["logits"], labels))

    model.mixup = ClipMixup(0.8, 0.0, 1.0, 0.0, 0.1, 4)
    np.random.seed(3)
    out = model({"clip": x, "label": labels})
    np.random.seed(3)
    mixed, targets = ClipMixup(0.8, 0.0, 1.0, 0.0, 0.1, 4)(x.float() / 255, labels)
    expected = -(targets * model(mixed).log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(out["loss"], expected)


def test_checkpoint_of_the_earlier_classifier_loads_unchanged():
    """The earlier ``vmim.models.classifier.Classifier`` saved ``backbone.*`` and ``head.*`` (its normalizer's
    statistics are not persistent): a state dict of that layout, built here by hand, loads strictly and gives the
    earlier forward."""
    torch.manual_seed(1)
    cfg = finetune_cfg()
    backbone = vit_test(patch_size=4, cls_token=True, fc_norm=True)
    head = torch.nn.Linear(64, 7)
    old = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
           **{f"head.{k}": v for k, v in head.state_dict().items()}}
    model = build_classification(cfg, int(old["head.weight"].shape[0]))
    assert set(model.state_dict()) == set(old)
    model.load_state_dict(old)
    model.eval()
    x = clips()
    mean, std = (torch.tensor(s).view(1, 3, 1, 1, 1) for s in (cfg.data.mean, cfg.data.std))
    with torch.no_grad():
        expected = head(backbone.eval().forward_features((x.float() / 255 - mean) / std))
        torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)
