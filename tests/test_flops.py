"""Analytic multiply-adds (``vmim.models.flops``) against FlopCounterMode, and the training FLOPs of a step.

Tolerance: none. The formulas count exactly what FlopCounterMode counts (linear, conv, SDPA, einsum products; no
norms, softmax or pooling by max), so every comparison is an integer equality. Large models are counted on the meta
device; a visible-only ViT gathers its visible tokens with a boolean index, which the meta device cannot size, so
those run for real on small inputs (a 4x64x64 clip for ViT-B).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vmim.engine.throughput  # noqa: F401  (registers the pretraining method's and the targets' counts)
import vmim.models.mvit as mvit
from tests.conftest import TINY_OVERRIDES, clip_batch, make_mask
from vmim.config import load_config
from vmim.masking import Masks
from vmim.meta_arch import build_method
from vmim.models.base import EncoderOutput
from vmim.meta_arch.classification import Classification as Classifier
from vmim.models.flops import NoCount, count_macs, module_macs, step_flops, step_macs
from vmim.models.heads import DecoderHead, LinearHead
from vmim.models.vit import VisionTransformer, vit_base, vit_test

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.5] * 3, [0.25] * 3


def test_known_answer_tiny_vit_and_classifier():
    """ViT width 16, 1 block, 2 heads, MLP 64, tubelet 2x4x4 on one 3x2x8x8 clip: 1x2x2 = 4 tokens.

    patch embedding  4 tokens x 16 out x (3 x 2 x 4 x 4 = 96 in)  =  6144
    qkv              4 x 16 x 48                                  =  3072
    q@k^T + attn@v   2 x 4 x 4 x 16 (2 heads x 8 dims = 16)       =   512
    proj             4 x 16 x 16                                  =  1024
    MLP              4 x (16 x 64 + 64 x 16)                      =  8192
    total                                                           18944 MACs
    With a 10-class linear head: + 16 x 10 = 160 -> 19104 MACs; a training step = 2 FLOPs x 3 x 19104 = 114624.
    """
    vit = VisionTransformer(16, 1, 2, patch_size=4, tubelet_size=2)
    shape = (1, 3, 2, 8, 8)
    assert module_macs(vit, shape) == 18944 == count_macs(vit, torch.zeros(shape))
    classifier = Classifier(vit, 10, MEAN, STD)
    assert module_macs(classifier, shape) == 19104
    assert step_macs(classifier, {"clip": torch.zeros(shape, dtype=torch.uint8)}) == (19104, 0)
    assert step_flops(classifier, {"clip": torch.zeros(shape, dtype=torch.uint8)}) == 114624


@pytest.mark.parametrize("build, shape", [(vit_test, (2, 3, 4, 16, 16)), (vit_base, (1, 3, 4, 64, 64))])
def test_visible_only_vit_at_90_percent_masking(build, shape):
    model = build(patch_size=4 if build is vit_test else 16).eval()
    n = model.grid(shape)[0] * model.grid(shape)[1] * model.grid(shape)[2]
    masked = int(0.9 * n)
    mask = make_mask(shape[0], n, masked)
    assert module_macs(model, shape, masked) == count_macs(model, torch.zeros(shape), mask)
    assert module_macs(model, shape) == count_macs(model, torch.zeros(shape))  # no mask: every token


@pytest.mark.parametrize("cls_token", [False, True])
def test_dense_vit_base_counts_every_token(cls_token):
    """Dense (SimMIM / MaskFeat on a ViT): masked tokens are encoded as the mask token; VideoMAE's 16x224 clip."""
    with torch.device("meta"):
        model = vit_base(dense=True, cls_token=cls_token).eval()
        x, mask = torch.empty(2, 3, 16, 224, 224), torch.zeros(2, 1568, dtype=torch.bool)
    assert module_macs(model, x.shape, 1411) == count_macs(model, x, mask)
    assert module_macs(vit_test(patch_size=4), (3, 3, 1, 16, 16)) == count_macs(vit_test(patch_size=4),
                                                                                torch.zeros(3, 3, 1, 16, 16))


def test_decoder_and_linear_heads():
    """VideoMAE V2's decoder: 157 visible tokens in, 784 decoder-kept queries; a linear head on 12 of 32 tokens."""
    decoder = DecoderHead(64, 96, depth=2, dim=32, heads=2)
    encoder_mask = make_mask(2, 1568, 1411)
    encoded = EncoderOutput(torch.zeros(2, 157, 64), ~encoder_mask, (8, 14, 14))
    query = make_mask(2, 1568, 784, seed=1)
    assert module_macs(decoder, 2, 157, 784) == count_macs(decoder, encoded, query)
    head = LinearHead(64, 108)
    encoded = EncoderOutput(torch.zeros(2, 32, 64), None, (2, 4, 4))
    assert module_macs(head, 2, 32, 12) == count_macs(head, encoded, make_mask(2, 32, 12)) == 2 * 12 * 64 * 108


