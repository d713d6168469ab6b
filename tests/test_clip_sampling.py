"""Frame-index sampling, crops (with their configured scale), and the in-process decode time limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vmim.data.clip_sampling import frame_step, random_window, segment_indices, uniform_views
from vmim.data.time_limit import DecodeTimeout, time_limit
from vmim.data.transforms import center_box, crop_resize, multi_scale_box, random_resized_box, train_crop


def test_random_window_inside_long_video():
    rng = np.random.default_rng(0)
    for _ in range(200):
        idx = random_window(300, 16, 4.0, rng)
        assert len(idx) == 16 and idx.min() >= 0 and idx.max() < 300
        assert (np.diff(idx) == 4).all()


def test_random_window_covers_all_starts():
    rng = np.random.default_rng(1)
    starts = {int(random_window(70, 16, 4.0, rng)[0]) for _ in range(2000)}
    assert starts == set(range(0, 70 - 61 + 1))  # span 61: every start 0..9 is reachable


def test_short_video_loops_or_pads():
    rng = np.random.default_rng(0)
    assert random_window(10, 8, 2.0, rng, "loop").tolist() == [0, 2, 4, 6, 8, 0, 2, 4]
    assert random_window(10, 8, 2.0, rng, "pad").tolist() == [0, 2, 4, 6, 8, 9, 9, 9]
    with pytest.raises(ValueError, match="overflow"):
        random_window(10, 8, 2.0, rng, "wrap")


def test_fps_resampling_step():
    assert frame_step(4, 30.0, None) == 4.0
    assert frame_step(2, 60.0, 30.0) == 4.0  # every 2nd frame at 30 fps = every 4th at 60 fps
    rng = np.random.default_rng(0)
    idx = random_window(1000, 5, frame_step(1, 25.0, 10.0), rng)
    assert np.allclose(np.diff(idx), 2.5, atol=1)  # 25 -> 10 fps: 2.5 source frames per clip frame


def test_uniform_views_are_spread_and_deterministic():
    views = uniform_views(300, 16, 4.0, num_views=5)
    starts = [int(v[0]) for v in views]
    assert starts == sorted(starts) and len(set(starts)) == 5
    assert starts[0] >= 0 and views[-1][-1] < 300
    assert [v.tolist() for v in uniform_views(300, 16, 4.0, 5)] == [v.tolist() for v in views]


def test_segment_sampling_one_per_segment():
    idx = segment_indices(80, 8, None)
    assert idx.tolist() == [5, 15, 25, 35, 45, 55, 65, 75]  # segment middles
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = segment_indices(80, 8, rng)
        assert all(10 * k <= i < 10 * (k + 1) for k, i in enumerate(idx))


def test_boxes_stay_inside_the_frame():
    rng = np.random.default_rng(0)
    for make in (random_resized_box, multi_scale_box):
        for _ in range(300):
            top, left, h, w = make(240, 320, rng)
            assert 0 <= top and 0 <= left and top + h <= 240 and left + w <= 320 and h > 0 and w > 0


def test_multi_scale_sides_come_from_the_scales():
    rng = np.random.default_rng(0)
    allowed = {int(240 * s) for s in (1.0, 0.875, 0.75, 0.66)}
    for _ in range(100):
        _, _, h, w = multi_scale_box(240, 320, rng)
        assert h in allowed and w in allowed


def test_center_box():
    assert center_box(240, 320, short_side=256, crop=224) == (15, 55, 210, 210)


def test_crop_resize_same_box_every_frame_and_flip():
    frames = torch.arange(2 * 4 * 6 * 3, dtype=torch.uint8).reshape(2, 4, 6, 3)
    out = crop_resize(frames, (1, 2, 2, 2), size=2)
    assert out.shape == (3, 2, 2, 2) and out.dtype == torch.uint8
    assert torch.equal(out, frames[:, 1:3, 2:4].permute(3, 0, 1, 2))  # no resize needed: exact crop
    flipped = crop_resize(frames, (1, 2, 2, 2), size=2, flip=True)
    assert torch.equal(flipped, out.flip(-1))


def test_train_crop_is_a_function_of_the_seed():
    frames = torch.randint(0, 256, (4, 48, 64, 3), dtype=torch.uint8)
    a = train_crop(frames, 32, np.random.default_rng(7), "random_resized", flip=True)
    b = train_crop(frames, 32, np.random.default_rng(7), "random_resized", flip=True)
    assert a.shape == (3, 4, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match="unknown crop"):
        train_crop(frames, 32, np.random.default_rng(0), "five_crop", flip=False)


@pytest.mark.parametrize("scale", [(0.5, 0.5), (0.9, 1.0)])
def test_random_resized_box_area_follows_the_scale(scale):
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, _, h, w = random_resized_box(240, 320, rng, scale=scale)
        assert scale[0] - 0.02 <= h * w / (240 * 320) <= scale[1] + 0.02


@pytest.mark.parametrize("kind", ["image", "video"])
def test_crop_scale_reaches_the_crop_from_the_config(tmp_path, kind):
    """data.datasets.<name>.crop_scale -> build_source -> the source's random_resized crop."""
    from PIL import Image

    from tests.video_fixtures import CODECS, encode, frame_image
    from vmim.config import DataConfig, ImageDatasetConfig, VideoDatasetConfig
    from vmim.data import build_source

    if kind == "image":
        (tmp_path / "cls").mkdir()
        Image.fromarray(frame_image(3)).save(tmp_path / "cls" / "a.png")
        ds_cfg = ImageDatasetConfig(kind="image", format="image_folder", path=str(tmp_path), crop_scale=[0.5, 0.6])
    else:
        codec, suffix, options = CODECS["h264"]
        encode(str(tmp_path / f"a.{suffix}"), codec, options)
        (tmp_path / "train.txt").write_text(f"a.{suffix} 0\n")
        ds_cfg = VideoDatasetConfig(kind="video", path=str(tmp_path / "train.txt"), crop="random_resized",
                                    crop_scale=[0.5, 0.6], stride=2)
    source, _, _ = build_source("ds", ds_cfg, DataConfig(img_size=32, num_frames=4), 3)
    assert source.crop_scale == (0.5, 0.6)
    pixels, _ = source.read(0, np.random.default_rng(1))
    _, h, w, _ = pixels.shape
    for seed in range(5):
        got = source.augment(pixels, np.random.default_rng(seed), 1)[0]
        rng = np.random.default_rng(seed)
        box = random_resized_box(h, w, rng, scale=(0.5, 0.6))
        want = crop_resize(pixels, box, 32, flip=source.flip and bool(rng.integers(2)))
        assert torch.equal(got, want), seed


