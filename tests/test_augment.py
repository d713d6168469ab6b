"""Fine-tuning augmentations: per-clip RandAugment (workers), random erasing and Mixup / CutMix (device side)."""

import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from timm.data.auto_augment import AugmentOp

from vmim.data.rand_augment import FILL, ClipRandAugment
from vmim.meta_arch.batch_augment import ClipMixup, ClipRandomErasing, soft_target_cross_entropy

RECIPE = "rand-m7-n4-mstd0.5-inc1"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _smooth_clip(t: int = 4, size: int = 32, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """uint8 (C, T, size, size) with different, image-like (smooth) frames."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(t, channels, 6, 6, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8).permute(1, 0, 2, 3).contiguous()


def _frame_pil(clip: torch.Tensor, t: int) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(clip[:, t].permute(1, 2, 0).numpy()))


def _single_op(name: str, magnitude: float, img_size: int = 32) -> ClipRandAugment:
    """A ClipRandAugment that always applies one op at a fixed magnitude."""
    ra = ClipRandAugment(RECIPE, img_size)
    hparams = dict(ra.ops[0].hparams, magnitude_std=0)
    ra.ops = [AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)]
    ra.num_layers, ra.choice_weights = 1, None
    return ra


# ----------------------------------------------------------------------------------------------- RandAugment


def test_rand_augment_deterministic_per_seed_and_leaves_python_random_alone():
    ra = ClipRandAugment(RECIPE, 32)
    clip = _smooth_clip()
    state = random.getstate()
    outs = [ra(clip, np.random.default_rng(s)) for s in range(8)]
    assert random.getstate() == state
    for s in range(8):
        assert torch.equal(ra(clip, np.random.default_rng(s)), outs[s])
    assert outs[0].dtype == torch.uint8 and outs[0].shape == clip.shape
    assert len({o.numpy().tobytes() for o in outs}) > 4  # seeds give different augmentations
    assert torch.equal(clip, _smooth_clip())  # input untouched


def test_rand_augment_equal_frames_stay_equal():
    frame = _smooth_clip(t=1, seed=3)
    clip = frame.expand(-1, 6, -1, -1).contiguous()
    ra = ClipRandAugment("rand-m9-n4-mstd0.5-inc1", 32)
    changed = 0
    for s in range(60):
        out = ra(clip, np.random.default_rng(s))
        assert torch.equal(out, out[:, :1].expand_as(out)), f"seed {s}: frames differ"
        changed += not torch.equal(out, clip)
    assert changed > 40


def test_rand_augment_applies_the_drawn_ops_to_each_frame():
    ra = ClipRandAugment(RECIPE, 32)
    clip = _smooth_clip(t=4, seed=1)
    fired = set()
    for s in range(30):
        drawn = ra.draw(np.random.default_rng(s))
        assert torch.equal(ra(clip, np.random.default_rng(s)), ra.apply(clip, drawn))
        out = ra.apply(clip, drawn)
        for t in range(clip.shape[1]):
            img = _frame_pil(clip, t)
            for d in drawn:
                img = d.op.aug_fn(img, *d.args, **d.op.kwargs)
            assert np.array_equal(np.asarray(img), out[:, t].permute(1, 2, 0).numpy()), f"seed {s}, frame {t}"
        for d in drawn:
            assert 0.0 <= d.magnitude <= 10.0
            fired.add(d.op.name)
    assert len(fired) >= 8  # a variety of ops was exercised


def test_rand_augment_hparams_follow_videomae():
    ra = ClipRandAugment(RECIPE, 224)
    assert ra.num_layers == 4 and ra.choice_weights is None and len(ra.ops) == 15
    for op in ra.ops:
        assert op.prob == 0.5 and op.magnitude == 7 and op.magnitude_std == 0.5
        assert op.kwargs["fillcolor"] == FILL and op.kwargs["resample"] == Image.Resampling.BICUBIC
        assert op.hparams["translate_const"] == 100
    assert "PosterizeIncreasing" in {op.name for op in ra.ops}
    with pytest.raises(ValueError, match="RandAugment"):
        ClipRandAugment("augmix-m3", 224)
    with pytest.raises(ValueError, match="rand-m7-q3"):
        ClipRandAugment("rand-m7-q3", 224)


def test_rand_augment_known_ops_give_known_answers():
    clip = _smooth_clip(t=3, seed=2)
    # Invert: 255 - x on every frame.
    assert torch.equal(_single_op("Invert", 5)(clip, np.random.default_rng(0)), 255 - clip)
    # PosterizeIncreasing at m=5 keeps 4 - int(0.5 * 4) = 2 bits.
    out = _single_op("PosterizeIncreasing", 5)(clip, np.random.default_rng(0))
    assert torch.equal(out, clip & 0b11000000)
    # ... and at m=10 (an mstd draw reaches it) 0 bits: a black clip (Pillow 13 raises on 0 bits; before, black)
    assert torch.equal(_single_op("PosterizeIncreasing", 10)(clip, np.random.default_rng(0)), torch.zeros_like(clip))
    # Rotate at m=9: +-27 degrees (sign drawn from rng), bicubic, grey fill, the same on every frame.
    ra = _single_op("Rotate", 9)
    signs = set()
    for s in range(12):
        out = ra(clip, np.random.default_rng(s))
        (d,) = ra.draw(np.random.default_rng(s))
        assert abs(d.args[0]) == pytest.approx(27.0)
        signs.add(np.sign(d.args[0]))
        for t in range(clip.shape[1]):
            ref = _frame_pil(clip, t).rotate(d.args[0], resample=Image.Resampling.BICUBIC, fillcolor=FILL)
            assert np.array_equal(np.asarray(ref), out[:, t].permute(1, 2, 0).numpy())
    assert signs == {-1.0, 1.0}
    ref = ImageOps.autocontrast(_frame_pil(clip, 0))
    out = _single_op("AutoContrast", 0)(clip, np.random.default_rng(0))
    assert np.array_equal(np.asarray(ref), out[:, 0].permute(1, 2, 0).numpy())


def test_rand_augment_magnitude_draws():
    ra = _single_op("Rotate", 7)
    for op in ra.ops:
        op.magnitude_std = 0.5
    rng = np.random.default_rng(0)
    mags = np.array([ra.draw(rng)[0].magnitude for _ in range(400)])
    assert abs(mags.mean() - 7) < 0.1 and abs(mags.std() - 0.5) < 0.1
    ra.ops[0].magnitude_std = float("inf")  # uniform on [0, m]
    mags = np.array([ra.draw(rng)[0].magnitude for _ in range(400)])
    assert mags.min() >= 0 and mags.max() <= 7 and abs(mags.mean() - 3.5) < 0.4
    ra.ops[0].magnitude, ra.ops[0].magnitude_std = 12, 0  # clipped to 10 without magnitude_max
    assert ra.draw(rng)[0].magnitude == 10.0


def test_rand_augment_no_op_fires_and_grey_clips():
    clip = _smooth_clip()
    ra = ClipRandAugment("rand-m7-n4-p0.0", 32)
    assert ra(clip, np.random.default_rng(0)) is clip
    grey = _smooth_clip(channels=1, seed=5)
    rgb = grey.expand(3, -1, -1, -1).contiguous()
    ra = ClipRandAugment(RECIPE, 32)
    for s in range(10):
        out = ra(grey, np.random.default_rng(s))
        assert out.shape == grey.shape and out.dtype == torch.uint8
        assert torch.equal(out, ra(rgb, np.random.default_rng(s))[:1])
    with pytest.raises(ValueError, match="uint8"):
        ra(clip.float(), np.random.default_rng(0))


@pytest.mark.parametrize("spec, expected", [
    ("rand-m7-n4-mstd0.5-inc1", {"m": 7, "n": 4, "mstd": 0.5, "inc": 1}),
    ("rand-m9-mstd0.5-inc1", {"m": 9, "mstd": 0.5, "inc": 1}),
    ("rand", {}),
    ("rand-n3-tweights-p0.7-mmax12-m12", {"n": 3, "t": "weights", "p": 0.7, "mmax": 12, "m": 12}),
])
def test_rand_augment_grammar_reads_timm_strings(spec, expected):
    from vmim.config.finetune import parse_rand_augment

    assert parse_rand_augment(spec) == expected
    ClipRandAugment(spec, 32)  # timm takes them too


# Strings timm took silently (a section without digits dropped, an unknown set read as the default, a magnitude
# clipped) or failed on later (a bare AssertionError, numpy's "larger sample than population"): refused up front.
@pytest.mark.parametrize("spec, fragment", [
    ("rand-m-n4", "bad section 'm'"),  # timm: dropped, magnitude 10
    ("rand-m7-zz", "unknown section 'zz'"),  # timm: dropped
    ("rand-x9", "unknown section 'x9'"),  # timm: AssertionError
    ("rand-m7-tfoo", "'t' takes"),  # timm: the default transform set
    ("rand-m7-m9", "given twice"),  # timm: the last one
    ("rand-m11", "above the upper bound 10"),  # timm: clipped to 10
    ("rand-p1.5", "in [0, 1]"),  # timm: every op always fires
    ("rand-inc2", "0 or 1"),
    ("rand-n0", ">= 1"),  # timm: no op ever (off is the empty string)
    ("rand-n20-tweights", "at most 15"),  # numpy ValueError in the first batch
    ("rand-m7-", "unknown section ''"),
    ("random-m7", "starts with 'rand-'"),
])
def test_rand_augment_grammar_refuses_what_timm_drops_or_fails_on(spec, fragment):
    from vmim.config.finetune import parse_rand_augment

    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_rand_augment(spec)
    with pytest.raises(ValueError, match=re.escape(fragment)):  # the data path refuses it the same way
        ClipRandAugment(spec, 32)


def test_rand_augment_sets_match_timm():
    from timm.data import auto_augment as A

    from vmim.config.finetune import RAND_AUGMENT_SETS

    for name, limit in RAND_AUGMENT_SETS.items():
        transforms = A.rand_augment_choices(name)
        weighted = isinstance(transforms, dict)
        assert limit == (sum(1 for w in transforms.values() if w > 0) if weighted else 0), name
    assert A._LEVEL_DENOM == 10


# ----------------------------------------------------------------------------------------------- random erasing


def test_erasing_one_box_same_on_every_frame():
    b, t, h, w = 6, 4, 64, 64
    erase = ClipRandomErasing(1.0, MEAN, STD)
    torch.manual_seed(0)
    clips = erase(torch.full((b, 3, t, h, w), 0.5), None)
    for i in range(b):
        changed = (clips[i] != 0.5).any(0)  # (T, H, W)
        assert torch.equal(changed, changed[:1].expand_as(changed)), "box differs between frames"
        ys, xs = torch.nonzero(changed[0], as_tuple=True)
        assert len(ys) > 0
        top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        assert changed[0, top:bottom, left:right].all() and changed[0].sum() == (bottom - top) * (right - left)
        frac = float((bottom - top) * (right - left)) / (h * w)
        assert 0.02 * 0.75 <= frac <= (1 / 3) * 1.25
        box = clips[i, :, :, top:bottom, left:right]
        assert not torch.equal(box[:, 0], box[:, 1])  # fresh noise per frame


def test_erasing_probability_zero_and_determinism():
    x = torch.rand(4, 3, 2, 32, 32)
    assert torch.equal(ClipRandomErasing(0.0, MEAN, STD)(x.clone()), x)
    erase = ClipRandomErasing(0.5, MEAN, STD)
    torch.manual_seed(1)
    a = erase(x.clone())
    torch.manual_seed(1)
    assert torch.equal(erase(x.clone()), a)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(erase(x.clone(), g1), erase(x.clone(), g2))
    boxes = erase.sample_boxes(2000, 32, 32, torch.Generator().manual_seed(0))
    assert 0.45 < sum(b is not None for b in boxes) / 2000 < 0.55
    with pytest.raises(ValueError, match="channels"):
        erase(torch.rand(2, 1, 2, 8, 8))


def test_erasing_fill_statistics_and_const_mode():
    x = torch.zeros(2, 3, 4, 128, 128)
    erase = ClipRandomErasing(1.0, MEAN, STD, min_area=0.3, max_area=0.3)
    out = erase(x.clone(), torch.Generator().manual_seed(0))
    for i in range(2):
        changed = (out[i] != 0).any(0)[0]
        ys, xs = torch.nonzero(changed, as_tuple=True)
        region = out[i, :, :, ys.min():ys.max() + 1, xs.min():xs.max() + 1].reshape(3, -1)
        assert torch.allclose(region.mean(1), torch.tensor(MEAN), atol=0.01)
        assert torch.allclose(region.std(1), torch.tensor(STD), atol=0.01)
    const = ClipRandomErasing(1.0, MEAN, STD, mode="const")(x.clone(), torch.Generator().manual_seed(0))
    values = {tuple(round(v, 4) for v in const[0, :, 0, y, xx].tolist()) for y in range(128) for xx in range(0, 128, 8)}
    assert values == {(0.0, 0.0, 0.0), tuple(round(m, 4) for m in MEAN)}


# ----------------------------------------------------------------------------------------------- mixup / cutmix


def _smoothed_onehot(y: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    return F.one_hot(y, k).float() * (1 - eps) + eps / k


def test_mixup_is_lam_x_plus_partner():
    k, eps = 5, 0.1
    mix = ClipMixup(0.8, 0.0, prob=1.0, switch_prob=0.5, label_smoothing=eps, num_classes=k)
    x = torch.rand(4, 3, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    np.random.seed(0)
    out, targets = mix(x.clone(), y)
    lam = float((targets[0, 0] - eps / k) / (1 - eps))  # y[0] = 0 and its partner (3) differ
    np.random.seed(0)
    assert np.random.rand() < 1.0 and lam == pytest.approx(np.random.beta(0.8, 0.8), abs=1e-6)
    assert 0 < lam < 1
    assert torch.allclose(out, lam * x + (1 - lam) * x.flip(0), atol=1e-6)
    ref = lam * _smoothed_onehot(y, k, eps) + (1 - lam) * _smoothed_onehot(y.flip(0), k, eps)
    assert torch.allclose(targets, ref, atol=1e-6)
    np.random.seed(0)  # numpy's global state decides: restoring it reproduces the batch (exact resume)
    out2, targets2 = mix(x.clone(), y)
    assert torch.equal(out2, out) and torch.equal(targets2, targets)


def test_cutmix_one_box_on_every_frame():
    k, eps, b, t, h, w = 4, 0.1, 4, 4, 16, 16
    mix = ClipMixup(0.0, 1.0, prob=1.0, switch_prob=0.5, label_smoothing=eps, num_classes=k)
    y = torch.tensor([0, 1, 2, 3])
    boxes = 0
    for seed in range(6):
        x = torch.rand(b, 3, t, h, w)
        np.random.seed(seed)
        out, targets = mix(x.clone(), y)
        partner = x.flip(0)
        from_partner = (out == partner).all(1).all(1)  # (B, H, W): the whole (C, T) column came from the partner
        from_self = (out == x).all(1).all(1)
        assert (from_partner ^ from_self).all(), "a pixel mixed in some frames only"
        assert (from_partner == from_partner[:1]).all(), "batch mode: one box for the whole batch"
        box = from_partner[0]
        area = int(box.sum())
        if area:
            boxes += 1
            ys, xs = torch.nonzero(box, as_tuple=True)
            assert area == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a rectangle
        lam = 1 - area / (h * w)
        ref = lam * _smoothed_onehot(y, k, eps) + (1 - lam) * _smoothed_onehot(y.flip(0), k, eps)
        assert torch.allclose(targets, ref, atol=1e-6)
    assert boxes >= 3


def test_mixup_off_odd_batch_and_loss():
    k, eps = 6, 0.1
    off = ClipMixup(0.0, 0.0, prob=1.0, switch_prob=0.5, label_smoothing=eps, num_classes=k)
    x, y = torch.rand(3, 3, 2, 8, 8), torch.tensor([5, 0, 2])
    out, targets = off(x, y)
    assert out is x and torch.allclose(targets, _smoothed_onehot(y, k, eps))
    assert torch.allclose(targets.sum(1), torch.ones(3))
    on = ClipMixup(0.8, 1.0, prob=1.0, switch_prob=0.5, label_smoothing=eps, num_classes=k)
    with pytest.raises(ValueError, match="data.batch_size"):
        on(x, y)
    logits = torch.randn(3, k)
    loss = soft_target_cross_entropy(logits.bfloat16(), targets)
    assert loss.dtype == torch.float32
    assert torch.allclose(soft_target_cross_entropy(logits, targets), F.cross_entropy(logits, y, label_smoothing=eps))
