"""Attentive pooling and the attentive probe (:mod:`vmim.models.attentive_pool`, :mod:`vmim.engine.attentive_probe`).

The toy problem has a known answer: each sample is 16 tokens, one of which (at a random position) carries a marker
and the class sign (+-1); the 15 others carry a +-3 distractor in the same channel. Averaged, the class sign is 1/16
of a sum whose noise has std 3 sqrt(15) / 16 = 0.73, so no classifier of the mean token beats Phi(0.0625 / 0.73) =
53 % by much; a query that attends to the marked token reads the sign exactly.

In the probe's protocol (:func:`vmim.engine.probe.probe`), the attentive probe is trained per draw on tokens that come
out of the one feature extraction, for every feature set (the raw pixels' tokens are the backbone's patches).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vmim.engine.attentive_probe import TokenFeatures, attentive_probe, extract_tokens, fit_probe
from vmim.models.attentive_pool import AttentivePool, default_heads
from vmim.models.pooling import POOLINGS, MeanPool, build_pooling


def toy(n: int, seed: int, tokens: int = 16, dim: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, tokens, dim) features, (n,) labels in {0, 1}, (n,) position of the token carrying the label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, tokens, dim)).astype(np.float32)
    x[:, :, 0] = 0.0
    x[:, :, 1] = 3.0 * rng.choice([-1.0, 1.0], (n, tokens))
    y = rng.integers(0, 2, n)
    where = rng.integers(0, tokens, n)
    x[np.arange(n), where, 0] = 4.0
    x[np.arange(n), where, 1] = 2.0 * y - 1.0
    return x, y, where


SETTINGS = {"steps": 300, "lr": 3e-3, "weight_decay": 0.01, "heads": 1, "batch_size": 128, "seed": 0}


def test_pool_shapes_and_queries():
    pool = AttentivePool(32, num_heads=4, num_queries=3)
    tokens = torch.randn(5, 7, 32)
    assert pool(tokens).shape == (5, 32)
    weights = pool.attention_weights(tokens)
    assert weights.shape == (5, 4, 3, 7)
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, 4, 3))
    with pytest.raises(ValueError, match="must divide"):
        AttentivePool(30, num_heads=4)
    assert default_heads(768) == 12 and default_heads(1024) == 16 and default_heads(30) == 1
    assert AttentivePool(128).num_heads == 2


def test_several_queries_average():
    """With two identical queries the output equals the one-query pool's (the outputs are averaged)."""
    torch.manual_seed(0)
    one = AttentivePool(16, 2, num_queries=1)
    two = AttentivePool(16, 2, num_queries=2)
    two.load_state_dict({**one.state_dict(), "query": one.query.detach().repeat(1, 2, 1)})
    tokens = torch.randn(3, 5, 16)
    torch.testing.assert_close(two(tokens), one(tokens))


def test_registry():
    assert set(POOLINGS) == {"mean", "attentive"}
    tokens = torch.randn(2, 6, 64)
    torch.testing.assert_close(build_pooling("mean", 64)(tokens), tokens.mean(1))
    assert isinstance(build_pooling("mean", 64), MeanPool)
    assert isinstance(build_pooling("attentive", 64, heads=2), AttentivePool)
    with pytest.raises(KeyError, match="unknown pooling"):
        build_pooling("cls", 64)


def test_attentive_reads_the_marked_token_where_mean_cannot():
    x_fit, y_fit, _ = toy(1024, seed=0)
    x_test, y_test, where = toy(512, seed=1)
    attentive = attentive_probe(x_fit, y_fit, x_test, y_test, pooling="attentive", **SETTINGS)
    mean = attentive_probe(x_fit, y_fit, x_test, y_test, pooling="mean", **SETTINGS)
    assert attentive > 0.95, attentive
    assert mean < 0.65, mean  # the bound of the module docstring (53 %) plus sampling slack
    model = fit_probe(x_fit, y_fit, 2, pooling="attentive", **SETTINGS)
    weights = model.pool.attention_weights(torch.from_numpy(x_test))[:, 0, 0]  # (n, N): the one query's attention
    on_marked = weights[torch.arange(len(where)), torch.from_numpy(where)]
    assert float(on_marked.mean()) > 0.5  # the query learned to look at the marked token (uniform: 1/16)


def test_deterministic_per_seed():
    x, y, _ = toy(256, seed=2)
    settings = {**SETTINGS, "steps": 20}
    a = fit_probe(x, y, 2, **settings).state_dict()
    b = fit_probe(x, y, 2, **settings).state_dict()
    c = fit_probe(x, y, 2, **{**settings, "seed": 1}).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    x, y, _ = toy(64, seed=3)
    fit_probe(x, y, 2, **{**SETTINGS, "steps": 2})
    torch.testing.assert_close(torch.rand(3), expected)


def test_gradients_reach_only_pool_and_head():
    """One step by hand: every probe parameter gets a gradient, the frozen tokens none."""
    x, y, _ = toy(32, seed=4)
    tokens = torch.from_numpy(x)
    model = fit_probe(x, y, 2, **{**SETTINGS, "steps": 1})
    model.train()
    torch.nn.functional.cross_entropy(model(tokens), torch.from_numpy(y)).backward()
    assert tokens.grad is None and not tokens.requires_grad
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


def _classifier():
    from vmim.meta_arch.classification import Classification as Classifier
    from vmim.models.vit import vit_test

    torch.manual_seed(0)
    backbone = vit_test(patch_size=4, tubelet_size=2)
    return Classifier(backbone, 1, [0.5] * 3, [0.25] * 3)