def test_time_limit_interrupts_and_restores():
    with pytest.raises(DecodeTimeout, match="decode_timeout_s"):
        with time_limit(0.05):
            while True:
                pass
    with time_limit(1.0):
        x = sum(range(1000))
    assert x == 499500


def test_repeated_sampling_decodes_once_and_flattens_into_the_batch():
    from vmim.data import DigitClips, MaskedClipDataset
    from vmim.data.pretrain_dataset import collate
    from vmim.masking import MaskGenerator

    class CountingSource(DigitClips):
        """Digit clips whose repeated loads share one 'decode' (the rendering), like VideoSource."""

        decodes = 0

        def load_repeated(self, index, rng, repeat):
            CountingSource.decodes += 1
            clip, label = self.load(index, rng)
            return [(torch.roll(clip, k, dims=-1), label) for k in range(repeat)]

    source = CountingSource("train", img_size=16, num_frames=4)
    dataset = MaskedClipDataset([source], {"encoder": MaskGenerator("tube", 0.75, 0.5)}, (2, 4, 4), repeat=4)
    items = [dataset[(0, i, 100 + i)] for i in range(3)]
    assert CountingSource.decodes == 3
    assert items[0]["clip"].shape == (4, 3, 4, 16, 16) and items[0]["masks"].encoder.shape == (4, 32)
    assert not torch.equal(items[0]["masks"].encoder[0], items[0]["masks"].encoder[1])  # a mask per repeat
    batch = collate(items)
    assert batch["clip"].shape == (12, 3, 4, 16, 16) and batch["masks"].encoder.shape == (12, 32)
    assert batch["label"].tolist() == [items[i]["label"][0].item() for i in range(3) for _ in range(4)]
    assert batch["dataset"].tolist() == [0] * 12 and batch["bad"] == []
