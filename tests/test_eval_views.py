"""Evaluation data: test crops, temporal views, one decode per video, skipped bad files, rank sharding."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.video_fixtures import CODECS, encode, identify
from vmim.data.clip_sampling import segment_indices
from vmim.data.indexes import Entry
from vmim.data.sources import ImageSource, VideoSource
from vmim.data.eval_views import MultiViewDataset, build_test_loader, collate_views
from vmim.data.transforms import center_box, test_boxes, test_crops
from vmim.data.video_decoders import DecodeError, VideoInfo, build_decoder


class IndexDecoder:
    """Fake decoder: frame i has channel 0 = i and channel 1 = the pixel's column; logs every read."""

    name = "index"

    def __init__(self, num_frames: int, fps: float = 25.0, height: int = 48, width: int = 64, delay_s: float = 0.0):
        self.num_frames, self.fps, self.height, self.width, self.delay_s = num_frames, fps, height, width, delay_s
        self.reads: list[list[int]] = []

    def info(self, path: str) -> VideoInfo:
        return VideoInfo(self.num_frames, self.fps, self.width, self.height, 0)

    def read(self, path: str, indices) -> torch.Tensor:
        if "bad" in path:
            raise DecodeError(path, "invalid data found when processing input")
        time.sleep(self.delay_s)
        self.reads.append(list(indices))
        frames = torch.zeros(len(indices), self.height, self.width, 3, dtype=torch.uint8)
        frames[..., 0] = torch.tensor(list(indices), dtype=torch.uint8)[:, None, None]
        frames[..., 1] = torch.arange(self.width, dtype=torch.uint8)
        return frames


def fake_source(decoder: IndexDecoder, entries: list[Entry] | None = None, **kwargs) -> VideoSource:
    options = dict(num_frames=4, stride=4, size=16) | kwargs
    source = VideoSource(entries or [Entry("/v/a.mp4", 3)], **options)
    source._decoder = decoder
    return source


def frame_ids(clips: torch.Tensor, num_views: int, num_crops: int) -> torch.Tensor:
    """(V, C, T, S, S) clips of IndexDecoder frames -> (num_views, num_crops, T) frame indices (channel 0)."""
    ids = clips[:, 0].amin(dim=(-2, -1))
    assert torch.equal(ids, clips[:, 0].amax(dim=(-2, -1)))  # channel 0 is constant over each frame
    return ids.reshape(num_views, num_crops, -1).long()


# ---- spatial crops ---------------------------------------------------------------------------------------------

def test_three_crops_landscape_and_portrait():
    assert test_boxes(240, 320, 112, 112, 3) == [(0, 0, 240, 240), (0, 40, 240, 240), (0, 80, 240, 240)]
    assert test_boxes(320, 240, 112, 112, 3) == [(0, 0, 240, 240), (40, 0, 240, 240), (80, 0, 240, 240)]
    # crop < short side: room on both axes; the short axis stays centred (210 = 112 * 240 / 128)
    assert test_boxes(240, 320, 128, 112, 3) == [(15, 0, 210, 210), (15, 55, 210, 210), (15, 110, 210, 210)]
    assert test_boxes(100, 100, 50, 50, 3) == [(0, 0, 100, 100)] * 3


def test_one_crop_is_the_centre_crop():
    assert test_boxes(240, 320, 256, 224, 1) == [(15, 55, 210, 210)] == [center_box(240, 320, 256, 224)]
    assert test_boxes(320, 240, 256, 224, 1) == [(55, 15, 210, 210)]


@pytest.mark.parametrize("kwargs, message", [(dict(num_crops=2), "num_crops.*2"), (dict(num_crops=5), "num_crops.*5"),
                                             (dict(crop=120), "crop=120"), (dict(crop=0), "crop=0")])
def test_boxes_reject_bad_settings(kwargs, message):
    args = dict(h=240, w=320, short_side=112, crop=112, num_crops=3) | kwargs
    with pytest.raises(ValueError, match=message):
        test_boxes(**args)


def test_crops_cut_the_boxes_in_order():
    x = torch.arange(320, dtype=torch.int32) * 255 // 319  # column gradient 0..255
    frames = x.to(torch.uint8)[None, None, :, None].expand(2, 240, 320, 3).contiguous()
    exact = test_crops(frames, 240, 240, 3)  # boxes of 240 = the crop: no resize, exact slices
    assert exact.shape == (3, 3, 2, 240, 240) and exact.dtype == torch.uint8
    for crop, left in zip(exact, (0, 40, 80)):
        assert torch.equal(crop, frames[:, :, left:left + 240].permute(3, 0, 1, 2))
    resized = test_crops(frames, 112, 112, 3).float()
    assert resized.shape == (3, 3, 2, 112, 112)
    expected = [x[left:left + 240].float().mean().item() for left in (0, 40, 80)]  # a resize keeps the mean
    assert resized.mean(dim=(1, 2, 3, 4)).tolist() == pytest.approx(expected, abs=0.5)


