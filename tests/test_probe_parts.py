"""The probe's parts with known answers: the raw-pixel rule (:mod:`vmim.engine.pixel_features`), the progress lines
off a terminal (:class:`vmim.engine.probe_results.Progress`), and the ``probe`` section's keys, old forms included
(:mod:`vmim.config.probe`)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from vmim.config import ConfigError, load_config
from vmim.engine.pixel_features import PixelFeatures, pixel_patches, pooled_size
from vmim.engine.probe_results import Progress

REPO = Path(__file__).resolve().parents[1]
MOTION = REPO / "configs/demo/motion_finetune.yaml"


@pytest.mark.parametrize("shape, expected", [
    ((3, 4, 16, 16), (4, 16)),       # 3072 values: kept whole
    ((3, 1, 224, 224), (1, 36)),     # images: 3 x 36 x 36 = 3888
    ((3, 16, 224, 224), (16, 9)),    # every frame kept, 9 x 9 = 3888
    ((3, 32, 224, 224), (21, 8)),    # 6 x 6 would be under 8: 8 x 8 and 21 frames = 4032
    ((3, 64, 4, 4), (64, 4)),        # 3072: whole
    ((3, 128, 6, 6), (37, 6)),       # the side is under 8 already: frames pooled, 3 x 37 x 36 = 3996
])
def test_pooled_size(shape, expected):
    c, t, s, _ = shape
    frames, side = pooled_size(c, t, s, 4096)
    assert (frames, side) == expected
    assert c * frames * side * side <= 4096


def test_pooled_pixels_are_block_means():
    """(3, 4, 16, 16) under 192 values: 4 x 4 would be under 8 px, so 8 x 8 and one frame: each value is the mean of a
    4-frame, 2 x 2 block, in [0, 1]."""
    clip = torch.randint(0, 256, (2, 3, 4, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = PixelFeatures(max_dim=192)
    out = features.pooled(clip)
    assert features.shape == (3, 1, 8, 8) and out.shape == (2, 192)
    blocks = clip.double().reshape(2, 3, 1, 4, 8, 2, 8, 2).mean(dim=(3, 5, 7)) / 255
    torch.testing.assert_close(out.double(), blocks.flatten(1), rtol=0, atol=1e-6)


def test_pixel_patches_are_the_backbones_patches():
    clip = torch.arange(2 * 3 * 4 * 8 * 12, dtype=torch.float32).reshape(2, 3, 4, 8, 12)
    tokens = pixel_patches(clip, patch=4, tubelet=2)
    assert tokens.shape == (2, 2 * 2 * 3, 3 * 2 * 4 * 4)
    t, h, w = 1, 1, 2  # token (t, h, w) of the (2, 2, 3) grid, time-major
    index = (t * 2 + h) * 3 + w
    expected = clip[1, :, 2 * t:2 * t + 2, 4 * h:4 * h + 4, 4 * w:4 * w + 4].reshape(-1)
    torch.testing.assert_close(tokens[1, index], expected)
    assert pixel_patches(clip[:, :, :1], patch=4, tubelet=2).shape == (2, 6, 3 * 4 * 4)  # images: one frame


def test_progress_off_a_terminal_prints_plain_lines():
    stream = io.StringIO()
    progress = Progress(10, "features", "samples", stream=stream, every_s=0.0, tty=False)
    for _ in range(4):
        progress.update(2)
    progress.update(2)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("features: 2/10 samples (20%), ") and "left" in lines[0]
    assert len(lines) == 5 and lines[-1].startswith("features: 10 samples in ")  # 4 on the way, none at 10/10, 1 end


@pytest.mark.parametrize("override, budgets, baselines", [
    ([], [1, 10, 100, 0], ["random_init", "raw_pixels"]),
    (["probe.labels_per_class=10"], [10], ["random_init", "raw_pixels"]),  # one integer: the key's old type
    (["probe.labels_per_class=[0,5]"], [0, 5], ["random_init", "raw_pixels"]),
    (["probe.compare_random_init=false"], [1, 10, 100, 0], ["raw_pixels"]),  # the old key, folded in
    (["probe.baselines=[]", "probe.compare_random_init=true"], [1, 10, 100, 0], ["random_init"]),
])
def test_probe_keys_old_forms_included(override, budgets, baselines):
    cfg = load_config(MOTION, override, task="finetune")
    assert (cfg.probe.labels_per_class, cfg.probe.baselines, cfg.probe.compare_random_init) == (
        budgets, baselines, None)


@pytest.mark.parametrize("override, words", [
    ("probe.labels_per_class=-1", ["probe.labels_per_class", "integer >= 0"]),
    ("probe.labels_per_class=[1,1]", ["probe.labels_per_class", "twice"]),
    ("probe.labels_per_class=[]", ["probe.labels_per_class", "no label budget"]),
    ("probe.labels_per_class=2.5", ["probe.labels_per_class", "integer"]),
    ("probe.baselines=[random]", ["probe.baselines", "random_init"]),
    ("probe.methods=[linear,linear]", ["probe.methods", "twice"]),
    ("probe.raw_pixels_dim=8", ["probe.raw_pixels_dim", ">= 64"]),
])
def test_bad_probe_keys_are_refused_naming_the_key(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(MOTION, [override], task="finetune")
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_previous_runs_probe_section_loads():
    """A fine-tuning run of an earlier version records ``labels_per_class: 0`` and ``compare_random_init: true``."""
    cfg = load_config(REPO / "tests/data/previous_main/finetune_run/config.yaml", task="finetune")
    assert (cfg.probe.labels_per_class, cfg.probe.baselines) == ([0], ["random_init", "raw_pixels"])