def test_frozen_backbone_tokens_and_probe():
    """Tokens of a real backbone through the probe's extraction (built-in digit images), then a probe on them: the
    backbone's weights do not move and get no gradient."""
    from vmim.data.digits import DigitImages

    classifier = _classifier()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    source = DigitImages("test", img_size=16)
    source.labels = source.labels[:48]  # a short split: 48 samples
    tokens, labels = extract_tokens(classifier, source, batch_size=16, isolate=False)
    assert tokens.shape == (48, 16, 64)  # 4 x 4 tokens of 4 px on 16 px images, vit_test is 64 wide
    assert labels.shape == (48,)
    clip, _ = source.test_views(0)
    with torch.no_grad():
        direct = classifier.backbone(classifier.normalizer(classifier.normalizer.pixels(clip))).tokens
    np.testing.assert_allclose(tokens[0], direct[0].numpy(), rtol=1e-5, atol=1e-5)
    acc = attentive_probe(tokens[:32], labels[:32], tokens[32:], labels[32:], **{**SETTINGS, "steps": 5})
    assert 0.0 <= acc <= 1.0
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    assert all(p.grad is None for p in classifier.parameters())


def test_token_features_adapter_flattens():
    classifier = _classifier()
    adapter = TokenFeatures(classifier)
    clip = torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        flat = adapter.features(clip)
        tokens = adapter.tokens(clip)
    assert adapter.token_shape == (32, 64)  # 2 x 4 x 4 tokens
    torch.testing.assert_close(flat.view(2, 32, 64), tokens)


def test_standardization_makes_the_probe_blind_to_channel_scale_and_offset():
    """With ``standardize`` the probe sees each channel shifted and scaled by its fit statistics, so a
    per-channel affine map of every token (a > 0) leaves the trained probe's logits unchanged; without it the probe
    fits a different model (and on the mean token of tiny-scale features it barely moves from chance)."""
    x, y, _ = toy(256, seed=5)
    rng = np.random.default_rng(6)
    a = rng.uniform(0.01, 0.1, x.shape[-1]).astype(np.float32)  # small channels, as a LayerNorm-ed ViT's mean token
    b = rng.normal(0.0, 5.0, x.shape[-1]).astype(np.float32)
    settings = {**SETTINGS, "steps": 30, "standardize": True}
    plain, moved = fit_probe(x, y, 2, **settings), fit_probe(x * a + b, y, 2, **settings)
    torch.testing.assert_close(moved.shift, torch.from_numpy(x.reshape(-1, x.shape[-1]).mean(0) * a + b),
                               rtol=1e-4, atol=1e-4)
    raw = fit_probe(x * a + b, y, 2, **{**settings, "standardize": False})
    with torch.no_grad():
        torch.testing.assert_close(moved(torch.from_numpy(x * a + b)), plain(torch.from_numpy(x)), rtol=1e-3,
                                   atol=1e-4)
        assert not torch.allclose(raw(torch.from_numpy(x * a + b)), plain(torch.from_numpy(x)), atol=1e-2)


def test_attentive_in_the_probe_protocol(tmp_path):
    """``probe.methods=[attentive]`` through :func:`vmim.engine.probe.probe` on digit images: tokens and pooled
    features come out of the one extraction (each model's backbone sees every sample once per output); every feature
    set gets an attentive cell per budget, trained per draw (seed train.seed + draw), all labels included; the
    raw-pixel tokens are the 4 px patches (16 tokens of 3 x 4 x 4)."""
    import collections

    from vmim.config import load_config
    from vmim.engine.probe import probe
    from vmim.engine.probe_results import read_results
    from vmim.meta_arch.classification import Classification

    cfg = load_config(None, [
        "task=finetune", "init=", "model.backbone=vit_test", "model.patch_size=4", "model.tubelet_size=2",
        "data.img_size=16", "data.num_frames=4", "data.num_workers=0", "data.decode_isolation=false",
        "data.datasets.d.kind=digits_images", "data.datasets.d.fraction=0.05", "eval.datasets.d.kind=digits_images",
        "eval.datasets.d.split=test", "eval.datasets.d.fraction=0.1", "probe.methods=[attentive]",
        "probe.attentive.steps=3", "probe.labels_per_class=[2,0]", "probe.seeds=2", "train.seed=7"])
    seen: collections.Counter = collections.Counter()
    tokens = Classification.tokens

    def counting(self, clip):
        seen[id(self)] += len(clip)
        return tokens(self, clip)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Classification, "tokens", counting)
        probe(cfg, tmp_path)
    results = read_results(tmp_path)
    n = results["data"]["fit"]["samples"] + results["data"]["test"]["samples"]
    assert sorted(seen.values()) == [n, n]  # pretrained and random init: tokens of every sample, once
    assert results["protocol"]["token_shapes"] == {"pretrained": [16, 64], "random_init": [16, 64],
                                                   "raw_pixels": [16, 48]}
    cells = {(c["features"], c["labels_per_class"]): c for c in results["results"]}
    assert set(cells) == {(f, b) for f in ("pretrained", "random_init", "raw_pixels") for b in (2, 0)}
    for (_, budget), cell in cells.items():
        assert cell["method"] == "attentive" and cell["n"] == 2
        assert [d["train_seed"] for d in cell["draws"]] == [7, 8]
        assert [d["label_seed"] for d in cell["draws"]] == ([0, 1] if budget else [None, None])
        assert all(0.0 <= d["accuracy"] <= 1.0 for d in cell["draws"])