# ---- temporal views -------------------------------------------------------------------------------------------

def test_segment_offsets():
    assert segment_indices(80, 8, None, 0.0).tolist() == list(range(0, 80, 10))
    assert segment_indices(80, 8, None, 0.25).tolist() == list(range(2, 80, 10))
    assert segment_indices(80, 8, None).tolist() == segment_indices(80, 8, None, 0.5).tolist() == list(range(5, 80, 10))
    with pytest.raises(ValueError, match="offset"):
        segment_indices(80, 8, None, 1.0)


def test_window_views_one_union_decode_view_major():
    decoder = IndexDecoder(73)  # 4 frames 4 apart span 13: room 60, view starts 60 * (k + 0.5) / 3 = 10, 30, 50
    clips, label = fake_source(decoder).test_views(0, num_views=3, num_crops=3)
    views = [[10, 14, 18, 22], [30, 34, 38, 42], [50, 54, 58, 62]]
    assert decoder.reads == [sorted(sum(views, []))]  # one decode of the sorted union
    assert clips.shape == (9, 3, 4, 16, 16) and clips.dtype == torch.uint8 and label == 3
    assert frame_ids(clips, 3, 3).tolist() == [[view] * 3 for view in views]
    columns = clips[:, 1].float().mean(dim=(1, 2, 3))  # crops of 48x64 frames at x = 0, 8, 16: mean column
    assert columns.tolist() == pytest.approx([23.5, 31.5, 39.5] * 3, abs=0.6)


def test_window_views_honour_trim_target_fps_and_overlap():
    decoder = IndexDecoder(300, fps=50.0)  # stride 2 at 25 fps from 50 fps: step 4; frames 50..122 of the segment
    source = fake_source(decoder, [Entry("/v/a.mp4", 0, start_sec=1.0, end_sec=2.47)], stride=2, target_fps=25.0)
    clips, _ = source.test_views(0, num_views=3, num_crops=1)
    assert frame_ids(clips, 3, 1)[:, 0].tolist() == [[60, 64, 68, 72], [80, 84, 88, 92], [100, 104, 108, 112]]
    decoder = IndexDecoder(10)  # short video: every view is the looped window; the union has each frame once
    clips, _ = fake_source(decoder).test_views(0, num_views=2, num_crops=1)
    assert decoder.reads == [[0, 2, 4, 8]]
    assert frame_ids(clips, 2, 1)[:, 0].tolist() == [[0, 4, 8, 2]] * 2


def test_segment_views_use_offsets():
    decoder = IndexDecoder(80)
    source = fake_source(decoder, sampling="segments")
    clips, _ = source.test_views(0, num_views=2, num_crops=3)
    views = [[5, 25, 45, 65], [15, 35, 55, 75]]  # segments of 20 frames at offsets 0.25 and 0.75
    assert frame_ids(clips, 2, 3).tolist() == [[view] * 3 for view in views]
    assert decoder.reads == [sorted(sum(views, []))]
    clips, _ = source.test_views(0, num_views=1, num_crops=1)
    assert frame_ids(clips, 1, 1).tolist() == [[[10, 30, 50, 70]]]  # one view: the segment middles


# ---- real files -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("test_views")
    codec, suffix, options = CODECS["h264"]
    good = encode(str(root / f"good.{suffix}"), codec, options)
    (root / "garbage.mp4").write_bytes(bytes(range(256)) * 40)
    (root / "zero.mp4").write_bytes(b"")
    return root, good


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_real_video_union_decode_equals_per_view_decodes(video_dir, decoder):
    _, path = video_dir
    source = VideoSource([Entry(path, 1)], num_frames=4, stride=3, size=32, decoder=decoder)
    real = source.decoder
    reads = []

    class Spy:
        def info(self, p):
            return real.info(p)

        def read(self, p, indices):
            reads.append(list(indices))
            return real.read(p, indices)

    source._decoder = Spy()
    clips, label = source.test_views(0, num_views=3, num_crops=3, short_side=48)
    assert len(reads) == 1 and clips.shape == (9, 3, 4, 32, 32) and label == 1
    views = source.view_indices(0, 3)  # 48 frames, span 10: room 38, starts 6.33, 19, 31.67
    assert [v.tolist() for v in views] == [[6, 9, 12, 15], [19, 22, 25, 28], [32, 35, 38, 41]]
    for k, view in enumerate(views):
        frames = build_decoder(decoder).read(path, view.tolist())
        assert [identify(f) for f in frames.numpy()] == view.tolist()  # the decoded frames are those of the view
        assert torch.equal(clips[3 * k:3 * k + 3], test_crops(frames, 48, 32, 3))