@pytest.mark.parametrize("name, shape", [
    ("mvitv2_test", (2, 3, 4, 64, 64)), ("mvitv2_test", (2, 3, 1, 64, 64)), ("mvitv2_s_16x4", (1, 3, 16, 224, 224)),
    ("maskfeat_mvitv2_s_16x4", (1, 3, 16, 224, 224)), ("mvitv2_t", (1, 3, 1, 224, 224)),
])
def test_mvit_pooling_attention(name, shape):
    """Stem, q/k/v pooling convs (one-frame kernel slices on images), relative positions, the shortcut projection in
    attention (MViTv2) or after it (MaskFeat), and the classifier on top."""
    with torch.device("meta"):
        model = getattr(mvit, name)().eval()
        x = torch.empty(*shape)
        classifier = Classifier(getattr(mvit, name)(), 400, MEAN, STD)
    assert module_macs(model, shape) == count_macs(model, x)
    assert module_macs(classifier, shape) == count_macs(classifier, x)


def _expected(method, batch) -> tuple[int, int]:
    """(trained, frozen) by FlopCounterMode: the student's predictions, then every target on the clean clip."""
    trained = count_macs(method.predict, batch)
    pixels = method.normalizer.pixels(batch["clip"])
    return trained, sum(count_macs(target, pixels) for target in method.targets.values())


@pytest.mark.parametrize("overrides, t", [
    (["targets.ema.kind=momentum", "targets.ema.head.depth=1", "targets.ema.head.dim=32", "targets.ema.head.heads=2",
      "decoder_masking.kind=random", "decoder_masking.ratio_video=0.5", "targets.pixel.token_set=decoder_kept"], 4),
    (["model.dense=true", "targets.pixel.head.kind=linear", "targets.pixel.token_set=visible", "targets.hog.kind=hog",
      "targets.hog.cell_size=2", "targets.hog.head.kind=linear"], 1),
])
def test_pretraining_step_splits_trained_and_frozen(overrides, t):
    """Visible-only ViT with a momentum target and VideoMAE V2's decoder-kept set; dense ViT with HOG and linear
    heads. Training FLOPs = 2 x (3 x trained + frozen)."""
    tiny = [o for o in TINY_OVERRIDES if "model.dense=true" not in overrides or not o.startswith("targets.pixel.head")]
    method = build_method(load_config(None, [*tiny, *overrides]))
    n = 2 * 4 * 4 if t == 4 else 4 * 4
    batch = {"clip": clip_batch(b=3, t=t), "masks": Masks(make_mask(3, n, n * 3 // 4))}
    if "decoder_masking.kind=random" in overrides:
        batch["masks"] = Masks(batch["masks"].encoder, make_mask(3, n, n // 2, seed=2))
    trained, frozen = step_macs(method, batch)
    assert (trained, frozen) == _expected(method, batch) and frozen > 0
    assert step_flops(method, batch) == 2 * (3 * trained + frozen)


def test_timm_teacher_is_counted_under_fake_tensors():
    """MR-MAE (meta build, its weights never read): a timm ViT-B teacher sees the first frame of each of the 8
    tubelets; the count of the fake-tensor fallback equals the teacher target's own forward on the meta device."""
    cfg = load_config(ROOT / "configs/methods/mrmae_vit_b.yaml", ["data.datasets.digits_images.weight=1"])
    with torch.device("meta"):
        method = build_method(cfg)
        pixels = torch.empty(1, 3, 16, 224, 224)
    teacher = method.targets["mimic"]
    assert module_macs(teacher, pixels.shape) == count_macs(teacher, pixels) > 8 * 17e9


def test_unregistered_module_raises():
    with pytest.raises(NoCount, match="Linear"):
        module_macs(torch.nn.Linear(2, 2), 1)


@pytest.mark.parametrize("tubelet, input_size", [(1, 0), (1, 8), (2, 0)])
def test_vmim_teacher_on_its_own_input(tmp_path, tubelet, input_size):
    """An image teacher (tubelet 1) sees the first frame of each student tubelet, resized to ``input_size``; a video
    teacher (tubelet 2) the whole clip."""
    from tests.test_teacher import save_vmim_teacher
    from vmim.targets.teacher import TeacherTarget

    save_vmim_teacher(tmp_path / "t.pt", patch=4, tubelet=tubelet)
    target = TeacherTarget((2, 4, 4), path=str(tmp_path / "t.pt"), input_size=input_size)
    pixels = clip_batch(b=2, t=4).float() / 255
    assert module_macs(target, pixels.shape) == count_macs(target, pixels) > 0