def test_images_resize_256_centre_224(tmp_path):
    y, x = np.mgrid[0:512, 0:1024].astype(np.float32)
    pixels = np.stack([x / 4, y / 2, 128 + 60 * np.sin(x / 40) * np.cos(y / 50)], -1).round().astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(pixels[:320, :400]).save(tmp_path / "b.png")
    source = ImageSource([Entry(str(tmp_path / "a.jpg"), 5), Entry(str(tmp_path / "b.png"), 6)], size=224)
    assert source.pixels(0, 256).shape == (1, 256, 512, 3)  # JPEG draft halves 1024x512, down to short side 256
    assert source.pixels(0, 257).shape == (1, 512, 1024, 3)  # ... but not when that would go below 257
    for index, image in ((0, pixels), (1, pixels[:320, :400])):
        clips, label = source.test_views(index)
        assert clips.shape == (1, 3, 1, 224, 224) and label == 5 + index
        h, w = image.shape[:2]  # reference: full decode, resize the short side to 256, centre 224
        resized = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(256, round(256 * w / h)),
                                mode="bilinear", antialias=True)[0]
        top, left = (256 - 224) // 2, (resized.shape[-1] - 224) // 2
        reference = resized[:, top:top + 224, left:left + 224]
        assert (clips[0, :, 0].float() - reference).abs().mean() < 1.5
    three, _ = source.test_views(1, num_crops=3)
    assert three.shape == (3, 3, 1, 224, 224) and torch.equal(three[1], clips[0])
    with pytest.raises(ValueError, match="num_views"):
        source.test_views(0, num_views=2)


# ---- dataset and loader ---------------------------------------------------------------------------------------

def test_loader_skips_bad_files_without_replacing_them(video_dir):
    root, good = video_dir
    names = [good, root / "garbage.mp4", root / "zero.mp4", root / "missing.mp4", good, good]
    source = VideoSource([Entry(str(p), i) for i, p in enumerate(names)], num_frames=4, stride=2, size=32,
                         decoder="pyav")
    loader = build_test_loader(source, num_views=2, num_crops=3, short_side=0, batch_size=2, num_workers=1)
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0], [], [4, 5]]
    assert [b["label"].tolist() for b in batches] == [[0], [], [4, 5]]
    assert [b["clips"].shape for b in batches] == [(n, 6, 3, 4, 32, 32) for n in (1, 0, 2)]  # all failed: B = 0
    assert all(b["clips"].dtype == torch.uint8 for b in batches)
    failed = [f for b in batches for f in b["failed"]]
    assert [path for path, _ in failed] == [str(root / n) for n in ("garbage.mp4", "zero.mp4", "missing.mp4")]
    assert all(reason for _, reason in failed)
    assert torch.equal(batches[0]["clips"][0], source.test_views(0, 2, 3)[0])


def test_decode_timeout_counts_as_failed():
    dataset = MultiViewDataset(fake_source(IndexDecoder(50, delay_s=2.0)), 1, 1, decode_timeout_s=0.1)
    start = time.monotonic()
    assert dataset[0] == {"failed": ("/v/a.mp4", "DecodeTimeout: decoding took longer than 0.1 s "
                                                 "(data.decode_timeout_s)"), "index": 0}
    assert time.monotonic() - start < 1.5


def test_settings_that_fail_every_sample_raise_up_front(tmp_path):
    video = fake_source(IndexDecoder(50))
    image = ImageSource([Entry(str(tmp_path / "x.png"), 0)], size=32)
    for source, views, crops, short, message in ((video, 1, 2, 0, "num_crops"), (video, 0, 1, 0, "num_views"),
                                                 (image, 2, 1, 0, "num_views"), (video, 1, 3, 8, "short_side")):
        with pytest.raises(ValueError, match=message):
            MultiViewDataset(source, views, crops, short)
    with pytest.raises(ValueError, match="rank"):
        build_test_loader(video, 1, 1, 0, batch_size=2, world_size=2, rank=2)
    batch = collate_views([{"failed": ("x", "bad"), "index": 3}])
    assert batch["clips"].shape == (0,) and batch["failed_index"].tolist() == [3]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_cover_every_sample_exactly_once(world_size):
    entries = [Entry(f"/v/{'bad' if i in (3, 4) else 'ok'}_{i}.mp4", 10 + i) for i in range(8)]
    source = fake_source(IndexDecoder(40), entries)
    seen, failed = [], []
    for rank in range(world_size):
        batches = list(build_test_loader(source, 2, 1, 0, batch_size=2, world_size=world_size, rank=rank))
        indices = [i for b in batches for i in b["index"].tolist()]
        assert indices == [i for i in range(rank, 8, world_size) if i not in (3, 4)]  # in order, no padding
        assert [lab for b in batches for lab in b["label"].tolist()] == [10 + i for i in indices]
        seen += indices
        failed += [path for b in batches for path, _ in b["failed"]]
    assert sorted(seen) == [0, 1, 2, 5, 6, 7] and sorted(failed) == ["/v/bad_3.mp4", "/v/bad_4.mp4"]
